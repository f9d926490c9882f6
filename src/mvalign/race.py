"""Racing: stop evaluating candidates that are clearly dominated after a share of the val prompts (issue 14).

Successive halving for a Pareto front. The val prompts (a fixed list) are cut into growing shares
n_1 = max(first, ⌈N / 8⌉), n_{j+1} = min(2 n_j, N), ..., N. Round j evaluates every surviving candidate on the new
prompts [n_{j−1}, n_j) only (one stored record per chunk: split `val[a:b]`), so every candidate of a round has scores
on the same prompts 0..n_j − 1 and comparisons are paired. Then candidate c is dropped when some other survivor d
dominates it with paired confidence: for every value v, the paired differences D_i = s_v(d, p_i) − s_v(c, p_i) over
those prompts have lower bound mean(D) − z · sd(D)/√n > 0 (z = `racing_z`, one-sided, per value, no correction over
the many pairs: a higher z keeps more). Degenerate candidates (flagged records) are dropped at once.

After the last round the survivors have been generated on every val prompt; their chunks are joined into the
ordinary `val` record (responses in prompt order, mean and bootstrap interval over all N prompts, the same settings
key as a direct evaluation), so the front, its selection and everything after are computed exactly as without
racing, only from fewer candidates. A killed race resumes through the store: finished chunks are not redone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .candidates import Candidate
from .store import PointRecord
from .sweep import point_key, point_stats


@dataclass
class RaceResult:
    survivors: list[Candidate]
    rounds: list[dict] = field(default_factory=list)
    """Per round: prompts [start, end), candidates evaluated, candidates left."""
    token_fraction: float = 1.0
    """Generated (candidate, prompt) rows / those of evaluating every candidate on every val prompt."""
    dropped: list[tuple[Candidate, int]] = field(default_factory=list)
    """Candidates dropped by the race, each with the number of val prompts (0..n − 1) it was evaluated on."""


def shares(n: int, first: int) -> list[int]:
    """Cumulative prompt counts of the rounds: max(first, ⌈n/8⌉), doubling, ending at n."""
    out = [min(n, max(first, math.ceil(n / 8)))]
    while out[-1] < n:
        out.append(min(n, 2 * out[-1]))
    return out


def dominated(scores: Sequence[np.ndarray], z: float) -> list[bool]:
    """scores[c]: values × prompts. True where another candidate dominates c with paired confidence (see module)."""
    out = [False] * len(scores)
    for c, sc in enumerate(scores):
        for d, sd in enumerate(scores):
            if d == c:
                continue
            diff = sd - sc  # values × prompts
            n = diff.shape[1]
            spread = diff.std(axis=1, ddof=1) / math.sqrt(n) if n > 1 else np.full(diff.shape[0], np.inf)
            if np.all(diff.mean(axis=1) - z * spread > 0):
                out[c] = True
                break
    return out


def race(candidates: Sequence[Candidate], prompts: Sequence, evaluate: Callable[[list[Candidate], int, int], list[PointRecord]],
         scores: Callable[[PointRecord, int, int], np.ndarray], first: int, z: float) -> RaceResult:
    """Race `candidates` over `prompts`. `evaluate(cands, a, b)`: their records on prompts [a, b) (through the
    store); `scores(record, a, b)`: its values × (b − a) per-prompt scores."""
    alive = list(range(len(candidates)))
    per_cand: dict[int, list[np.ndarray]] = {i: [] for i in alive}
    result = RaceResult([])
    start, rows = 0, 0
    for end in shares(len(prompts), first):
        recs = evaluate([candidates[i] for i in alive], start, end)
        rows += len(alive) * (end - start)
        for i, rec in zip(alive, recs):
            per_cand[i].append(scores(rec, start, end) if not rec.flag else None)
        usable = [i for i in alive if all(s is not None for s in per_cand[i])]
        before = len(alive)
        if end < len(prompts):  # the last round drops nothing: its survivors are the evaluated set
            drop = dominated([np.concatenate(per_cand[i], axis=1) for i in usable], z)
            result.dropped += [(candidates[i], end) for i, gone in zip(usable, drop) if gone]
            alive = [i for i, gone in zip(usable, drop) if not gone]
        else:
            alive = usable
        result.rounds.append({"prompts": [start, end], "evaluated": before, "left": len(alive)})
        start = end
    result.survivors = [candidates[i] for i in alive]
    result.token_fraction = rows / (len(candidates) * len(prompts)) if candidates and prompts else 1.0
    return result


def joined(chunks: Sequence[PointRecord], prompts: Sequence, key: str, cand: Candidate, split: str,
           values_scores: dict[str, np.ndarray], bootstrap: int, seed: int) -> PointRecord:
    """The ordinary record of a candidate evaluated chunk by chunk: what evaluating it on all `prompts` at once
    stores (responses in order, means and bootstrap intervals over every prompt, the full settings key)."""
    first = chunks[0]
    means, ci = point_stats(values_scores, bootstrap, seed)
    responses = [r for c in chunks for r in c.responses]
    return PointRecord(first.method, dict(first.weights), split, point_key(key, cand), means, ci, len(prompts),
                       sum(c.seconds_generate for c in chunks), sum(c.seconds_score for c in chunks),
                       dict(first.generation), responses, flag="" if any(r.strip() for r in responses) else
                       "all responses empty", scores={k: [float(x) for x in v] for k, v in values_scores.items()})

