"""Paired statistics (mvalign.stats, mvalign.hvstats), judge quality (mvalign.judging) and callable judges, against
direct computations."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from common import hypervolume_2d, write_builtin_config
from mvalign.config import ConfigError, load_config
from mvalign.front import Front
from mvalign.hvstats import hv_differences, hv_replicates, shared_reference
from mvalign.judges import refusal
from mvalign.judging import pair_ece, wilson_interval
from mvalign.stats import paired_difference, unpaired_difference
from mvalign.store import PointRecord


def correlated(rng, n, diff):
    """Per-prompt scores of two points sharing each prompt's difficulty; true mean difference `diff`."""
    difficulty = rng.normal(0, 1.0, n)
    return difficulty + diff + rng.normal(0, 0.3, n), difficulty + rng.normal(0, 0.3, n)


def test_paired_interval_covers_a_known_difference_at_the_nominal_rate():
    """100 seeded replications (50 prompts, true difference 0.3): the 95% paired interval covers 0.3 in ≥ 90 (the
    binomial 99.9% lower bound for 95 is about 87)."""
    covered = 0
    for seed in range(100):
        a, b = correlated(np.random.default_rng(seed), 50, 0.3)
        lo, hi = paired_difference(a, b, n_boot=1000, seed=seed)["ci95"]
        covered += lo <= 0.3 <= hi
    assert covered >= 90, covered


def test_paired_is_never_wider_than_unpaired_on_positively_correlated_data():
    for seed in range(20):
        a, b = correlated(np.random.default_rng(seed), 40, 0.1)
        p, u = paired_difference(a, b, seed=seed), unpaired_difference(a, b, seed=seed)
        assert p["mean"] == pytest.approx(np.mean(a - b)) == pytest.approx(u["mean"])
        assert p["ci95"][1] - p["ci95"][0] <= u["ci95"][1] - u["ci95"][0]
        assert p["detectable"] == pytest.approx(2.801585 * p["se"], rel=1e-5)


def test_paired_difference_rejects_unpaired_input():
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 2.0], [1.0])


def record(split, weights, scores):
    return PointRecord("m", weights, split, "k", {v: float(np.mean(s)) for v, s in scores.items()},
                       {v: [0.0, 0.0] for v in scores}, len(next(iter(scores.values()))), 0.0, 0.0, {}, [],
                       scores={v: list(map(float, s)) for v, s in scores.items()})


def synthetic_front(rng, shift, n_val=12, n_test=10):
    values = ["a", "b"]
    base = {s: record(s, {"a": 0.0, "b": 0.0}, {v: rng.normal(0, 1, n) for v in values})
            for s, n in (("val", n_val), ("test", n_test))}
    val, test = [], []
    for w in [0.2, 0.5, 0.8]:
        mean = {"a": w + shift, "b": 1 - w + shift}
        val.append(record("val", {"a": w, "b": 1 - w}, {v: mean[v] + rng.normal(0, 0.2, n_val) for v in values}))
        test.append(record("test", {"a": w, "b": 1 - w}, {v: mean[v] + rng.normal(0, 0.2, n_test) for v in values}))
    return Front.build(values, "m", val, test, base["val"], base["test"])


def test_front_carries_paired_changes_from_the_base_on_the_same_prompts():
    front = synthetic_front(np.random.default_rng(0), 0.0)
    base = front.base.test.scores
    for p in front.on("test"):
        for v in ("a", "b"):
            assert p.vs_base[v]["mean"] == pytest.approx(np.mean(np.subtract(p.scores[v], base[v])))


def test_hv_replicates_on_the_original_prompts_give_the_front_hypervolume():
    front = synthetic_front(np.random.default_rng(1), 0.0)
    ref = [-3.0, -3.0]
    reps = hv_replicates(front, ref, np.arange(12)[None, :], np.arange(10)[None, :])
    pts = [tuple(p.rewards[v] for v in front.values) for p in front.on("test")]
    assert reps[0] == pytest.approx(hypervolume_2d(pts, ref)) == pytest.approx(front.hv_with(ref))


def test_hv_differences_say_held_for_a_clearly_better_method_and_not_shown_for_a_copy():
    rng = np.random.default_rng(2)
    better, worse = synthetic_front(rng, 0.5), synthetic_front(rng, 0.0)
    for f in (better, worse):  # one base model: the same prompts and base scores
        f.base = better.base
    ref = [-3.0, -3.0]
    d = hv_differences({"better": better, "worse": worse, "copy": better}, ref, n_boot=300)
    assert d["better", "worse"]["verdict"] == "held" and d["better", "worse"]["mean"] > 0
    assert d["better", "copy"]["mean"] == 0 and d["better", "copy"]["ci95"] == [0.0, 0.0]
    assert d["better", "copy"]["verdict"] == "not shown"


