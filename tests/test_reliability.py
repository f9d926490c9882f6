"""Bad input gets one clear error naming the file or field (issue 13's first defects): numeric config domains,
a truncated gzip file, NaN inside an adapter."""

import gzip
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from common import save_random_adapter, write_builtin_config
from mvalign.cli import app
from mvalign.config import ConfigError, load_config
from mvalign.data.pairs import DataError
from mvalign.data.readers import read_text
from mvalign.lora import AdapterError, load_lora_adapter
from mvalign.store import AdapterRef

runner = CliRunner()


@pytest.mark.parametrize("section, field, value, msg", [
    ("dpo", "max_grad_norm", -1.0, "dpo.max_grad_norm: Input should be greater than 0"),
    ("sweep", "grid", [], "sweep.grid: List should have at least 1 item"),
    ("sweep", "grid", [0.5, float("inf")], "sweep.grid.1: Input should be a finite number"),
    ("lora", "target_modules", [], "lora.target_modules: List should have at least 1 item"),
    ("sweep", "reference_point", [0.0], "sweep.reference_point has 1 numbers; give one per value"),
    ("dpo", "lr", float("nan"), "dpo.lr: Input should be a finite number"),
])
def test_numeric_config_domains_are_checked_at_load(tmp_path, tiny_model_dir, section, field, value, msg):
    path = write_builtin_config(tmp_path, tiny_model_dir, 4)
    raw = yaml.safe_load(path.read_text())
    raw.setdefault(section, {})[field] = value
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)
    result = runner.invoke(app, ["data", str(path)])
    assert result.exit_code == 1 and msg in result.output and "Traceback" not in result.output


def test_truncated_gzip_names_the_file(tmp_path):
    good = tmp_path / "pairs.jsonl.gz"
    rows = "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(200))
    good.write_bytes(gzip.compress(rows.encode()))
    assert read_text(good) == rows
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match=f"{cut}: not a valid gzip file .*download or copy it again"):
        read_text(cut)


def test_nan_inside_an_adapter_is_refused(tmp_path, tiny_llama):
    path = save_random_adapter(tiny_llama, tmp_path / "helpful", 1)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key][0, 0] = torch.nan
    save_file(tensors, str(path / "adapter_model.safetensors"))
    with pytest.raises(AdapterError, match=f"{path}: {key} holds NaN or infinite values"):
        load_lora_adapter(path)


def test_a_lost_store_row_does_not_block_resume(tmp_path, tiny_model_dir):
    """Killed between the final checkpoint and the store write (or store.sqlite lost): the re-run records the
    finished adapter without retraining, with the training seconds of every segment."""
    from mvalign.store import RunStore

    path = write_builtin_config(tmp_path, tiny_model_dir, 8, dpo={"max_steps": 2, "batch_size": 4, "max_length": 96,
                                                                  "max_prompt_length": 64, "eval_pairs": 4})
    assert runner.invoke(app, ["train", str(path), "--value", "helpful"]).exit_code == 0
    run = tmp_path / "run"
    first = RunStore(run).get_vector(AdapterRef("dpo", "helpful"))
    adapter = (run / "adapters" / "dpo" / "helpful" / "adapter_model.safetensors").read_bytes()
    (run / "store.sqlite").unlink()
    again = runner.invoke(app, ["train", str(path), "--value", "helpful"])
    assert again.exit_code == 0, again.output
    rec = RunStore(run).get_vector(AdapterRef("dpo", "helpful"))
    assert rec.steps == 2 and rec.seconds == pytest.approx(first.seconds, rel=0.05)
    assert rec.seconds_per_step == pytest.approx(rec.seconds / 2) and rec.metrics["train_tokens"] > 0
    assert rec.metrics["train_last_loss"] == pytest.approx(first.metrics["train_last_loss"])
    assert (run / "adapters" / "dpo" / "helpful" / "adapter_model.safetensors").read_bytes() == adapter
    assert not list(run.rglob("*.tmp*"))


def test_a_store_from_before_point_flags_opens_and_migrates(tmp_path):
    """A store made before flags and per-prompt scores: both columns are added, the old point reads back."""
    import sqlite3

    from mvalign.store import SCHEMA, RunStore

    old = SCHEMA.replace("    flag TEXT NOT NULL DEFAULT '',\n", "").replace("    scores TEXT NOT NULL DEFAULT '{}',\n", "")
    assert "flag" not in old and "scores" not in old
    with sqlite3.connect(tmp_path / "store.sqlite") as con:
        con.executescript(old)
        con.execute("INSERT INTO points VALUES ('mva', '{\"a\": 1.0}', 'val', 'k', '{\"a\": 0.5}', '{\"a\": [0, 1]}', 3, "
                    "1.0, 1.0, '{}', '[\"x\"]', 0.0)")
    (point,) = RunStore(tmp_path).points("mva", "val")
    assert point.flag == "" and point.rewards == {"a": 0.5} and point.scores == {}


