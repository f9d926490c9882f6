"""The v2 quality tables (bench/quality/quality_v2.py): paired-over-prompts claims pooled over seeds, checked against
direct computations on synthetic cells with a known difference."""

import numpy as np
import pytest
from bench.quality import quality_v2 as qv

from common import hypervolume_2d

VALUES = ["a", "b"]
N_VAL, N_TEST = 40, 60


def cell(rng, difficulty: dict, shift: float, weights: list[tuple[float, float]]) -> dict:
    """Points whose per-prompt scores are the prompt's shared difficulty + a method shift depending on ω + noise."""
    def scores(split, w):
        return {v: (difficulty[split][j] + shift * (1 + w[j]) + rng.normal(0, 0.3, len(difficulty[split][j]))).tolist()
                for j, v in enumerate(VALUES)}

    def point(split, w):
        s = scores(split, w)
        return {"split": split, "weights": dict(zip(VALUES, w)), "rewards": {v: float(np.mean(s[v])) for v in VALUES},
                "scores": s, "pareto": True}

    base = {"rewards": {v: float(np.mean(difficulty["test"][j])) for j, v in enumerate(VALUES)},
            "rewards_val": {v: float(np.mean(difficulty["val"][j])) for j, v in enumerate(VALUES)},
            "scores": {v: difficulty["test"][j].tolist() for j, v in enumerate(VALUES)},
            "scores_val": {v: difficulty["val"][j].tolist() for j, v in enumerate(VALUES)}}
    points = [point("val", w) for w in weights] + [point("test", w) for w in weights]
    return {"method": "m", "values": VALUES, "own_reference_point": [0.0, 0.0],
            "hypervolume_own_reference": {"val": 0.0, "test": 0.0}, "base": base, "points": points,
            "settings": {"val_prompts": N_VAL, "test_prompts": N_TEST},
            "training": {"steps": 10}, "cell_wall_seconds": 1.0, "interference": {"cka": 0.1},
            "vectors": {"b": {"val_accuracy": 0.7}}}


@pytest.fixture
def results():
    cells = {}
    for seed in range(3):
        rng = np.random.default_rng(seed)
        difficulty = {"val": rng.normal(0, 1, (2, N_VAL)), "test": rng.normal(0, 1, (2, N_TEST))}
        grid = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)]
        cells[f"x/{seed}/mva"] = cell(rng, difficulty, 0.5, grid)  # mva is better by construction
        cells[f"x/{seed}/dpo"] = cell(rng, difficulty, 0.1, grid)
    return {"cells": cells, "judges": {"x": {v: {"val_accuracy": 0.9, "val_pairs": 50} for v in VALUES}}}


def direct_hv(c: dict, ref) -> float:
    pts = [tuple(p["rewards"][v] for v in VALUES) for p in c["points"] if p["split"] == "test"]
    return hypervolume_2d(pts, ref)


def test_pooled_hv_difference_is_the_mean_of_direct_per_seed_differences(results):
    seeds = qv.by_setting(results["cells"])["x"]
    cells = list(results["cells"].values())
    ref = np.min([[c["base"]["rewards"][v] for v in VALUES] for c in cells]
                 + [[p["rewards"][v] for v in VALUES] for c in cells for p in c["points"] if p["split"] == "test"], axis=0)
    d = qv.pooled_hv(seeds, ref.tolist())[("mva", "dpo")]
    direct = [direct_hv(seeds[s]["mva"], ref) - direct_hv(seeds[s]["dpo"], ref) for s in range(3)]
    assert d["mean"] == pytest.approx(np.mean(direct), rel=1e-9)
    assert d["per_seed"] == pytest.approx(direct, rel=1e-9)
    assert d["ci95"][0] > 0 and d["verdict"] == "held" and 0 < d["detectable"] < d["mean"]


def test_single_value_generations_is_the_paired_mean_at_the_unit_weight(results):
    seeds = qv.by_setting(results["cells"])["x"]
    d = qv.single_value_generations(seeds)
    direct = []
    for s in range(3):
        a = next(p for p in seeds[s]["mva"]["points"] if p["split"] == "val" and p["weights"] == {"a": 0.0, "b": 1.0})
        b = next(p for p in seeds[s]["dpo"]["points"] if p["split"] == "val" and p["weights"] == {"a": 0.0, "b": 1.0})
        direct.append(np.mean(np.subtract(a["scores"]["b"], b["scores"]["b"])))
    assert d["mean"] == pytest.approx(np.mean(direct), rel=1e-12) and d["seeds"] == 3
    assert d["ci95"][0] < d["mean"] < d["ci95"][1] and d["ci95"][0] > 0  # shift 0.5·2 vs 0.1·2 on 40 prompts


