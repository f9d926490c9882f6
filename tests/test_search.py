"""Adaptive front search: budget, box, determinism, quality against the dense grid, and resumable use in a sweep."""

import json
import math

import pytest
from typer.testing import CliRunner

from mvalign.cli import app
from mvalign.search import adaptive_search, seed_points
from mvalign.store import RunStore
from conftest import hypervolume_2d, write_builtin_config

FUNCTIONS = {
    "curved": lambda x, y: (x - 0.6 * y * y + 0.3 * x * y, y - 0.6 * x * x + 0.2 * x * y),
    "linear": lambda x, y: (x - 0.5 * y, y - 0.5 * x),
    "peaked": lambda x, y: (math.sin(2.5 * x) - 0.4 * y, math.sin(2.5 * y) - 0.4 * x),
    "shrinking": lambda x, y: (2 * x * (1.2 - x - y), 2 * y * (1.2 - x - y)),
}


def _evaluator(f, calls):
    def evaluate(ws):
        calls.extend(ws)
        return [dict(zip(("a", "b"), f(w["a"], w["b"]))) for w in ws]
    return evaluate


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_25_points_reach_98_percent_of_the_dense_grid(name):
    f = FUNCTIONS[name]
    calls = []
    found = adaptive_search(_evaluator(f, calls), ["a", "b"], 25, 0.1, 1.0)
    grid = [round(0.1 * i, 1) for i in range(1, 11)]
    dense = [f(x, y) for x in grid for y in grid]
    adaptive = [(r["a"], r["b"]) for _, r in found]
    ref = [min(p[i] for p in dense + adaptive) for i in (0, 1)]
    assert hypervolume_2d(adaptive, ref) >= 0.98 * hypervolume_2d(dense, ref)
    assert len(found) == len(calls) == 25
    ws = [tuple(w.values()) for w, _ in found]
    assert len(set(ws)) == 25 and all(0.1 - 1e-12 <= x <= 1.0 + 1e-12 for w in ws for x in w)
    seeds = seed_points(["a", "b"], 0.1, 1.0)
    assert len(seeds) == 9 and [dict(w) for w, _ in found[:9]] == seeds
    again = adaptive_search(_evaluator(f, []), ["a", "b"], 25, 0.1, 1.0)
    assert [w for w, _ in again] == [w for w, _ in found]  # deterministic: a re-run replays the same proposals


def test_budget_smaller_than_seed_grid_and_bad_box():
    found = adaptive_search(_evaluator(FUNCTIONS["linear"], []), ["a", "b"], 3, 0.0, 1.0)
    assert len(found) == 3 and all(any(w.values()) for w, _ in found)  # ω = 0 is the base, never a candidate
    with pytest.raises(ValueError, match="lo < hi"):
        adaptive_search(_evaluator(FUNCTIONS["linear"], []), ["a", "b"], 5, 1.0, 1.0)


def test_adaptive_sweep_in_a_run_is_resumable(tmp_path, tiny_model_dir):
    sweep = {"strategy": "adaptive", "budget": 10, "grid": [0.0, 1.5], "val_prompts": 3, "test_prompts": 2,
             "max_new_tokens": 3, "bootstrap": 100}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep)
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(path), "--method", "mva"])
    assert first.exit_code == 0, first.output
    run = tmp_path / "run"
    front = json.loads((run / "front-mva.json").read_text())
    assert sum(p["split"] == "val" for p in front["points"]) == 10
    stored = {(p.split, json.dumps(p.weights, sort_keys=True)): p.created for p in RunStore(run).points()}
    second = runner.invoke(app, ["run", str(path), "--method", "mva"])
    assert second.exit_code == 0, second.output
    assert {(p.split, json.dumps(p.weights, sort_keys=True)): p.created for p in RunStore(run).points()} == stored
    assert json.loads((run / "front-mva.json").read_text())["points"] == front["points"]
