"""The quality benchmark's table: shared reference, paired differences by seed, verdicts (bench/quality/quality_table.py)."""

import pytest
from bench.quality import quality_table as qt
from scipy import stats

from common import hypervolume_2d

VALUES = ["a", "b"]


def cell(points: list[tuple[float, float]], cka: float = 0.5, acc: float = 0.6) -> dict:
    return {
        "method": "m", "values": VALUES, "own_reference_point": [0.0, 0.0], "hypervolume_own_reference": {"val": 0, "test": 0},
        "base": {"rewards": {"a": 0.0, "b": 0.0}, "rewards_val": {"a": 0.0, "b": 0.0}},
        "points": [{"split": "test", "weights": {"a": x, "b": y}, "rewards": {"a": x, "b": y}} for x, y in points]
        + [{"split": "val", "weights": {"a": 9, "b": 9}, "rewards": {"a": 99.0, "b": 99.0}}],  # val points never count
        "training": {"steps": 2, "tokens": 10, "seconds": 1.0},
        "interference": {"cka": cka},
        "vectors": {"a": {"val_accuracy": acc}, "b": {"val_accuracy": acc}},
    }


@pytest.fixture
def results() -> dict:
    # mva beats dpo on every seed by construction; the reference point is (-1, -1) (the minimum over all points).
    mva = {0: [(1.0, 2.0), (2.0, 1.0)], 1: [(1.5, 1.5)], 2: [(2.0, 2.0), (-1.0, -1.0)]}
    dpo = {0: [(1.0, 1.0)], 1: [(1.0, 1.2), (0.5, 0.5)], 2: [(0.0, 3.0)]}
    cells = {}
    for s in range(3):
        cells[f"x/{s}/mva"] = cell(mva[s], cka=0.2 + 0.01 * s)
        cells[f"x/{s}/dpo"] = cell(dpo[s], cka=0.5 - 0.02 * s)
    return {"cells": cells, "budget": {}, "judges": {}}, mva, dpo


def test_paired_hv_differences_match_a_direct_computation(results):
    res, mva, dpo = results
    t = qt.setting_tables(res["cells"])["x"]
    assert t["reference_point"] == [-1.0, -1.0]
    diffs = [hypervolume_2d(mva[s], (-1, -1)) - hypervolume_2d(dpo[s], (-1, -1)) for s in range(3)]
    got = qt.paired(t, "mva", "dpo")
    mean = sum(diffs) / 3
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / 3**0.5
    assert got["mean"] == pytest.approx(mean, abs=1e-9)
    assert got["ci95"] == pytest.approx([mean - half, mean + half], abs=1e-9)
    assert got["positive"] == sum(d > 0 for d in diffs) and got["seeds"] == [0, 1, 2]


def test_verdicts_follow_the_interval():
    assert qt.verdict({"n": 3, "ci95": [0.1, 0.5]}) == "held"
    assert qt.verdict({"n": 3, "ci95": [-0.5, -0.1]}) == "reversed"
    assert qt.verdict({"n": 3, "ci95": [-0.1, 0.5]}) == "not shown"
    assert qt.verdict({"n": 1, "ci95": [0.1, 0.1]}) == "not shown"
    assert qt.verdict({"n": 3, "ci95": [-0.5, -0.1]}, "negative") == "held"
    assert qt.verdict({"n": 3, "ci95": [-0.5, -0.1]}, "not-negative") == "hurt"
    assert qt.verdict({"n": 3, "ci95": [-0.5, 0.1]}, "not-negative") == "no loss detected"
    assert qt.verdict(None) == "not shown"


def test_markdown_reports_the_claims_summary(results):
    res, _, _ = results
    text = qt.markdown(res)
    assert "## The paper's claims across settings" in text
    # interference: CKA(mva) < CKA(dpo) on all 3 seeds with a tight interval -> held, 0 positive seeds
    assert "| interference: CKA(mva vectors) − CKA(dpo vectors) | held (0/3) |" in text
    # methods that were not run show a dash instead of a made-up number
    assert "| HV(mva) − HV(soup) | — |" in text