def _trained(tmp_path, tiny_model_dir):
    dpo = {"max_steps": 2, "batch_size": 4, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4, "save_every": 1}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, dpo=dpo)
    assert runner.invoke(app, ["train", str(path), "--value", "helpful"]).exit_code == 0
    return path, tmp_path / "run"


def _one_line_error(result, *needles):
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]  # progress bars aside
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert all(n in errors[0] for n in needles), result.output


def test_corrupt_artifacts_give_one_line_naming_the_file(tmp_path, tiny_model_dir):
    path, run = _trained(tmp_path, tiny_model_dir)
    adapter = run / "adapters" / "dpo" / "helpful"
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(AdapterError, match="adapter_model.safetensors: unreadable"):
        load_lora_adapter(adapter)
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    config = (adapter / "adapter_config.json").read_text()
    (adapter / "adapter_config.json").write_text(config[:20])
    with pytest.raises(AdapterError, match="adapter_config.json: not valid JSON"):
        load_lora_adapter(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({**json.loads(config), "r": 0}))
    with pytest.raises(AdapterError, match="needs an integer r >= 1"):
        load_lora_adapter(adapter)
    (adapter / "adapter_config.json").write_text(config)

    store = run / "store.sqlite"
    good = store.read_bytes()
    store.write_bytes(b"this is not a database" * 100)
    _one_line_error(runner.invoke(app, ["train", str(path), "--value", "helpful"]), str(store), "move the file aside")
    store.write_bytes(good)

    # the final checkpoint lost its tensor file and the store its row: a clear message, not a traceback
    (run / "train" / "dpo" / "helpful" / "checkpoint" / "trainable.safetensors").unlink()
    store.unlink()
    _one_line_error(runner.invoke(app, ["train", str(path), "--value", "helpful"]), "incomplete checkpoint",
                    "trainable.safetensors")


def test_foreign_run_dirs_are_refused_and_finished_runs_not_rewritten(tmp_path, tiny_model_dir):
    path, run = _trained(tmp_path, tiny_model_dir)
    stamps = {p: p.stat().st_mtime_ns for p in (run / "config.yaml", run / "versions.json")}
    assert runner.invoke(app, ["train", str(path), "--value", "helpful"]).exit_code == 0  # nothing left to do
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # unchanged files are not rewritten

    other = tmp_path / "other"
    other.mkdir()
    raw = yaml.safe_load(path.read_text())
    (other / "config.yaml").write_text("model: {name: x}\nlearning_rate: 3\n")
    foreign = tmp_path / "foreign.yaml"
    foreign.write_text(yaml.safe_dump({**raw, "run_dir": str(other)}))
    _one_line_error(runner.invoke(app, ["train", str(foreign)]), "config.yaml is not an mvalign run config")
    (other / "config.yaml").unlink()
    (other / "versions.json").write_text("mine")
    _one_line_error(runner.invoke(app, ["train", str(foreign)]), "not an mvalign run")
    assert (other / "versions.json").read_text() == "mine"


def test_csv_records_are_named_by_their_first_line_and_runaway_quotes_are_caught(tmp_path):
    from mvalign.data.readers import iter_records

    header = "prompt,chosen,rejected\n"
    rows = [f"q{i},yes {i},no {i}\n" for i in range(1, 11)]
    ok = tmp_path / "ok.csv"
    ok.write_text(header + "".join(rows[:3]) + '"multi\nline q",a,b\n\n' + "".join(rows[3:]))
    refs = [str(ref) for ref, _ in iter_records(ok)]
    assert refs[:5] == [f"{ok}:2", f"{ok}:3", f"{ok}:4", f"{ok}:5-6", f"{ok}:8"]  # blank line 7 skipped
    runaway = tmp_path / "runaway.csv"  # line 6 opens a quote that never closes
    runaway.write_text(header + "".join(rows[:4]) + 'q5,"yes 5,no 5\n' + "".join(rows[5:]))
    with pytest.raises(DataError, match=r"runaway.csv:6: malformed CSV .* running to line 11 \(the end\); an unte"):
        list(iter_records(runaway))
    stray = tmp_path / "stray.csv"  # ... or closes at a later quote that is not followed by a comma
    stray.write_text(header + "".join(rows[:4]) + 'q5,"yes 5,no 5\n' + "".join(rows[5:7]) + 'q8,"yes",no\n')
    with pytest.raises(DataError, match=r"stray.csv:6: malformed CSV \(',' expected after '\"'\)"):
        list(iter_records(stray))
    swallowed = tmp_path / "swallowed.csv"  # ... or closes at the start of line 9, merging lines 6-9 into one record
    swallowed.write_text(header + "".join(rows[:4]) + 'q5,"yes 5,no 5\n' + "".join(rows[5:7]) + '",q8,no\n'
                         + "".join(rows[8:]))
    with pytest.raises(DataError, match=r"swallowed.csv:6-9: 4 fields where the header has 3; an unterminated quote"):
        list(iter_records(swallowed))
    short = tmp_path / "short.csv"
    short.write_text(header + "".join(rows[:2]) + "q3,yes 3\n")
    with pytest.raises(DataError, match=r"short.csv:4: 2 fields where the header has 3$"):
        list(iter_records(short))