def test_markdown_verdicts_and_the_answered_tally(results):
    text = qv.markdown(results)
    row = next(line for line in text.splitlines() if line.startswith("| HV(mva) − HV(dpo) |"))
    assert "| held |" in row and "| 3/3 |" in row
    assert "single value, generations" in text and "x: " in text and "answered" in text
    # identical methods: nothing to detect, the verdict must not claim anything
    same = {"cells": {k.replace("dpo", "mva") if "dpo" in k else k: v for k, v in results["cells"].items() if "dpo" not in k}}
    same["cells"].update({k.replace("mva", "dpo"): v for k, v in same["cells"].items()})
    row = next(line for line in qv.markdown(same).splitlines() if line.startswith("| HV(mva) − HV(dpo) |"))
    assert "| not shown |" in row


def test_per_seed_detectable_difference_has_80_percent_power():
    """For claims with one number per seed: 'detectable' is the true difference a two-sided 5% t-test over the seeds
    finds with 80% power (checked by simulating 20000 t-tests at that difference), and 'seeds_needed' is the fewest
    seeds whose detectable difference is within the estimate."""
    from scipy import stats

    rng = np.random.default_rng(0)
    for diffs in ([-0.13, -0.15], [0.2, 0.5, 0.1], [1.0, 1.4, 0.7, 1.9, 1.1, 0.4]):
        seeds = {i: {"mva": {"x": d}, "dpo": {"x": 0.0}} for i, d in enumerate(diffs)}
        d = qv.per_seed_t(seeds, lambda c: c["x"])
        n, sd = len(diffs), np.std(diffs, ddof=1)
        draws = rng.normal(d["detectable"], sd, (20000, n))
        t = draws.mean(axis=1) / (draws.std(axis=1, ddof=1) / np.sqrt(n))
        power = np.mean(np.abs(t) > stats.t.ppf(0.975, n - 1))
        assert abs(power - 0.80) < 0.015, (diffs, power)
        k = d["seeds_needed"]
        assert qv.t_power(k) * sd / np.sqrt(k) <= abs(np.mean(diffs))
        assert k == 2 or qv.t_power(k - 1) * sd / np.sqrt(k - 1) > abs(np.mean(diffs))
        assert qv._budget(d, "not shown") == f"{k} seeds"


def test_a_pooled_answer_needs_every_seed_on_its_side():
    """The pooled interval resamples prompts, not seeds: a claim it answers is reported only when every seed's own
    difference has the pooled sign."""
    d = {"mean": 1.0, "ci95": [0.2, 1.8], "detectable": 0.5}
    assert "| held |" in qv._row("c", {**d, "per_seed": [1.5, 0.5]}, "m")[0]
    row, verdict = qv._row("c", {**d, "per_seed": [2.1, -0.1]}, "m")
    assert verdict == "seeds disagree" and verdict not in qv.ANSWERED and "| 1/2 |" in row
    assert qv._row("c", {**d, "mean": -1.0, "ci95": [-1.8, -0.2], "per_seed": [-2.1, 0.1]}, "m")[1] == "seeds disagree"


def test_an_accuracy_at_its_ceiling_in_every_seed_is_not_an_answer():
    """Both vectors rank every held-out pair right in every seed: the difference is 0 by saturation, reported as
    'at ceiling' (not 'no loss detected' with a zero-width interval); one seed below the ceiling gives the t-row."""
    acc = {0: (1.0, 1.0), 1: (1.0, 1.0), 2: (1.0, 1.0)}
    seeds = {s: {"mva": {"x": a}, "dpo": {"x": b}} for s, (a, b) in acc.items()}
    d = qv.per_seed_t(seeds, lambda c: c["x"], ceiling=1.0)
    row, verdict = qv._row("acc", d, "m", 3, "not-negative")
    assert verdict == "at ceiling" and verdict not in qv.ANSWERED and "both 1.000 in all 3 seeds" in row
    seeds[1]["dpo"]["x"] = 0.95
    d = qv.per_seed_t(seeds, lambda c: c["x"], ceiling=1.0)
    assert "ceiling" not in d and d["ci95"] is not None and qv._row("acc", d, "m", 3, "not-negative")[1] != "at ceiling"
