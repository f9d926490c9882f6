"""The probes: one function each, registered with the issue-13 item it checks and the outcome it should have.

Each gets a fresh copy of a trained workspace (`harness.Workspace`) and returns an outcome from `harness.judge`.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file

from bench.reliability.harness import Workspace, judge

PROBES: list[tuple[str, str, str, Callable[[Workspace], str]]] = []


def probe(item: str, expect: str, name: str):
    def add(fn):
        PROBES.append((name, item, expect, fn))
        return fn
    return add


def _generic(ws: Workspace, name: str, data: bytes, on_invalid: str = "error") -> Path:
    path = ws.root / name
    path.write_bytes(data)
    ws.edit_config(lambda c: c["values"][0].update(
        data={"format": "generic", "path": [str(path)], "on_invalid": on_invalid}))
    return path


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"question {i}?", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(n)]


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _pairs(res) -> int:
    """Σ of the split counts `mvalign data` prints for helpful (`helpful: train=…, val=…, test=…`)."""
    line = next(line for line in res.out.splitlines() if line.startswith("helpful:"))
    return sum(int(part.split("=")[1]) for part in line.split(":", 1)[1].split(","))


# --- data (items 5, 6, 10) ---------------------------------------------------------------------------------------
@probe("5", "clear error", "truncated .jsonl.gz")
def truncated_gz(ws):
    data = gzip.compress(_jsonl(_rows(200)))
    _generic(ws, "pairs.jsonl.gz", data[: len(data) // 2])
    return judge(ws.cli("data", str(ws.config)), needle="pairs.jsonl.gz")


@probe("6", "clear error", "CSV unterminated quote on line 6")
def csv_quote(ws):
    lines = ["prompt,chosen,rejected"] + [f"q{i},good {i},bad {i}" for i in range(31)]
    lines[5] = 'q4,"good 4,bad 4'
    _generic(ws, "pairs.csv", "\n".join(lines).encode() + b"\n")
    return judge(ws.cli("data", str(ws.config)), needle="pairs.csv:6")


@probe("6", "clear error", "CSV unterminated quote, on_invalid: skip (must not drop the rows behind it)")
def csv_quote_skip(ws):
    lines = ["prompt,chosen,rejected"] + [f"q{i},good {i},bad {i}" for i in range(31)]
    lines[5] = 'q4,"good 4,bad 4'
    _generic(ws, "pairs.csv", "\n".join(lines).encode() + b"\n", "skip")
    return judge(ws.cli("data", str(ws.config)), needle="pairs.csv:6")


@probe("10", "ok", "malformed JSON line, on_invalid: skip")
def bad_json_skip(ws):
    data = _jsonl(_rows(20)).replace(b'"prompt": "question 3?"', b'"prompt": "question 3?', 1)
    _generic(ws, "pairs.jsonl", data, "skip")
    res = ws.cli("data", str(ws.config))
    return judge(res, ok=lambda: _pairs(res) == 19)


@probe("10", "ok", "missing column and non-text prompt, on_invalid: skip")
def missing_column_skip(ws):
    rows = _rows(20)
    del rows[2]["rejected"]
    rows[7]["prompt"] = 5
    _generic(ws, "pairs.jsonl", _jsonl(rows), "skip")
    res = ws.cli("data", str(ws.config))
    return judge(res, ok=lambda: _pairs(res) == 18)


@probe("5", "clear error", "missing column")
def missing_column(ws):
    rows = _rows(20)
    for r in rows:
        r["worse"] = r.pop("rejected")
    _generic(ws, "pairs.jsonl", _jsonl(rows))
    return judge(ws.cli("data", str(ws.config)), needle="rejected")


@probe("5", "clear error", "not UTF-8")
def not_utf8(ws):
    _generic(ws, "pairs.jsonl", _jsonl(_rows(5)) + b'{"prompt": "\xff"}\n')
    return judge(ws.cli("data", str(ws.config)), needle="pairs.jsonl:6")


@probe("5", "clear error", "empty data file")
def empty_file(ws):
    _generic(ws, "pairs.jsonl", b"")
    return judge(ws.cli("data", str(ws.config)), needle="pairs.jsonl")


# --- config (item 4) ----------------------------------------------------------------------------------------------
def _config_probe(ws, section, field, value, needle):
    ws.edit_config(lambda c: c.setdefault(section, {}).update({field: value}))
    return judge(ws.cli("data", str(ws.config)), needle=needle)


for _section, _field, _value in (("dpo", "max_grad_norm", -1.0), ("sweep", "grid", []), ("sweep", "reference_point", [0.0]),
                                 ("lora", "target_modules", []), ("dpo", "lr", float("nan")), ("dpo", "beta", float("inf"))):
    probe("4", "clear error", f"{_section}.{_field} = {_value}")(
        lambda ws, s=_section, f=_field, v=_value: _config_probe(ws, s, f, v, f.split(".")[-1]))


@probe("4", "clear error", "unknown config key")
def unknown_key(ws):
    ws.edit_config(lambda c: c["dpo"].update(learning_rate=3))
    return judge(ws.cli("data", str(ws.config)), needle="learning_rate")


@probe("4", "clear error", "YAML syntax error")
def yaml_syntax(ws):
    ws.config.write_text(ws.config.read_text() + "\nvalues: [\n")
    return judge(ws.cli("data", str(ws.config)), needle="config.yaml")


@probe("5", "clear error", "foreign config.yaml in run_dir")
def foreign_config(ws):
    (ws.run / "config.yaml").write_text("model: {name: x}\nlearning_rate: 3\n")
    return judge(ws.cli("train", str(ws.config), "--method", "dpo"), needle="config.yaml")


@probe("9", "clear error", "a non-run folder as run_dir (its files untouched)")
def foreign_folder(ws):
    other = ws.root / "other"
    other.mkdir()
    (other / "versions.json").write_text("mine")
    ws.edit_config(lambda c: c.update(run_dir=str(other)))
    res = ws.cli("train", str(ws.config), "--method", "dpo")
    return judge(res, needle=str(other), lost=lambda: (other / "versions.json").read_text() != "mine")


@probe("5", "clear error", "unknown model name")
def unknown_model(ws):
    ws.edit_config(lambda c: c["model"].update(name="no-such/model-xyz"))
    ws.edit_config(lambda c: c.update(run_dir=str(ws.root / "run2")))
    return judge(ws.cli("train", str(ws.config), "--method", "dpo"), needle="no-such/model-xyz")


@probe("5", "clear error", "unknown method")
def unknown_method(ws):
    return judge(ws.cli("train", str(ws.config), "--method", "nope"), needle="nope")


# --- CLI weights (item 7) -------------------------------------------------------------------------------------------
for _w, _needle in (("helpful=1,helpful=2", "helpful"), ("../dpo/helpful=1", "../dpo/helpful"), ("helpful=nan", "helpful"),
                    ("helpful=1,nosuch=1", "nosuch")):
    probe("7", "clear error", f"combine --weights {_w}")(
        lambda ws, w=_w, n=_needle: judge(ws.cli("combine", "run", "--weights", w, "--method", "dpo", "--out",
                                                 str(ws.root / "out")), needle=n))


# --- corrupt artefacts (items 5, 8) ---------------------------------------------------------------------------------
@probe("5", "clear error", "corrupt store.sqlite")
def corrupt_store(ws):
    (ws.run / "store.sqlite").write_bytes(b"this is not a database" * 100)
    return judge(ws.cli("train", str(ws.config), "--method", "dpo"), needle="store.sqlite")


def _combine(ws, needle):
    return judge(ws.cli("combine", "run", "--weights", "helpful=1,harmless=1", "--method", "dpo", "--out",
                        str(ws.root / "out")), needle=needle)


@probe("5", "clear error", "truncated adapter weights")
def truncated_adapter(ws):
    f = ws.adapter() / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:200])
    return _combine(ws, "adapter_model.safetensors")


@probe("5", "clear error", "adapter_config.json that is not JSON")
def adapter_config_text(ws):
    f = ws.adapter() / "adapter_config.json"
    f.write_text(f.read_text()[:20])
    return _combine(ws, "adapter_config.json")


@probe("5", "clear error", "adapter_config.json with r: 0")
def adapter_r0(ws):
    f = ws.adapter() / "adapter_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "r": 0}))
    return _combine(ws, "adapter_config.json")


@probe("8", "clear error", "NaN inside an adapter tensor")
def adapter_nan(ws):
    f = ws.adapter() / "adapter_model.safetensors"
    tensors = load_file(str(f))
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(f))
    return _combine(ws, "NaN")


@probe("5", "clear error", "checkpoint missing its tensor file (store row lost)")
def checkpoint_missing(ws):
    ckpt = next(ws.run.glob("train/**/helpful/checkpoint"))
    (ckpt / "trainable.safetensors").unlink()
    shutil.rmtree(ws.adapter())
    ws.sql("DELETE FROM vectors WHERE value = 'helpful'")
    return judge(ws.cli("train", str(ws.config), "--method", "dpo", "--value", "helpful"), needle="checkpoint")


@probe("5", "clear error", "corrupt front json (report)")
def corrupt_front(ws):
    (ws.run / "front-mva.json").write_text('{"points": [')
    return judge(ws.cli("report", "run"), needle="front-mva.json")


@probe("5", "clear error", "corrupt reward head (reward eval)")
def corrupt_head(ws):
    f = ws.run / "rewards" / "helpful" / "head.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    return judge(ws.cli("reward", "eval", str(ws.config)), needle=str(f.parent))


@probe("5", "ok", "truncated reference log-prob cache (self-repair)")
def corrupt_reference_cache(ws):
    for f in (ws.root / "cache").rglob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:50])
    res = ws.cli("train", str(ws.config), "--method", "dpo", "--value", "helpful", "--force")
    return judge(res, ok=lambda: (ws.adapter() / "adapter_model.safetensors").is_file())