def test_on_invalid_skip_covers_every_per_row_problem_and_counts_them_by_reason(tmp_path, caplog):
    from mvalign.config import DataSourceConfig
    from mvalign.data import load_pairs

    good = [json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) for i in range(6)]
    bad = ['{"prompt": "broken", "chosen": ', json.dumps([1, 2]), json.dumps({"prompt": "q", "chosen": "yes"}),
           json.dumps({"prompt": 7, "chosen": "yes", "rejected": "no"}),
           json.dumps({"prompt": "same", "chosen": "x", "rejected": "x"})]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(good[:3] + bad + good[3:]) + "\n")
    skip = DataSourceConfig(format="generic", path=[str(path)], on_invalid="skip")
    with caplog.at_level("WARNING"):
        pairs = load_pairs(skip, "helpful")
    assert [p.prompt for p in pairs] == [f"q{i}" for i in range(6)]
    warning = caplog.records[-1].getMessage()
    for part in ("skipped 5 invalid row(s)", "1 malformed JSON", "1 not an object", "1 missing column",
                 "1 prompt not text", "1 unusable pair", f"first: {path}:4: malformed JSON"):
        assert part in warning, warning
    strict = DataSourceConfig(format="generic", path=[str(path)])
    with pytest.raises(DataError, match=rf"5 invalid row\(s\):\n  {path}:4: malformed JSON"):
        load_pairs(strict, "helpful")


def test_a_corrupt_front_file_is_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "front-mva.json").write_text('{"values": ["a", "b"], "points": [')
    for args in (["report", str(run)], ["compare", str(run)]):
        _one_line_error(runner.invoke(app, args), "front-mva.json: unreadable", "mvalign run CONFIG --method mva")


def test_a_moved_run_dir_carries_on(tmp_path, tiny_model_dir):
    """config.yaml records the absolute run_dir; a run moved or copied elsewhere is the same run, not a conflict."""
    import shutil

    path, run = _trained(tmp_path, tiny_model_dir)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copytree(run, moved / "run")
    shutil.copy(path, moved / "config.yaml")
    again = runner.invoke(app, ["train", str(moved / "config.yaml"), "--value", "helpful"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout.splitlines()[-1])["steps"] == 2  # the finished adapter, not retrained


def test_a_moved_run_is_read_from_where_it_is(tmp_path, tiny_model_dir):
    """Commands that take a run directory (pick, combine, report) use that folder, not the run_dir written in its
    config.yaml when the run was made elsewhere."""
    import shutil

    from mvalign.rundir import RunDir

    _, run = _trained(tmp_path, tiny_model_dir)
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    cfg = RunDir(moved).load_config()
    assert cfg.run_dir == str(moved.resolve()) and RunDir.of(cfg).adapter_names("dpo") == ["helpful"]


def test_a_corrupt_reward_head_is_named_and_retrained_on_force(tmp_path, tiny_model_dir):
    path = write_builtin_config(tmp_path, tiny_model_dir, 8)
    assert runner.invoke(app, ["reward", "train", str(path), "--value", "helpful"]).exit_code == 0
    head = tmp_path / "run" / "rewards" / "helpful"
    assert sorted(p.name for p in head.iterdir()) == ["head.json", "head.safetensors"]  # no temporaries
    weights = (head / "head.safetensors").read_bytes()
    (head / "head.safetensors").write_bytes(weights[: len(weights) // 3])
    _one_line_error(runner.invoke(app, ["reward", "eval", str(path)]), str(head), "unreadable reward head",
                    "--force")
    (head / "head.json").write_text('{"value": "helpful", "dim"')
    _one_line_error(runner.invoke(app, ["reward", "train", str(path), "--value", "helpful"]), "head.json: unreadable",
                    "--force")
    assert runner.invoke(app, ["reward", "train", str(path), "--value", "helpful", "--force"]).exit_code == 0
    assert runner.invoke(app, ["reward", "eval", str(path)]).exit_code == 0
