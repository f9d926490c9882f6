"""Issue 33's probes (reliability round 3): outputs that overwrite or delete what they must not, a served page that
exposes the run, runs that silently read another run's files, and the tracebacks left. Item "33" in the table."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.reliability.harness import Result, judge
from bench.reliability.probes import probe


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def _weights(*pairs: str) -> str:
    return ",".join(pairs) or "helpful=1,harmless=1"


# --- destinations that must not be destroyed -----------------------------------------------------------------------
@probe("33", "clear error", "view --out the run's store.sqlite")
def view_over_store(ws):
    store = ws.run / "store.sqlite"
    before = store.read_bytes()
    return judge(ws.cli("view", "run", "--out", str(store)), needle="store.sqlite",
                 lost=lambda: store.read_bytes() != before)


@probe("33", "clear error", "combine --out a parent of the run dir --overwrite")
def combine_over_parent(ws):
    before = _digest(ws.run / "adapters")
    res = ws.cli("combine", "run", "--method", "dpo", "--weights", _weights(), "--out", str(ws.root), "--overwrite")
    return judge(res, needle=str(ws.root), lost=lambda: not ws.run.is_dir() or _digest(ws.run / "adapters") != before)


@probe("33", "clear error", "combine --out through a symbolic link")
def combine_through_link(ws):
    target = ws.root / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    (ws.root / "link").symlink_to(target)
    res = ws.cli("combine", "run", "--method", "dpo", "--weights", _weights(), "--out", str(ws.root / "link"),
                 "--overwrite")
    return judge(res, needle="link", lost=lambda: not (target / "keep.txt").is_file())


@probe("33", "ok", "an export gets the mode the umask gives (022: readable by others)")
def export_umask(ws):
    old = os.umask(0o022)
    try:
        res = ws.cli("combine", "run", "--method", "dpo", "--weights", _weights(), "--out", str(ws.root / "merged"))
    finally:
        os.umask(old)
    return judge(res, ok=lambda: (ws.root / "merged").stat().st_mode & 0o777 == 0o755)


# --- the served page ------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, host: str | None = None) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@probe("33", "ok", "view --serve: no store, no listing, no symlink out, no foreign Host")
def served_page(ws):
    port = _free_port()
    (ws.run / "outside").symlink_to("/etc/hostname")
    proc = ws.tree.popen(ws.root, "view", "run", "--serve", "--port", str(port))
    try:
        for _ in range(200):
            try:
                status = _get(port, "/")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        else:
            return judge(Result(1, "the server never answered"), ok=lambda: False)
        got = {p: _get(port, p) for p in ("/store.sqlite", "/run/store.sqlite", "/config.yaml", "/outside", "/run/")}
        foreign = _get(port, "/", host="attacker.example:80")
    finally:
        proc.kill()
        out, _ = proc.communicate()
    return judge(Result(0, out + json.dumps(got)), ok=lambda: status == 200 and foreign >= 400
                 and all(c >= 400 for c in got.values()))


@probe("33", "clear error", "view --serve on a port in use")
def served_busy_port(ws):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        return judge(ws.cli("view", "run", "--serve", "--port", str(s.getsockname()[1]), timeout=60), needle="port")


# --- runs that read another run's files ------------------------------------------------------------------------------
@probe("33", "ok", "a copied run trains its later vector against its own first vector")
def copied_run(ws):
    copy = ws.root.parent / (ws.root.name + "-copy")
    shutil.copytree(ws.root, copy, symlinks=True)
    (copy / "config.yaml").write_text((copy / "config.yaml").read_text().replace(str(ws.root), str(copy)))
    shutil.rmtree(ws.run / "adapters")  # the original's vectors are gone: the copy must not need them
    res = ws.tree.cli(copy, "train", str(copy / "config.yaml"), "--method", "mva", "--value", "harmless", "--force")
    return judge(res, ok=lambda: (copy / "run" / "adapters" / "mva" / "harmless" / "adapter_model.safetensors").is_file())


@probe("33", "clear error", "adapters swapped between values by hand")
def swapped_adapters(ws):
    d = ws.run / "adapters" / "dpo"
    (d / "helpful").rename(d / "tmp")
    (d / "harmless").rename(d / "helpful")
    (d / "tmp").rename(d / "harmless")
    return judge(ws.cli("combine", "run", "--method", "dpo", "--weights", _weights(), "--out", str(ws.root / "x")),
                 needle="helpful")


@probe("33", "clear error", "store rows whose per-prompt score lists are short")
def short_scores(ws):
    with sqlite3.connect(ws.run / "store.sqlite") as con:
        con.execute("UPDATE points SET scores = json_set(scores, '$.helpful', json('[0.5]'))")
    return judge(ws.cli("run", str(ws.config), "--method", "mva"), needle="store.sqlite")


@probe("33", "ok", "run --method mva, then dpo: report.md covers both")
def report_both(ws):
    res = ws.cli("run", str(ws.config), "--method", "dpo")
    return judge(res, ok=lambda: all(f"## {m}" in (ws.run / "report.md").read_text() for m in ("mva", "dpo")))


@probe("33", "ok", "a stray front-*.json is no method of the run (ignored, not in report.md)")
def stray_front(ws):
    (ws.run / "front-evil<b>.json").write_text((ws.run / "front-mva.json").read_text())
    res = ws.cli("report", "run")
    return judge(res, ok=lambda: "evil" not in (ws.run / "report.md").read_text())


@probe("33", "ok", "model card: the report's reference point, no local paths")
def card(ws):
    ws.cli("report", "run")
    res = ws.cli("combine", "run", "--method", "mva", "--weights", "helpful=0.5,harmless=0.5", "--format", "peft",
                 "--out", str(ws.root / "out"))  # a point of the workspace's grid: evaluated, so the card has its HV

    def right():
        text = (ws.root / "out" / "README.md").read_text()
        ref = (ws.run / "report.md").read_text().split("One reference point for every hypervolume below: ")[1]
        ref = ref.split(" ")[0].replace(", ", ",")  # as the report prints it, compared without spaces
        return str(ws.root) not in text and f"reference point {ref}" in text.replace(", ", ",")
    return judge(res, ok=right)


# --- tracebacks -----------------------------------------------------------------------------------------------------
@probe("33", "clear error", "front-mva.json with a NaN reward (report)")
def front_nan(ws):
    path = ws.run / "front-mva.json"
    front = json.loads(path.read_text())
    front["points"][0]["rewards"]["helpful"] = float("nan")
    path.write_text(json.dumps(front))
    return judge(ws.cli("report", "run"), needle="front-mva.json")


@probe("33", "clear error", "store.sqlite with a damaged page (run)")
def store_page(ws):
    store = ws.run / "store.sqlite"
    data = bytearray(store.read_bytes())
    data[4096:] = b"Z" * (len(data) - 4096)
    store.write_bytes(bytes(data))
    return judge(ws.cli("run", str(ws.config), "--method", "mva"), needle="store.sqlite")


@probe("33", "clear error", "store.sqlite with a foreign points table (train)")
def store_foreign(ws):
    with sqlite3.connect(ws.run / "store.sqlite") as con:
        con.execute("DROP TABLE points")
        con.execute("CREATE TABLE points (method TEXT, weights TEXT)")
    return judge(ws.cli("train", str(ws.config), "--method", "dpo"), needle="store.sqlite")


@probe("33", "clear error", "a callable judge that raises")
def callable_raises(ws):
    (ws.root / "myjudge.py").write_text("def score(prompt, response):\n    raise KeyError('boom')\n")
    ws.edit_config(lambda c: c["values"][0].update(reward={"kind": "callable", "function": "myjudge:score"}))
    return judge(ws.cli("reward", "eval", str(ws.config)), needle="myjudge")


@probe("33", "clear error", "7 values with the default grid (config --check)")
def grid_explosion(ws):
    ws.edit_config(lambda c: c.update(values=[{**c["values"][0], "name": f"v{i}"} for i in range(7)],
                                      sweep={k: v for k, v in c["sweep"].items() if k != "grid"}))
    return judge(ws.cli("config", "--check", str(ws.config), timeout=120), needle="sweep.grid")


@probe("33", "clear error", "sweep.grid: [0.0] with mva")
def grid_zero(ws):
    ws.edit_config(lambda c: c["sweep"].update(grid=[0.0]))
    return judge(ws.cli("run", str(ws.config), "--method", "mva"), needle="sweep.grid")


@probe("33", "ok", "racing: off written as in the README")
def racing_off(ws):
    text = ws.config.read_text().replace("sweep:\n", "sweep:\n  racing: off\n", 1)
    ws.config.write_text(text)
    return judge(ws.cli("config", "--check", str(ws.config)), ok=lambda: True)


@probe("33", "clear error", "pick --weights naming an unknown value")
def pick_unknown(ws):
    return judge(ws.cli("pick", "run", "--weights", "helpful=1,honest=1"), needle="honest")


@probe("33", "ok", "a symlinked adapter folder with train --force (the link's target untouched)")
def symlinked_adapter(ws):
    adapter = ws.run / "adapters" / "dpo" / "helpful"
    outside = ws.root / "outside"
    adapter.rename(outside)
    adapter.symlink_to(outside)
    before = _digest(outside)
    res = ws.cli("train", str(ws.config), "--method", "dpo", "--value", "helpful", "--force")
    return judge(res, ok=lambda: not adapter.is_symlink() and (adapter / "adapter_model.safetensors").is_file(),
                 lost=lambda: _digest(outside) != before)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


@probe("33", "clear error", "a pickle planted as a checkpoint's optimizer.pt (never run)")
def planted_optimizer(ws):
    import torch

    ckpt = ws.run / "train" / "dpo" / "helpful" / "checkpoint"
    ran = ws.root / "payload-ran"
    torch.save({"optimizer": _Payload(ran)}, ckpt / "optimizer.pt")
    shutil.rmtree(ws.run / "adapters" / "dpo" / "helpful")
    with sqlite3.connect(ws.run / "store.sqlite") as con:
        con.execute("DELETE FROM vectors WHERE method = 'dpo' AND value = 'helpful'")
    return judge(ws.cli("train", str(ws.config), "--method", "dpo"), needle="optimizer.pt", lost=ran.exists)


@probe("33", "clear error", "a base model offering only a pickled pytorch_model.bin (never run)")
def planted_model(ws):
    import torch

    model = ws.root / "pickled-model"
    shutil.copytree(ws.model, model)
    (model / "model.safetensors").unlink()
    ran = ws.root / "payload-ran"
    torch.save({"x": _Payload(ran)}, model / "pytorch_model.bin")
    ws.edit_config(lambda c: c.update(model={"name": str(model)}, run_dir=str(ws.root / "run2")))
    return judge(ws.cli("train", str(ws.config), "--method", "dpo"), needle="pytorch_model.bin", lost=ran.exists)
