"""The v3 quality tables (bench/quality/quality_v3.py): a claim re-answered under each measure of a value, with the
front re-selected on val by that measure, checked against direct computations on synthetic cells."""

import numpy as np
import pytest
from bench.quality import quality_v3 as q3

from common import hypervolume_2d

VALUES = ["a", "b"]
ALT = "b:rate"


def synthetic_cell(rng) -> dict:
    """Val and test points scored by the primaries and by a second measure of b that reverses b's ordering."""
    grid = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (1.0, 1.0), (0.5, 0.0)]

    def point(split, w, n):
        a = rng.normal(w[0], 0.3, n)
        b = rng.normal(w[1], 0.3, n)
        return {"split": split, "weights": dict(zip(VALUES, w)), "pareto": False,
                "rewards": {"a": float(a.mean()), "b": float(b.mean()), ALT: float((1 - b).mean())},
                "scores": {"a": a.tolist(), "b": b.tolist(), ALT: (1 - b).tolist()}}
    val = [point("val", w, 30) for w in grid]
    test_all = [point("test", w, 40) for w in grid]
    base_s = {"a": rng.normal(0, 0.3, 40).tolist(), "b": rng.normal(0, 0.3, 40).tolist()}
    base_v = {"a": rng.normal(0, 0.3, 30).tolist(), "b": rng.normal(0, 0.3, 30).tolist()}
    base_s[ALT], base_v[ALT] = (1 - np.asarray(base_s["b"])).tolist(), (1 - np.asarray(base_v["b"])).tolist()
    base = {"scores": base_s, "scores_val": base_v, "rewards": {k: float(np.mean(x)) for k, x in base_s.items()},
            "rewards_val": {k: float(np.mean(x)) for k, x in base_v.items()}}
    return {"method": "m", "values": VALUES, "points": val + test_all[:2], "test_all": test_all, "base": base,
            "own_reference_point": [0, 0], "hypervolume_own_reference": {"val": 0, "test": 0}}


def direct_front(points, key):
    """Indices of the points no other point weakly dominates with one strict improvement (maximising)."""
    m = np.asarray([[p["rewards"]["a"], p["rewards"][key]] for p in points])
    return [i for i in range(len(m)) if not any((m[j] >= m[i]).all() and (m[j] > m[i]).any() for j in range(len(m)))]


def test_remeasure_reselects_on_val_by_the_second_measure():
    cell = synthetic_cell(np.random.default_rng(0))
    r = q3.remeasure(cell, {"a": "a", "b": ALT})
    val = [p for p in cell["points"] if p["split"] == "val"]
    chosen = {tuple(val[i]["weights"].values()) for i in direct_front(val, ALT)}
    test = [p for p in r["points"] if p["split"] == "test"]
    assert {tuple(p["weights"].values()) for p in test} == chosen
    for p in test:  # scores and means are the second measure's, taken from test_all
        src = next(t for t in cell["test_all"] if t["weights"] == p["weights"])
        assert p["scores"]["b"] == src["scores"][ALT] and p["rewards"]["b"] == pytest.approx(np.mean(src["scores"][ALT]))
    assert r["base"]["rewards"]["b"] == pytest.approx(np.mean(cell["base"]["scores"][ALT]))
    rows = [[p["rewards"]["a"], p["rewards"]["b"]] for p in r["points"]]
    rows += [[r["base"][k]["a"], r["base"][k]["b"]] for k in ("rewards", "rewards_val")]
    ref = np.min(rows, axis=0)
    assert r["own_reference_point"] == pytest.approx(ref.tolist())
    want = hypervolume_2d([(p["rewards"]["a"], p["rewards"]["b"]) for p in test], ref)
    assert r["hypervolume_own_reference"]["test"] == pytest.approx(want)
    # the primaries select a different front here (b reversed), from the same pool
    primary = q3.remeasure(cell, {"a": "a", "b": "b"})
    assert {tuple(p["weights"].values()) for p in primary["points"] if p["split"] == "test"} == {
        tuple(val[i]["weights"].values()) for i in direct_front(val, "b")} != chosen


@pytest.mark.parametrize("verdicts, want", [
    (["held", "held"], "answered: held"),
    (["reversed", "reversed"], "answered: reversed"),
    (["held", "reversed"], "measure-dependent: opposite answers"),
    (["held", "not shown"], "measure-dependent: answered under one measure only"),
    (["no loss detected", "hurt"], "measure-dependent: answered under one measure only"),
    (["not shown", "seeds disagree"], "not answered"),
    (["held"], "answered: held"),
])
def test_combined_verdicts(verdicts, want):
    assert q3.combine(verdicts) == want
