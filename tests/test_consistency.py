import json

import numpy as np
import pytest
from typer.testing import CliRunner

from common import write_builtin_config
from mvalign.cli import app
from mvalign.consistency import score_consistency, select, summary, value_consistency, z_normalise
from mvalign.data.pairs import PreferencePair
from mvalign.rewards import CallableReward


def test_vc_of_hand_made_gaps():
    vc = value_consistency(np.array([[2.0, 2.0], [-1.0, -1.0], [1.0, -1.0], [0.0, 0.0], [3.0, 0.0]]))
    assert vc.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0, 1 / np.sqrt(2)])
    vc3 = value_consistency(np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, -1.0, -1.0]]))
    assert vc3.tolist() == pytest.approx([1.0, 2 / (np.sqrt(2) * np.sqrt(3)), -1 / 3])
    with pytest.raises(ValueError, match="n >= 2"):
        value_consistency(np.array([[1.0], [2.0]]))


def test_z_normalisation_over_chosen_and_rejected_of_one_dataset():
    c, r = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 10.0])
    zc, zr, mean, std = z_normalise(c, r)
    both = np.array([1, 2, 3, 0, 2, 10.0])
    assert mean == pytest.approx(both.mean()) and std == pytest.approx(both.std(ddof=1))
    assert zc.tolist() == pytest.approx(((c - both.mean()) / both.std(ddof=1)).tolist())


def test_scoring_normalises_per_reward_model():
    pairs = [PreferencePair(f"q{i}", "good " * (i + 2), "bad") for i in range(5)]
    rewards = {"long": CallableReward(lambda p, r: len(r), "long"),
               "short": CallableReward(lambda p, r: -10.0 * len(r), "short")}
    res = score_consistency(pairs, rewards)
    gaps = np.asarray(res["gaps"])
    # the judges disagree exactly: z-gaps are opposite, so every VC is 0 despite the different scales
    assert gaps[:, 0] == pytest.approx(-gaps[:, 1]) and np.allclose(res["vc"], 0.0)
    assert res["stats"]["short"]["std"] == pytest.approx(10 * res["stats"]["long"]["std"])
    assert summary(res)["sign_agreement"] == 0.0


def test_filters_keep_exactly_what_they_say():
    vc = [0.9, -0.2, 0.0, 0.5, -0.8, 0.0001]
    keep, w = select(vc, "threshold", tau=0.0)
    assert keep.tolist() == [0, 2, 3, 5] and w.tolist() == [1, 1, 1, 1]
    keep, _ = select(vc, "threshold", tau=0.5)
    assert keep.tolist() == [0, 3]
    keep, _ = select(vc, "quantile", quantile=0.5)
    assert keep.tolist() == [0, 3, 5]
    keep, w = select(vc, "soft")
    assert keep.tolist() == list(range(6)) and w.tolist() == pytest.approx([(1 + v) / 2 for v in vc])


@pytest.mark.parametrize("mode", ["threshold", "soft"])
def test_vcsoup_training_uses_filtered_or_weighted_pairs(tmp_path, tiny_model_dir, mode):
    path = write_builtin_config(tmp_path, tiny_model_dir, 24, consistency={"mode": mode, "tau": 0.0})
    runner = CliRunner()
    result = runner.invoke(app, ["consistency", str(path)])
    assert result.exit_code == 0, result.output
    rows = {r["value"]: r for r in (json.loads(line) for line in result.stdout.splitlines() if line.startswith("{"))}
    vc_file = tmp_path / "run" / "consistency" / "harmless.json"
    vc = json.loads(vc_file.read_text())["vc"]
    assert rows["harmless"]["pairs"] == 24 and rows["harmless"]["kept"] == (24 if mode == "soft" else sum(v >= 0 for v in vc))
    assert (tmp_path / "run" / "consistency" / "consistency.png").is_file()
    stamp = vc_file.stat().st_mtime_ns
    assert runner.invoke(app, ["train", str(path), "--value", "harmless"]).exit_code == 0  # a plain DPO vector exists...
    trained = runner.invoke(app, ["train", str(path), "--method", "vcsoup", "--value", "harmless"])
    assert trained.exit_code == 0, trained.output
    assert vc_file.stat().st_mtime_ns == stamp  # filtering reused the cached scores
    summary_line = [json.loads(line) for line in trained.stdout.splitlines() if line.startswith("{")][0]
    # ... and vcsoup still trains its own vector on the filtered pairs
    assert summary_line["train_pairs"] == rows["harmless"]["kept"] and summary_line["pairs_before_filter"] == 24
    assert "reused" not in summary_line
