"""Hypervolume differences between fronts, paired over prompts (every method of a run is scored on the same prompts).

Hypervolume difference between methods of one run (`hv_bootstrap`), per replicate b = 1..B:
  1. resample the val prompt indices and the test prompt indices (once each, shared by every method and the base;
     a value measured on its own items, e.g. TruthfulQA questions under `measured_by`, gets its own indices);
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


def _scores(p: FrontPoint, values: Sequence[str]) -> list[np.ndarray] | None:
    """Per value, the point's per-item scores (None when the front predates them)."""
    if not p.scores or any(v not in p.scores for v in values):
        return None
    return [np.asarray(p.scores[v], float) for v in values]


def hv_replicates(front: Front, reference: Sequence[float], val_idx, test_idx) -> np.ndarray:
    """Test hypervolume of one method's front per replicate, re-selected on val. `val_idx` / `test_idx`: one index
    matrix (replicates × items) shared by every value, or one per value (a value measured on its own items)."""
    values = front.values
    test = {json_key(p.weights): _scores(p, values) for p in front.on("test")}
    val = [(json_key(p.weights), _scores(p, values)) for p in front.on("val") if json_key(p.weights) in test]
    if not val or any(s is None for _, s in val) or any(s is None for s in test.values()):
        raise ValueError("the front has no per-prompt scores (made before mvalign stored them): re-run `mvalign run`")
    per_value = [np.stack([s[j] for _, s in val]) for j in range(len(values))]  # values × (candidates × items)
    test_per_value = [np.stack([test[k][j] for k, _ in val]) for j in range(len(values))]
    vi_all = val_idx if isinstance(val_idx, list) else [val_idx] * len(values)
    ti_all = test_idx if isinstance(test_idx, list) else [test_idx] * len(values)
    out = np.empty(len(vi_all[0]))
    for b in range(len(out)):
        val_m = np.stack([s[:, i[b]].mean(axis=1) for s, i in zip(per_value, vi_all)], axis=1)
        mask = non_dominated(val_m)
        test_m = np.stack([s[mask][:, i[b]].mean(axis=1) for s, i in zip(test_per_value, ti_all)], axis=1)
        out[b] = hypervolume(test_m, reference)
    return out


def hv_bootstrap(fronts: Mapping[str, Front], reference: Sequence[float], n_boot: int = 1000,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Per method: B test-hypervolume replicates, every method resampled with the same prompt indices. The values
    share one index draw per split; a value measured on its own items (another count, `Front.measured_by`) is
    resampled on its own, since its items are not the prompts."""
    counts = {f.item_counts() for f in fronts.values()}
    if len(counts) != 1:
        raise ValueError(f"the methods were evaluated on different numbers of prompts {sorted(counts)}: not paired")
    (per_value,) = counts
    rng = np.random.default_rng(seed)
    (n_val, n_test) = per_value[0]
    shared = rng.integers(0, n_val, (n_boot, n_val)), rng.integers(0, n_test, (n_boot, n_test))
    own = [shared if c == per_value[0] else (rng.integers(0, c[0], (n_boot, c[0])), rng.integers(0, c[1], (n_boot, c[1])))
           for c in per_value]
    val_idx, test_idx = [o[0] for o in own], [o[1] for o in own]
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
