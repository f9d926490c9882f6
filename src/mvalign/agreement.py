"""Do a value's measures agree on the run's own generations? Rank agreement across points, disputes per point.

A value has one primary measure (its axis of the front, scores keyed by the value's name) and any number of audit
measures (keyed '<value>:<measure>'), all scored on the same evaluated points.

Rank agreement, per value and audit: Spearman's ρ between the primary's and the audit's point means over the
usable val points and the base model, with a percentile bootstrap interval (B replicates: the prompts are resampled
— jointly for measures scored on the same prompts, separately for one with its own item set, e.g. TruthfulQA
questions — and ρ recomputed). ρ is undefined (None) when either measure is constant over the points.

Disputed: a point is disputed for value v when the primary's paired change from the base model is positive with
confidence (95% interval above 0) while some audit of v changes negatively with confidence (interval below 0), or
the other way round: the instruments disagree about the direction of the trade-off, so the point's change in v is
not reported as a gain (`pick` does not let it satisfy a constraint on v unless told to).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

N_BOOT = 1000


def audits_of(value: str, names) -> list[str]:
    """The audit keys of `value` among `names` ('<value>:<measure>')."""
    return [k for k in names if k.startswith(f"{value}:")]


def disputed(vs_base: Mapping[str, dict], values: Sequence[str]) -> list[str]:
    """The values where the primary and an audit of the same value changed from base in opposite directions, each
    with confidence (see the module docstring)."""
    out = []
    for v in values:
        primary = _sign(vs_base[v]["ci95"]) if v in vs_base else 0
        if primary and any(_sign(vs_base[k]["ci95"]) == -primary for k in audits_of(v, vs_base)):
            out.append(v)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def rank_agreement(scores: Sequence[Mapping[str, Sequence[float]]], values: Sequence[str], n_boot: int = N_BOOT,
                   seed: int = 0) -> dict[str, dict[str, dict]]:
    """{value: {audit key: {"spearman", "ci95", "points"}}} over points given by their per-prompt `scores` (every
    point scored by the same measures on the same items)."""
    out: dict[str, dict[str, dict]] = {}
    if not scores:
        return out
    rng = np.random.default_rng(seed)
    for v in values:
        rows = {}
        for key in audits_of(v, scores[0]):
            have = [s for s in scores if v in s and key in s]
            p, a = (np.asarray([s[k] for s in have], float) for k in (v, key))
            rho = _spearman(p.mean(1), a.mean(1))
            reps = []
            if rho is not None:
                joint = p.shape[1] == a.shape[1]
                for _ in range(n_boot):
                    i = rng.integers(0, p.shape[1], p.shape[1])
                    j = i if joint else rng.integers(0, a.shape[1], a.shape[1])
                    r = _spearman(p[:, i].mean(1), a[:, j].mean(1))
                    if r is not None:
                        reps.append(r)
            ci = np.percentile(reps, [2.5, 97.5]).tolist() if len(reps) >= n_boot // 2 else None
            rows[key] = {"spearman": rho, "ci95": ci, "points": len(have)}
        if rows:
            out[v] = rows
    return out


def dispute_counts(vs_bases: Sequence[Mapping[str, dict]], values: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per value and audit: over points, how often the two measures' paired changes from base have the same sign
    with confidence (both intervals exclude 0 on one side), opposite signs with confidence, or either is unsure."""
    out: dict[str, dict[str, int]] = {}
    for v in values:
        for vb in vs_bases:
            if v not in vb:
                continue
            for key in audits_of(v, vb):
                c = out.setdefault(v, {}).setdefault(key, {"same": 0, "opposite": 0, "unsure": 0})
                sp, sa = (_sign(vb[k]["ci95"]) for k in (v, key))
                c["unsure" if not sp or not sa else "same" if sp == sa else "opposite"] += 1
    return out


def _sign(ci: Sequence[float]) -> int:
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0
