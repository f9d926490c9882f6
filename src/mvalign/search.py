"""Budget-adaptive search for the extrapolation front: B evaluated weight vectors instead of a dense grid.

The extrapolation box is ω ∈ [lo, hi]ⁿ (lo, hi = the smallest and largest value of `sweep.grid`). Evaluating a
point costs a full generate + score pass, so the search spends its budget where the front can still grow:

1. Seed with the coarse grid {lo, (lo + hi)/2, hi}ⁿ without ω = 0 (8 points for two values): the corners, where
   extrapolated fronts tend to end, and the centre.
2. Refine one point at a time until B points are evaluated. Let F be the non-dominated evaluated points
   (maximising every value's mean reward). Proposals are ω-midpoints of pairs of front points that are neighbours
   on the front: consecutive when F is sorted by the first value's reward (for n > 2 values: each front point
   with its nearest front point in reward space). A proposal's score is the volume Π_k |y_a,k − y_b,k| of the box
   its two parents span in reward space: for two values it is the largest hypervolume a new point between
   them can add, so the biggest holes in the front are filled first.
3. When every such midpoint is taken (or the front is a single point), fall back to midpoints between a front
   point and its nearest evaluated neighbour in ω (largest ω-distance first): refinement around the front.
   Each proposal is snapped to a lattice of step (hi − lo)/2^depth, so repeated midpoints stay distinct and
   finite.

The search is deterministic given the rewards, and every evaluation goes through `evaluate` (in mvalign: the
sweep engine with its SQLite store), so a killed search re-run replays the same proposals from stored points and
continues where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .pareto import non_dominated

Evaluate = Callable[[list[dict[str, float]]], list[Mapping[str, float]]]
"""Evaluates weight vectors ω and returns each one's mean reward per value (same order)."""


def _key(w: Mapping[str, float]) -> tuple:
    return tuple(round(float(x), 9) for x in w.values())


def seed_points(values: Sequence[str], lo: float, hi: float) -> list[dict[str, float]]:
    mid = (lo + hi) / 2
    pts = [dict(zip(values, combo)) for combo in itertools.product((lo, mid, hi), repeat=len(values))]
    return [p for p in pts if any(abs(x) > 1e-12 for x in p.values())]


def _front_pairs(rewards: np.ndarray, front: np.ndarray) -> list[tuple[int, int]]:
    idx = np.flatnonzero(front)
    if len(idx) < 2:
        return []
    if rewards.shape[1] == 2:
        order = idx[np.argsort(rewards[idx, 0], kind="stable")]
        return list(zip(order[:-1], order[1:]))
    pairs = set()
    for i in idx:
        others = [j for j in idx if j != i]
        j = min(others, key=lambda j: float(np.linalg.norm(rewards[i] - rewards[j])))
        pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def propose(weights: Sequence[Mapping[str, float]], rewards: np.ndarray, values: Sequence[str], lo: float, hi: float,
            max_depth: int = 8) -> dict[str, float] | None:
    """The next ω to evaluate given everything evaluated so far (None when nothing new is left to propose)."""
    W = np.array([[w[v] for v in values] for w in weights], float)
    seen = {_key(dict(zip(values, row))) for row in W}
    front = non_dominated(rewards)

    def snap(x: np.ndarray) -> dict[str, float] | None:
        for depth in range(1, max_depth + 1):
            step = (hi - lo) / 2**depth
            cand = dict(zip(values, (lo + np.round((x - lo) / step) * step).tolist()))
            if _key(cand) not in seen and any(abs(c) > 1e-12 for c in cand.values()):
                return cand
        return None

    scored = [(float(np.prod(np.abs(rewards[a] - rewards[b]))), a, b) for a, b in _front_pairs(rewards, front)]
    for _, a, b in sorted(scored, key=lambda t: -t[0]):
        cand = snap((W[a] + W[b]) / 2)
        if cand is not None:
            return cand
    fallback = []
    for i in np.flatnonzero(front):
        dist = np.linalg.norm(W - W[i], axis=1)
        dist[i] = np.inf
        for j in np.argsort(dist)[: 2 * len(values)]:
            fallback.append((float(dist[j]), int(i), int(j)))
    for _, i, j in sorted(fallback, key=lambda t: -t[0]):
        cand = snap((W[i] + W[j]) / 2)
        if cand is not None:
            return cand
    return None


def adaptive_search(evaluate: Evaluate, values: Sequence[str], budget: int, lo: float, hi: float,
                    on_point: Callable[[int], None] | None = None) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Spend `budget` evaluations (the seed grid first); returns [(ω, mean reward per value)] in evaluation order.

    `on_point(k)` is called after the k-th evaluation (progress)."""
    if hi <= lo:
        raise ValueError(f"adaptive search needs a box with lo < hi, got [{lo}, {hi}] (set sweep.grid)")
    seeds = seed_points(values, lo, hi)[:budget]
    done: list[tuple[dict[str, float], dict[str, float]]] = []
    for w, r in zip(seeds, evaluate(seeds)):
        done.append((w, dict(r)))
    if on_point:
        on_point(len(done))
    while len(done) < budget:
        rewards = np.array([[r[v] for v in values] for _, r in done], float)
        cand = propose([w for w, _ in done], rewards, values, lo, hi)
        if cand is None:
            break
        done.append((cand, dict(evaluate([cand])[0])))
        if on_point:
            on_point(len(done))
    return done
