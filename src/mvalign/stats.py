"""Paired statistics: every method of a run, and the base model, are scored on the SAME prompts, so differences are
estimated prompt by prompt.

Paired difference of two points a, b on n shared prompts (per value): d_i = s_a(i) − s_b(i), estimate mean(d),
95% percentile bootstrap interval from B resamples of the prompt indices (the same indices for a and b). When the
two points' scores are positively correlated across prompts (prompt difficulty is shared), Var(mean d) =
(σ_a² + σ_b² − 2 cov)/n is smaller than the unpaired σ_a²/n + σ_b²/n: that is why the paired interval is tighter.

Hypervolume difference between methods of one run (`hv_bootstrap`), per replicate b = 1..B:
  1. resample the val prompt indices and the test prompt indices (once each, shared by every method and the base);
  2. for each method, recompute every candidate's val means on the resampled val prompts and re-select the
     non-dominated ones among the candidates that have test scores (the original selection: only they were scored
     on test; selection noise among candidates outside it is not captured, so intervals are slightly optimistic
     about selection and exact about test noise);
  3. recompute the selected points' test means on the resampled test prompts and the test hypervolume with ONE
     reference point for the run (fixed, from the full data: the per-value minimum over the base and every method's
     test points), then every method-pair's difference.
The interval of a difference is the percentile interval of its B replicates. Across seeds (runs with the same
values): each seed is bootstrapped on its own prompts; the pooled estimate is the mean over seeds of the per-seed
differences and its replicate b the mean of the seeds' replicates b (independent resampling within seeds).

Power: with bootstrap standard error se of a difference, a two-sided 5% test has 80% power against a true
difference of (z_0.975 + z_0.80)·se ≈ 2.80·se: the smallest difference the settings can detect, printed beside each
verdict ("held" when the interval excludes 0 in favour of the first, "reversed" when against, else "not shown").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .pareto import hypervolume, non_dominated

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


def _scores(p: Mapping, values: Sequence[str]) -> np.ndarray | None:
    """values × prompts matrix of a front point's per-prompt scores (None when the front predates them)."""
    s = p.get("scores")
    if not s or any(v not in s for v in values):
        return None
    return np.asarray([s[v] for v in values], float)


def hv_replicates(front: Mapping, reference: Sequence[float], val_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
    """Test hypervolume of one method's front per replicate (rows of the index matrices), re-selected on val."""
    values = front["values"]
    test = {json_key(p["weights"]): _scores(p, values) for p in front["points"] if p["split"] == "test" and not p.get("flag")}
    val = [(json_key(p["weights"]), _scores(p, values)) for p in front["points"]
           if p["split"] == "val" and not p.get("flag") and json_key(p["weights"]) in test]
    if not val or any(s is None for _, s in val) or any(s is None for s in test.values()):
        raise ValueError("the front has no per-prompt scores (made before mvalign stored them): re-run `mvalign run`")
    val_s = np.stack([s for _, s in val])  # candidates × values × prompts
    test_s = np.stack([test[k] for k, _ in val])
    out = np.empty(len(val_idx))
    for b, (vi, ti) in enumerate(zip(val_idx, test_idx)):
        mask = non_dominated(val_s[:, :, vi].mean(axis=2))
        out[b] = hypervolume(test_s[mask][:, :, ti].mean(axis=2), reference)
    return out


def json_key(weights: Mapping[str, float]) -> str:
    return ",".join(f"{k}={float(v)!r}" for k, v in sorted(weights.items()))


def prompt_counts(front: Mapping) -> tuple[int, int]:
    """(val prompts, test prompts) of a front, from its base model's per-prompt scores."""
    base = front["base"]
    v = front["values"][0]
    return len(base["scores_val"][v]), len(base["scores"][v])


def hv_bootstrap(fronts: Mapping[str, Mapping], reference: Sequence[float], n_boot: int = 1000,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Per method: B test-hypervolume replicates, every method resampled with the same prompt indices."""
    counts = {prompt_counts(f) for f in fronts.values()}
    if len(counts) != 1:
        raise ValueError(f"the methods were evaluated on different numbers of prompts {sorted(counts)}: not paired")
    (n_val, n_test), = counts
    rng = np.random.default_rng(seed)
    val_idx, test_idx = rng.integers(0, n_val, (n_boot, n_val)), rng.integers(0, n_test, (n_boot, n_test))
    return {m: hv_replicates(f, reference, val_idx, test_idx) for m, f in fronts.items()}


def difference_from_replicates(estimate: float, reps: np.ndarray) -> dict:
    se = float(np.std(reps, ddof=1))
    return {"mean": float(estimate), "ci95": percentile_interval(reps), "se": se, "detectable": DETECTABLE * se}


def hv_differences(fronts: Mapping[str, Mapping], reference: Sequence[float], n_boot: int = 1000,
                   seed: int = 0) -> dict[tuple[str, str], dict]:
    """{(a, b): HV_test(a) − HV_test(b) with its paired bootstrap interval, verdict and detectable difference}."""
    reps = hv_bootstrap(fronts, reference, n_boot, seed)
    point = {m: front_hv(f, reference) for m, f in fronts.items()}
    out = {}
    names = list(fronts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = difference_from_replicates(point[a] - point[b], reps[a] - reps[b])
            out[a, b] = {**d, "verdict": verdict(d)}
    return out


def pooled_differences(per_seed: Sequence[Mapping[str, Mapping]], reference: Sequence[float], n_boot: int = 1000,
                       seed: int = 0) -> dict[tuple[str, str], dict]:
    """HV differences pooled over seeds (runs): mean of per-seed differences, replicates averaged over seeds."""
    names = [m for m in per_seed[0] if all(m in fronts for fronts in per_seed)]
    reps = [hv_bootstrap({m: fronts[m] for m in names}, reference, n_boot, seed + k) for k, fronts in enumerate(per_seed)]
    points = [{m: front_hv(fronts[m], reference) for m in names} for fronts in per_seed]
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            est = float(np.mean([p[a] - p[b] for p in points]))
            d = difference_from_replicates(est, np.mean([r[a] - r[b] for r in reps], axis=0))
            out[a, b] = {**d, "verdict": verdict(d), "seeds": len(per_seed),
                         "per_seed": [p[a] - p[b] for p in points]}
    return out


def front_hv(front: Mapping, reference: Sequence[float]) -> float:
    """A front's test hypervolume recomputed with `reference` (the run's shared one)."""
    values = front["values"]
    pts = [[p["rewards"][v] for v in values] for p in front["points"] if p["split"] == "test" and not p.get("flag")]
    if not pts:
        return 0.0
    m = np.asarray(pts, float)
    return hypervolume(m[non_dominated(m)], reference)


def shared_reference(fronts: Sequence[Mapping]) -> list[float]:
    """ONE reference point for a set of fronts of the same values: the per-value minimum over every base (test) and
    every usable (not flagged) test point."""
    values = fronts[0]["values"]
    rows = [[f["base"]["rewards"][v] for v in values] for f in fronts]
    rows += [[p["rewards"][v] for v in values] for f in fronts for p in f["points"] if p["split"] == "test"
             and not p.get("flag")]
    return np.asarray(rows, float).min(axis=0).tolist()
