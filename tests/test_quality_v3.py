"""The v3 quality tables (bench/quality/quality_v3.py): a claim re-answered under each measure of a value, with the
front re-selected on val by that measure, checked against direct computations on synthetic cells."""

import numpy as np
import pytest
from bench.quality import quality_v3 as q3
from bench.quality.quality_table import cell_front

from common import hypervolume_2d
from mvalign.config import ConfigError
from mvalign.hvstats import hv_replicates, pooled_differences

VALUES = ["a", "b"]
ALT = "b:rate"


def synthetic_cell(rng, own_items: tuple[int, int] | None = None) -> dict:
    """Val and test points scored by the primaries and by a second measure of b that reverses b's ordering; with
    `own_items` (val, test) the second measure is scored on its own items (as TruthfulQA MC questions are)."""
    grid = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (1.0, 1.0), (0.5, 0.0)]
    items = dict(zip(("val", "test"), own_items or (30, 40)))

    def alt(mean, split):
        return 1 - rng.normal(mean, 0.3, items[split]) if own_items else None

    def point(split, w, n):
        a = rng.normal(w[0], 0.3, n)
        b = rng.normal(w[1], 0.3, n)
        c = alt(w[1], split)
        c = 1 - b if c is None else c
        return {"split": split, "weights": dict(zip(VALUES, w)), "pareto": False,
                "rewards": {"a": float(a.mean()), "b": float(b.mean()), ALT: float(c.mean())},
                "scores": {"a": a.tolist(), "b": b.tolist(), ALT: c.tolist()}}
    val = [point("val", w, 30) for w in grid]
    test_all = [point("test", w, 40) for w in grid]
    base_s = {"a": rng.normal(0, 0.3, 40).tolist(), "b": rng.normal(0, 0.3, 40).tolist()}
    base_v = {"a": rng.normal(0, 0.3, 30).tolist(), "b": rng.normal(0, 0.3, 30).tolist()}
    base_s[ALT], base_v[ALT] = (1 - np.asarray(base_s["b"])).tolist(), (1 - np.asarray(base_v["b"])).tolist()
    if own_items:
        base_s[ALT], base_v[ALT] = alt(0.0, "test").tolist(), alt(0.0, "val").tolist()
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


def test_a_second_measure_on_its_own_items_is_resampled_on_its_own():
    """TruthfulQA MC2 scores questions, not the prompts (val: 114 questions vs 64 prompts): the re-measured front
    reads, and each bootstrap replicate equals a direct computation resampling b's items with their own indices."""
    cell = synthetic_cell(np.random.default_rng(3), own_items=(25, 35))
    r = q3.remeasure(cell, {"a": "a", "b": ALT})
    front = cell_front(r)
    assert front.item_counts() == ((30, 40), (25, 35))
    with pytest.raises(ConfigError, match=r"scores_val\['b'\] must list one score per prompt \(30\)"):
        cell_front({k: x for k, x in r.items() if k != "measured_by"})  # only a declared measure has its own items
    rng = np.random.default_rng(0)
    idx = [(rng.integers(0, 30, (3, 30)), rng.integers(0, 40, (3, 40))), (rng.integers(0, 25, (3, 25)),
                                                                           rng.integers(0, 35, (3, 35)))]
    ref = [-1.0, -1.0]
    reps = hv_replicates(front, ref, [i[0] for i in idx], [i[1] for i in idx])
    test = {tuple(p["weights"].values()): p for p in r["points"] if p["split"] == "test"}
    val = [p for p in r["points"] if p["split"] == "val" and tuple(p["weights"].values()) in test]
    def means(p, k, b):  # k: 0 val, 1 test; b: the replicate
        return {"a": np.mean(np.asarray(p["scores"]["a"])[idx[0][k][b]]),
                "b": np.mean(np.asarray(p["scores"]["b"])[idx[1][k][b]])}
    for b in range(3):
        resampled = [{"rewards": means(p, 0, b)} for p in val]
        keep = [val[i] for i in direct_front(resampled, "b")]
        pts = [tuple(means(test[tuple(p["weights"].values())], 1, b).values()) for p in keep]
        assert reps[b] == pytest.approx(hypervolume_2d(pts, ref))
    other = cell_front(q3.remeasure(synthetic_cell(np.random.default_rng(4), (25, 35)), {"a": "a", "b": ALT}))
    d = pooled_differences([{"x": front, "y": other}], ref, n_boot=50)["x", "y"]
    assert d["per_seed"] == [pytest.approx(front.hv_with(ref) - other.hv_with(ref))]


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


def test_cells_scored_by_another_instrument_stop_the_tables():
    """A cell whose base settings key differs (its judges were refit with another seed) cannot be pooled with the
    setting's other cells."""
    same = {"base": {"settings_key": "k", "settings_key_val": "kv"}}
    q3.one_instrument({"builtin/0/dpo": same, "builtin/1/dpo": same, "tqa/0/dpo": {
        "base": {"settings_key": "other", "settings_key_val": "kv"}}})  # another setting: its own instrument
    odd = {"base": {"settings_key": "refit", "settings_key_val": "kv"}}
    with pytest.raises(SystemExit, match=r"builtin: cells were scored under 2 different settings keys .*refit: "
                                         r"builtin/1/dpo"):
        q3.one_instrument({"builtin/0/dpo": same, "builtin/1/dpo": odd})


def test_judges_fit_with_another_seed_stop_the_benchmark(tmp_path):
    """Heads cached in a run dir by a seed-1 run would score every later cell of the setting with another instrument:
    the benchmarks' judge loader refuses them by name, and refuses to fit judges from a non-JUDGE_SEED config."""
    import json

    from bench.quality.run import BUDGET, JUDGE_SEED, make_config, seeded_judges

    cfg = make_config("builtin", JUDGE_SEED, BUDGET["quick"], tmp_path)
    head = tmp_path / "builtin" / "rewards" / "harmless" / "head.json"
    head.parent.mkdir(parents=True)
    head.write_text(json.dumps({"settings": {"seed": JUDGE_SEED + 1}}))
    with pytest.raises(SystemExit, match=r"harmless/head.json: fit with seed 1, the benchmark's judges with seed 0"):
        seeded_judges(cfg)
    with pytest.raises(ValueError, match="judges are fit with seed 0"):
        seeded_judges(make_config("builtin", JUDGE_SEED + 1, BUDGET["quick"], tmp_path))
