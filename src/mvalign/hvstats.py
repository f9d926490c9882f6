"""Hypervolume differences between fronts, paired over prompts (every method of a run is scored on the same prompts).

Hypervolume difference between methods of one run (`hv_bootstrap`), per replicate b = 1..B:
  1. resample the val prompt indices and the test prompt indices (once each, shared by every method and the base);
  2. for each method, recompute every candidate's val means on the resampled val prompts and re-select the
     non-dominated ones among the candidates that have test scores (the original selection: only they were scored
     on test; selection noise among candidates outside it is not captured, so intervals are slightly optimistic
     about selection and exact about test noise);
  3. recompute the selected points' test means on the resampled test prompts and the test hypervolume with ONE
     reference point for the run (fixed, from the full data: the per-value minimum over the base and every method's
     test points, `shared_reference`), then every method-pair's difference.
The interval of a difference is the percentile interval of its B replicates; 'detectable' and the verdict as in
`mvalign.stats`. Across seeds (runs with the same values): each seed is bootstrapped on its own prompts; the pooled
estimate is the mean over seeds of the per-seed differences and its replicate b the mean of the seeds' replicates b
(independent resampling within seeds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .front import Front, FrontPoint
from .pareto import hypervolume, non_dominated
from .stats import difference_from_replicates, json_key, verdict


def _scores(p: FrontPoint, values: Sequence[str]) -> np.ndarray | None:
    """values × prompts matrix of a front point's per-prompt scores (None when the front predates them)."""
    if not p.scores or any(v not in p.scores for v in values):
        return None
    return np.asarray([p.scores[v] for v in values], float)


def hv_replicates(front: Front, reference: Sequence[float], val_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
    """Test hypervolume of one method's front per replicate (rows of the index matrices), re-selected on val."""
    values = front.values
    test = {json_key(p.weights): _scores(p, values) for p in front.on("test")}
    val = [(json_key(p.weights), _scores(p, values)) for p in front.on("val") if json_key(p.weights) in test]
    if not val or any(s is None for _, s in val) or any(s is None for s in test.values()):
        raise ValueError("the front has no per-prompt scores (made before mvalign stored them): re-run `mvalign run`")
    val_s = np.stack([s for _, s in val])  # candidates × values × prompts
    test_s = np.stack([test[k] for k, _ in val])
    out = np.empty(len(val_idx))
    for b, (vi, ti) in enumerate(zip(val_idx, test_idx)):
        mask = non_dominated(val_s[:, :, vi].mean(axis=2))
        out[b] = hypervolume(test_s[mask][:, :, ti].mean(axis=2), reference)
    return out


def hv_bootstrap(fronts: Mapping[str, Front], reference: Sequence[float], n_boot: int = 1000,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Per method: B test-hypervolume replicates, every method resampled with the same prompt indices."""
    counts = {f.prompt_counts() for f in fronts.values()}
    if len(counts) != 1:
        raise ValueError(f"the methods were evaluated on different numbers of prompts {sorted(counts)}: not paired")
    (n_val, n_test), = counts
    rng = np.random.default_rng(seed)
    val_idx, test_idx = rng.integers(0, n_val, (n_boot, n_val)), rng.integers(0, n_test, (n_boot, n_test))
    return {m: hv_replicates(f, reference, val_idx, test_idx) for m, f in fronts.items()}


def hv_differences(fronts: Mapping[str, Front], reference: Sequence[float], n_boot: int = 1000,
                   seed: int = 0) -> dict[tuple[str, str], dict]:
    """{(a, b): HV_test(a) − HV_test(b) with its paired bootstrap interval, verdict and detectable difference}."""
    reps = hv_bootstrap(fronts, reference, n_boot, seed)
    point = {m: f.hv_with(reference) for m, f in fronts.items()}
    out = {}
    names = list(fronts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = difference_from_replicates(point[a] - point[b], reps[a] - reps[b])
            out[a, b] = {**d, "verdict": verdict(d)}
    return out


def pooled_differences(per_seed: Sequence[Mapping[str, Front]], reference: Sequence[float], n_boot: int = 1000,
                       seed: int = 0) -> dict[tuple[str, str], dict]:
    """HV differences pooled over seeds (runs): mean of per-seed differences, replicates averaged over seeds."""
    names = [m for m in per_seed[0] if all(m in fronts for fronts in per_seed)]
    reps = [hv_bootstrap({m: fronts[m] for m in names}, reference, n_boot, seed + k) for k, fronts in enumerate(per_seed)]
    points = [{m: fronts[m].hv_with(reference) for m in names} for fronts in per_seed]
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            est = float(np.mean([p[a] - p[b] for p in points]))
            d = difference_from_replicates(est, np.mean([r[a] - r[b] for r in reps], axis=0))
            out[a, b] = {**d, "verdict": verdict(d), "seeds": len(per_seed),
                         "per_seed": [p[a] - p[b] for p in points]}
    return out


def shared_reference(fronts: Sequence[Front]) -> list[float]:
    """ONE reference point for a set of fronts of the same values: the per-value minimum over every base (test) and
    every usable test point."""
    values = fronts[0].values
    rows = [[f.base.test.rewards[v] for v in values] for f in fronts]
    rows += [list(r) for f in fronts for r in f.matrix("test")]
    return np.asarray(rows, float).min(axis=0).tolist()