def test_wilson_and_ece_hand_computations():
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    # margins 0 → p = 0.5 both ways: perfectly calibrated at 0.5 against labels 1/0 → |0.5 − 0.5| = 0
    assert pair_ece(np.zeros(4)) == pytest.approx(0.0)
    # margin ln 3 → p = 0.75 (bin 7) with label 1, 0.25 (bin 2) with label 0: ECE = ½·0.25 + ½·0.25
    assert pair_ece(np.full(3, np.log(3))) == pytest.approx(0.25)


def test_refusal_judge_is_xstests_string_match():
    assert refusal("q", "  I'm sorry, I can't help with that.") == 1.0
    assert refusal("q", "As an AI language model, I ...") == 1.0
    assert refusal("q", "Sure! Here is how to kill a Python process.") == 0.0
    assert refusal("q", "Here is why I cannot agree") == 0.0  # only the start counts


def test_callable_judge_loads_from_config_and_its_identity_follows_its_version(tmp_path, tiny_model_dir):
    from mvalign.rewards import load_reward_models

    path = write_builtin_config(tmp_path, tiny_model_dir, 8)
    raw = yaml.safe_load(path.read_text())
    raw["values"][1]["reward"] = {"kind": "callable", "function": "mvalign.judges:refusal", "version": "1"}
    path.write_text(yaml.safe_dump(raw))
    raw["values"][0]["reward"] = {"kind": "callable", "function": "mvalign.judges:length", "version": "1"}
    cfg = load_config(path)
    judge = load_reward_models(cfg)["harmless"]
    assert list(judge.score(["q", "q"], ["Sorry, no.", "Sure."])) == [1.0, 0.0]
    cfg.values[1].reward.version = "2"
    assert load_reward_models(cfg)["harmless"].identity != judge.identity
    cfg.values[1].reward.function = "mvalign.judges:nope"
    with pytest.raises(ConfigError, match="values.harmless.reward.function: cannot import"):
        load_reward_models(cfg)


def test_compare_pools_paired_differences_over_runs():
    """Two runs (seeds) of the same two methods: the pooled difference is the mean of the per-run differences."""
    from mvalign.compare import compare, markdown

    entries = []
    for seed in range(2):
        rng = np.random.default_rng(10 + seed)
        better, worse = synthetic_front(rng, 0.5), synthetic_front(rng, 0.0)
        worse.base = better.base
        entries += [{"run": f"r{seed}", "method": "better", "front": better},
                    {"run": f"r{seed}", "method": "worse", "front": worse}]
    table = compare(entries)
    (d,) = table["paired"]["differences"]
    ref = table["reference_point"]
    per_run = [entries[2 * k]["front"].hv_with(ref) - entries[2 * k + 1]["front"].hv_with(ref) for k in range(2)]
    assert d["per_seed"] == pytest.approx(per_run) and d["mean"] == pytest.approx(np.mean(per_run))
    assert d["seeds"] == 2 and d["verdict"] == "held" and "| better − worse |" in markdown(table)


def test_flagged_test_points_count_neither_for_the_reference_nor_for_compare():
    from mvalign.compare import compare

    good = {"weights": {"a": 1.0, "b": 0.0}, "split": "test", "rewards": {"a": 1.0, "b": 2.0}, "pareto": True}
    flagged = {"weights": {"a": 99.0, "b": 0.0}, "split": "test", "rewards": {"a": float("nan"), "b": -50.0},
               "flag": "all responses empty"}
    front = Front.from_json({"values": ["a", "b"], "reference_point": [0.0, 0.0], "points": [good, flagged],
                             "base": {"rewards": {"a": 0.5, "b": 0.0}, "rewards_val": {"a": 0.5, "b": 0.0}}}, "m")
    assert shared_reference([front]) == [0.5, 0.0]
    assert front.matrix("test").tolist() == [[1.0, 2.0]]
    (row,) = compare([{"run": "r", "method": "m", "front": front}])["rows"]
    assert row["non_dominated"] == 1 and row["hypervolume_test"] == pytest.approx((1.0 - 0.5) * (2.0 - 0.0))
