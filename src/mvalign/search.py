"""Budget-adaptive search for the extrapolation front: B of the grid's weight vectors instead of all of them.

The candidates are the lattice `sweep.grid`ⁿ (reference: {0.1, ..., 1.0}², 100 points). Evaluating a point costs a
full generate + score pass, so the search spends its budget B where the front can still grow:

1. Seed with the coarse sub-grid {first, middle, last grid value}ⁿ without ω = 0 (9 points for two values): the
   corners, where extrapolated fronts tend to end, and the centre.
2. Refine one point at a time until B points are evaluated. Let F be the non-dominated evaluated points
   (maximising every value's mean reward). Neighbouring front points are paired: consecutive when F is sorted by
   the first value's reward (for n > 2 values: each front point with its nearest front point in reward space).
   A pair's score is the volume Π_k |y_a,k − y_b,k| of the box the two span in reward space: for two values the
   largest hypervolume a new point between them can add. The best-scoring pair with an unevaluated candidate
   proposes the lattice midpoint of its two ω (in grid-index space), else the unevaluated lattice neighbour
   (±1 index per value) of the midpoint or of either parent nearest to the midpoint.
3. When no pair has a candidate left, take an unevaluated lattice neighbour of a front point; then the lattice
   point farthest from everything evaluated (space filling).

Staying on the grid keeps the result comparable point for point with the dense sweep, and never spends budget on
differences finer than the grid (below the reward noise of a few dozen prompts). The search is deterministic
given the rewards, and every evaluation goes through `evaluate` (in mvalign: the sweep engine with its SQLite
store), so a killed search re-run replays the same proposals from stored points and continues where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .pareto import non_dominated

Evaluate = Callable[[list[dict[str, float]]], list[Mapping[str, float]]]
"""Evaluates weight vectors ω and returns each one's mean reward per value (same order)."""
Index = tuple[int, ...]


def seed_indices(n_values: int, m: int) -> list[Index]:
    return list(itertools.product(sorted({0, (m - 1) // 2, m - 1}), repeat=n_values))


def _neighbours(idx: Index, m: int) -> list[Index]:
    out = {tuple(min(m - 1, max(0, c + d)) for c, d in zip(idx, delta))
           for delta in itertools.product((-1, 0, 1), repeat=len(idx))}
    return sorted(out - {idx})


def _front_pairs(keys: list[Index], rewards: np.ndarray) -> list[tuple[float, Index, Index]]:
    front = np.flatnonzero(non_dominated(rewards))
    if len(front) < 2:
        return []
    if rewards.shape[1] == 2:
        order = front[np.argsort(rewards[front, 0], kind="stable")]
        pairs = list(zip(order[:-1], order[1:]))
    else:
        def nearest(i):
            return int(min((j for j in front if j != i), key=lambda j: float(np.linalg.norm(rewards[i] - rewards[j]))))
        pairs = sorted({tuple(sorted((int(i), nearest(i)))) for i in front})
    scored = [(float(np.prod(np.abs(rewards[a] - rewards[b]))), keys[a], keys[b]) for a, b in pairs]
    return sorted(scored, key=lambda t: -t[0])


def propose(evaluated: Mapping[Index, Sequence[float]], m: int, excluded: set[Index] = frozenset()) -> Index | None:
    """Next lattice index to evaluate (None when the lattice is exhausted). `evaluated`: index -> rewards."""
    keys = list(evaluated)
    rewards = np.array([evaluated[k] for k in keys], float)

    def free(cands):
        return [c for c in cands if c not in evaluated and c not in excluded]

    def dist2(a, b):
        return sum((x - y) ** 2 for x, y in zip(a, b))

    for _, a, b in _front_pairs(keys, rewards):
        mid = tuple(int(round((x + y) / 2)) for x, y in zip(a, b))
        cands = free([mid] + sorted({c for base in (mid, a, b) for c in _neighbours(base, m)}, key=lambda c: dist2(c, mid)))
        if cands:
            return cands[0]
    front = [keys[i] for i in np.flatnonzero(non_dominated(rewards))]
    cands = free([c for f in front for c in _neighbours(f, m)])
    if cands:
        return cands[0]
    cands = free(itertools.product(range(m), repeat=len(keys[0])))
    return max(cands, key=lambda c: min(dist2(c, k) for k in keys)) if cands else None


def adaptive_search(evaluate: Evaluate, values: Sequence[str], budget: int, grid: Sequence[float],
                    on_point: Callable[[int], None] | None = None) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Evaluate `budget` weight vectors from the lattice gridⁿ (the seed sub-grid first); returns [(ω, mean reward
    per value)] in evaluation order. ω = 0 (the base model) is never a candidate. `on_point(k)`: progress."""
    axis = sorted({float(g) for g in grid})
    if len(axis) < 2:
        raise ValueError(f"adaptive search needs a grid of at least two values per weight, got {list(grid)}")
    m = len(axis)
    zero = {tuple(i for _ in values) for i, g in enumerate(axis) if abs(g) < 1e-12}

    def omega(idx: Index) -> dict[str, float]:
        return {v: axis[i] for v, i in zip(values, idx)}

    evaluated: dict[Index, list[float]] = {}

    def run(indices: list[Index]) -> None:
        for idx, r in zip(indices, evaluate([omega(i) for i in indices])):
            evaluated[idx] = [float(r[v]) for v in values]
        if on_point:
            on_point(len(evaluated))

    run([i for i in seed_indices(len(values), m) if i not in zero][:budget])
    while len(evaluated) < budget:
        nxt = propose(evaluated, m, zero)
        if nxt is None:
            break
        run([nxt])
    return [(omega(i), dict(zip(values, r))) for i, r in evaluated.items()]
