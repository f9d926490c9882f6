"""Pareto filtering and hypervolume (moocore), all objectives maximised (mean reward per value).

Non-dominated: a point p is dominated when some q has q_k ≥ p_k for every value k and q_k > p_k for at least one.
Hypervolume of a set S with reference point r: the Lebesgue measure of ∪_{p ∈ S} [r, p] (points not strictly
better than r in every value contribute only their part above r). Default r: the per-value minimum over the base
model and all candidates, which makes every evaluated point count; it is always stored next to the number.
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np


def _matrix(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    m = np.asarray(points, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError(f"need a non-empty (points × values) matrix, got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError("rewards contain NaN or infinite values; check the reward models")
    return m


def non_dominated(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows (maximisation); duplicates of a non-dominated point are all kept."""
    return np.asarray(moocore.is_nondominated(_matrix(points), maximise=True, keep_weakly=True), dtype=bool)


def default_reference_point(*groups: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Per-value minimum over all given points (e.g. the base model and every candidate)."""
    return np.vstack([_matrix(g) for g in groups]).min(axis=0)


def hypervolume(points: Sequence[Sequence[float]] | np.ndarray, reference: Sequence[float]) -> float:
    """Hypervolume dominated by `points` above `reference` (maximisation)."""
    m = _matrix(points)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (m.shape[1],):
        raise ValueError(f"reference point has {ref.shape} entries, the points have {m.shape[1]} values")
    inside = m[np.all(m > ref, axis=1)]
    return float(moocore.hypervolume(inside, ref=ref, maximise=True)) if len(inside) else 0.0


def bootstrap_ci(scores: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `scores`."""
    x = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
