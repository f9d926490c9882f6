"""Paired statistics: every method of a run, and the base model, are scored on the SAME prompts, so differences are
estimated prompt by prompt (differences between whole fronts' hypervolumes: `mvalign.hvstats`).

Paired difference of two points a, b on n shared prompts (per value): d_i = s_a(i) − s_b(i), estimate mean(d),
95% percentile bootstrap interval from B resamples of the prompt indices (the same indices for a and b). When the
two points' scores are positively correlated across prompts (prompt difficulty is shared), Var(mean d) =
(σ_a² + σ_b² − 2 cov)/n is smaller than the unpaired σ_a²/n + σ_b²/n: that is why the paired interval is tighter.

Power: with bootstrap standard error se of a difference, a two-sided 5% test has 80% power against a true
difference of (z_0.975 + z_0.80)·se ≈ 2.80·se: the smallest difference the settings can detect, printed beside each
verdict ("held" when the interval excludes 0 in favour of the first, "reversed" when against, else "not shown").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

DETECTABLE = 1.959964 + 0.841621
"""(z_0.975 + z_0.80): multiplies a standard error into the smallest difference detectable with 80% power."""


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """mean(a − b) over shared prompts with its paired bootstrap 95% interval and detectable difference."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"paired scores need two equally long, non-empty score lists, got {x.shape} and {y.shape}")
    d = x - y
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    reps = d[idx].mean(axis=1)
    return {"mean": float(d.mean()), "ci95": percentile_interval(reps), "se": float(reps.std(ddof=1)),
            "detectable": float(DETECTABLE * reps.std(ddof=1)), "n": len(d)}


def unpaired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 1000, seed: int = 0) -> dict:
    """mean(a) − mean(b) resampling the two sides independently (what comparing two marginal intervals assumes)."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    reps = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1) - y[rng.integers(0, len(y), (n_boot, len(y)))].mean(1)
    return {"mean": float(x.mean() - y.mean()), "ci95": percentile_interval(reps), "se": float(reps.std(ddof=1))}


def change_vs_base(point: Mapping[str, Sequence[float]], base: Mapping[str, Sequence[float]], n_boot: int = 1000,
                   seed: int = 0) -> dict[str, dict]:
    """Per value: the point's paired difference from the base model on the same prompts."""
    return {v: paired_difference(point[v], base[v], n_boot, seed) for v in base if v in point}


def verdict(diff: dict) -> str:
    lo, hi = diff["ci95"]
    return "held" if lo > 0 else "reversed" if hi < 0 else "not shown"


def difference_from_replicates(estimate: float, reps: np.ndarray) -> dict:
    se = float(np.std(reps, ddof=1))
    return {"mean": float(estimate), "ci95": percentile_interval(reps), "se": se, "detectable": DETECTABLE * se}


def json_key(weights: Mapping[str, float]) -> str:
    return ",".join(f"{k}={float(v)!r}" for k, v in sorted(weights.items()))
