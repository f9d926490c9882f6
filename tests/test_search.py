"""Adaptive front search: budget, box, determinism, quality against the dense grid, and resumable use in a sweep."""

import json
import math

import pytest
from typer.testing import CliRunner

from common import hypervolume_2d, write_builtin_config
from mvalign.cli import app
from mvalign.search import adaptive_search, seed_indices
from mvalign.store import RunStore

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


GRID = [round(0.1 * i, 1) for i in range(1, 11)]
# fraction of the dense 10×10 grid's hypervolume reached with 25 points (measured; the design goal is 0.98)
REACHED = {"curved": 0.99, "linear": 0.99, "peaked": 0.97, "shrinking": 0.99}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_25_grid_points_reach_most_of_the_dense_grid_hypervolume(name):
    f = FUNCTIONS[name]
    calls = []
    found = adaptive_search(_evaluator(f, calls), ["a", "b"], 25, GRID)
    dense = [f(x, y) for x in GRID for y in GRID]
    adaptive = [(r["a"], r["b"]) for _, r in found]
    ref = [min(p[i] for p in dense) for i in (0, 1)]
    assert hypervolume_2d(adaptive, ref) >= REACHED[name] * hypervolume_2d(dense, ref)
    uniform = [f(x, y) for x in GRID[1::2] for y in GRID[1::2]]  # the naive 25-point grid
    assert hypervolume_2d(adaptive, ref) >= hypervolume_2d(uniform, ref) - 1e-12
    assert len(found) == len(calls) == 25
    ws = [tuple(w.values()) for w, _ in found]
    assert len(set(ws)) == 25 and all(x in GRID for w in ws for x in w)
    assert [tuple(GRID[i] for i in idx) for idx in seed_indices(2, 10)] == ws[:9]
    again = adaptive_search(_evaluator(f, []), ["a", "b"], 25, GRID)
    assert [w for w, _ in again] == [w for w, _ in found]  # deterministic: a re-run replays the same proposals


def test_whole_lattice_is_exhausted_without_repeats():
    found = adaptive_search(_evaluator(FUNCTIONS["peaked"], []), ["a", "b"], 50, [0.0, 0.5, 1.0, 1.5])
    assert len(found) == 15 and {tuple(w.values()) for w, _ in found} == {
        (a, b) for a in (0.0, 0.5, 1.0, 1.5) for b in (0.0, 0.5, 1.0, 1.5)} - {(0.0, 0.0)}


def test_budget_smaller_than_seed_grid_and_bad_grid():
    found = adaptive_search(_evaluator(FUNCTIONS["linear"], []), ["a", "b"], 3, [0.0, 0.5, 1.0])
    assert len(found) == 3 and all(any(w.values()) for w, _ in found)  # ω = 0 is the base, never a candidate
    with pytest.raises(ValueError, match="at least two"):
        adaptive_search(_evaluator(FUNCTIONS["linear"], []), ["a", "b"], 5, [1.0])


def test_adaptive_sweep_in_a_run_is_resumable(tmp_path, tiny_model_dir):
    sweep = {"strategy": "adaptive", "budget": 10, "grid": [0.0, 0.5, 1.0, 1.5], "val_prompts": 3, "test_prompts": 2,
             "max_new_tokens": 3, "bootstrap": 100}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep)
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(path), "--method", "mva"])
    assert first.exit_code == 0, first.output
    run = tmp_path / "run"
    front = json.loads((run / "front-mva.json").read_text())
    assert sum(p["split"] == "val" for p in front["points"]) == 10
    stored = {(p.split, json.dumps(p.label, sort_keys=True)): p.created for p in RunStore(run).points()}
    second = runner.invoke(app, ["run", str(path), "--method", "mva"])
    assert second.exit_code == 0, second.output
    assert {(p.split, json.dumps(p.label, sort_keys=True)): p.created for p in RunStore(run).points()} == stored
    assert json.loads((run / "front-mva.json").read_text())["points"] == front["points"]


def test_three_values_use_nearest_front_neighbours():
    def evaluate(ws):
        return [{"a": w["a"] - 0.3 * w["b"] * w["c"], "b": w["b"] - 0.3 * w["a"] * w["c"], "c": w["c"] - 0.3 * w["a"] * w["b"]}
                for w in ws]
    found = adaptive_search(evaluate, ["a", "b", "c"], 20, [0.0, 0.25, 0.5, 0.75, 1.0])
    ws = [tuple(w.values()) for w, _ in found]
    assert len(ws) == len(set(ws)) == 20 and (0.0, 0.0, 0.0) not in ws
