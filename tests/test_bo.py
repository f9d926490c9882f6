"""Batch multi-objective Bayesian optimisation over ω (issue 34): on a noise-free synthetic trade-off it reaches the
dense grid's front within the budget; a killed search continues with the same proposals; each round's q points go
to one mixed-ω pass."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mvalign.pareto import hypervolume, non_dominated

pytest.importorskip("botorch")

from mvalign.bo import bo_search  # noqa: E402

VALUES = ["helpful", "harmless"]
AXIS = [round(0.2 * i, 1) for i in range(1, 11)]  # the 10 × 10 reference lattice


def trade_off(w: dict[str, float]) -> dict[str, float]:
    """A smooth conflicting pair: each value peaks at its own vector's ω = 1.5 and pays for the other's."""
    a, b = w["helpful"], w["harmless"]
    return {"helpful": 1 - (a - 1.5) ** 2 - 0.6 * b**2 + 0.3 * a * b,
            "harmless": 1 - (b - 1.5) ** 2 - 0.6 * a**2 + 0.3 * a * b}


def observe_exact(ws):
    return [(trade_off(w), dict.fromkeys(VALUES, 1e-4)) for w in ws]


def hv_fraction(found: list[dict[str, float]]) -> float:
    dense = np.array([[trade_off(dict(zip(VALUES, p)))[v] for v in VALUES] for p in itertools.product(AXIS, repeat=2)])
    got = np.array([[trade_off(w)[v] for v in VALUES] for w in found])
    ref = dense.min(0)
    return hypervolume(got[non_dominated(got)], ref) / hypervolume(dense[non_dominated(dense)], ref)


def test_a_noise_free_front_is_found_within_the_budget():
    found = bo_search(observe_exact, VALUES, budget=20, grid=AXIS, q=4, seed=0)
    assert len(found) == 20 and len({tuple(w.values()) for w, _ in found}) == 20
    assert all(w["helpful"] in AXIS and w["harmless"] in AXIS for w, _ in found)
    assert hv_fraction([w for w, _ in found]) >= 0.99


def test_a_killed_search_continues_with_the_same_proposals_and_points():
    store: dict[tuple, tuple] = {}
    calls: list[list[tuple]] = []

    def observe(ws, kill_after=None):
        calls.append([tuple(w.values()) for w in ws])
        if kill_after is not None and len(calls) > kill_after:
            raise KeyboardInterrupt  # killed in the middle of a round, before its points are stored
        for w, obs in zip(ws, observe_exact(ws)):
            store.setdefault(tuple(w.values()), obs)
        return [store[tuple(w.values())] for w in ws]

    whole = bo_search(observe_exact, VALUES, budget=16, grid=AXIS, q=3, seed=5)
    with pytest.raises(KeyboardInterrupt):
        bo_search(lambda ws: observe(ws, kill_after=2), VALUES, budget=16, grid=AXIS, q=3, seed=5)
    assert len(store) < 16
    calls.clear()
    resumed = bo_search(observe, VALUES, budget=16, grid=AXIS, q=3, seed=5)
    assert [w for w, _ in resumed] == [w for w, _ in whole]
    assert sorted(store) == sorted(tuple(w.values()) for w, _ in whole)
    assert all(len(c) == 3 for c in calls[1:-1]), "every later round is one batch of q points"


def test_each_round_is_one_mixed_pass_and_the_run_writes_a_bo_front(tmp_path, tiny_model_dir, monkeypatch):
    import json

    from typer.testing import CliRunner

    import mvalign.mixed as mixed
    from common import write_builtin_config
    from mvalign.cli import app
    from mvalign.config import load_config
    from mvalign.evaluate import evaluator

    sweep = {"strategy": "bo", "grid": [0.5, 1.0, 1.5, 2.0], "budget": 10, "bo_batch": 3, "bo_initial": 4,
             "bo_stop_at_noise": False, "val_prompts": 3, "test_prompts": 3, "max_new_tokens": 4,
             "mixed_batching": True, "points_per_pass": 4, "rows_per_pass": 64}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep)
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(path), "--method", "mva"]).exit_code == 0
    calls = []
    original = mixed.generate_texts
    monkeypatch.setattr(mixed, "generate_texts", lambda *a, **k: calls.append(len(a[2])) or original(*a, **k))
    cfg = load_config(path)
    with evaluator(cfg, "mva", progress=False) as ev:
        cands = ev.plan.source.run(lambda cs: ev.points(cs, "val"))
    assert len(cands) == 10 and calls == [4 * 3, 3 * 3, 3 * 3], calls  # the design, then one pass per round of q = 3
    r = runner.invoke(app, ["run", str(path), "--method", "mva"])
    assert r.exit_code == 0, r.output
    front = json.loads((tmp_path / "run" / "front-mva.json").read_text())
    assert front["settings"]["candidates"] == "bo" and len([p for p in front["points"] if p["split"] == "val"]) == 10


def test_the_noise_given_to_the_model_is_the_standard_error_of_the_mean():
    from types import SimpleNamespace

    from mvalign.bo import noise_hypervolume
    from mvalign.candidates import standard_error

    scores = [0.3, -1.2, 2.5, 0.0, 0.7]
    rec = SimpleNamespace(scores={"helpful": scores}, ci95={"helpful": [0.0, 1.0], "harmless": [-0.392, 0.392]})
    assert standard_error(rec, "helpful") == pytest.approx(np.std(scores, ddof=1) / np.sqrt(len(scores)))
    assert standard_error(rec, "harmless") == pytest.approx(0.2)  # a 95% interval of ±1.96 se
    y, se = np.array([[1.0, 0.0], [0.0, 1.0]]), np.full((2, 2), 0.1)
    # reference (-1, -1): the union of two boxes, 2·1 + 1·2 − 1·1 (their overlap); each side 0.1 longer when moved
    by_hand = (2.1 * 1.1 + 1.1 * 2.1 - 1.1 * 1.1) - (2 * 1 + 1 * 2 - 1 * 1)
    assert noise_hypervolume(y, se, np.array([-1.0, -1.0])) == pytest.approx(by_hand)
