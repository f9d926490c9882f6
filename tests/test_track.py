"""`report_to: [tensorboard]`: training steps, the decorrelation penalty, every evaluated point and the front's
hypervolume reach TensorBoard event files (read back here); changing report_to does not invalidate a run dir."""

import json

import pytest
from typer.testing import CliRunner

from common import write_builtin_config
from mvalign.cli import app
from mvalign.store import RunStore

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="tensorboard is part of the dev extra")
runner = CliRunner()


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_receives_training_points_and_hypervolume(tmp_path, tiny_model_dir):
    sweep = {"grid": [0.5, 1.0], "val_prompts": 4, "test_prompts": 3, "max_new_tokens": 4, "bootstrap": 100}
    dpo = {"max_steps": 3, "batch_size": 4, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep, dpo=dpo, report_to=["tensorboard"])
    result = runner.invoke(app, ["run", str(path), "--method", "mva"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    later = scalars(run / "trackers" / "train-mva-harmless")
    log = [json.loads(line) for line in (run / "train" / "mva" / "harmless" / "log.jsonl").read_text().splitlines()]
    assert [s for s, _ in later["dpo_loss"]] == [1, 2, 3]
    for key in ("dpo_loss", "loss", "lr"):
        assert [v for _, v in later[key]] == pytest.approx([row[key] for row in log], rel=1e-6)
    penalty = [k for k in later if k.startswith("cka") or k.startswith("hsic")]
    assert penalty and any(k != "cka_total" for k in penalty)  # per layer and in total
    first = scalars(run / "trackers" / "train-dpo-helpful")  # mva's first vector is the plain dpo one
    assert len(first["dpo_loss"]) == 3

    ev = scalars(run / "trackers" / "eval-mva")
    front = json.loads((run / "front-mva.json").read_text())
    val = [p for p in front["points"] if p["split"] == "val"]
    assert len(ev["val/helpful"]) == len(val) == len(RunStore(run).points("mva", "val"))
    assert sorted(v for _, v in ev["val/helpful"]) == pytest.approx(sorted(p["rewards"]["helpful"] for p in val))
    assert ev["hypervolume/test"][0][1] == pytest.approx(front["hypervolume"]["test"])

    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep, dpo=dpo)  # trackers off again
    again = runner.invoke(app, ["run", str(path), "--method", "mva"])
    assert again.exit_code == 0, again.output
