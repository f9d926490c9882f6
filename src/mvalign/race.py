"""Racing: stop evaluating candidates that are clearly dominated after a share of the val prompts (issue 14).

The val prompts (a fixed list, in the split's hashed order) are cut into equal shares of m = max(first, ⌈N/8⌉)
prompts: round j evaluates every surviving candidate on the new prompts [(j − 1)m, jm) only (one stored record per
chunk: split `val[a:b]`), so every candidate of a round has scores on the same prompts 0..n − 1 and comparisons are
paired. Then candidate c is dropped when some other survivor d beats it on every value v with confidence about the
means over ALL N val prompts, the numbers the front is computed from:

    D_i = s_v(d, p_i) − s_v(c, p_i),   t_v = mean(D) / (sd(D)/√n · √(1 − n/N)) > z   for every v

(z = `racing_z`, one-sided, per value, no correction over the many pairs: a higher z keeps more). √(1 − n/N) is the
finite-population correction: the seen n prompts are part of the N that decide, so the unseen N − n prompts' mean
difference is predicted from the seen ones (same sd, exchangeable prompts) and the uncertainty about the N-prompt
mean shrinks to 0 as n → N. Degenerate candidates (flagged records) are dropped at once.

Why this rule (bench/perf/racing_sim.py replays races on stored full evaluations of two 10×10 TruthfulQA grids,
64 val prompts, 100 prompt orders each; bench/results/racing-sim.json): the earlier rule (shares doubling from N/8,
no correction, z = 2) generated 0.877 / 0.861 of the full evaluation's rows and kept 0.979 / 0.981 of its
non-dominated points (mva grid, where z was chosen / dpo-vector grid, held out); equal shares with the correction
and z = 2.5 generated 0.800 / 0.758 and kept 0.988 / 0.986. A successive-halving cut on top (keep only the best
fraction by t_c) generated 0.46 of the rows but kept only 0.71 / 0.81 of the front, so it is not offered. What
limits racing there is the per-prompt spread of the paired score differences (also with near-exact judges: the
built-in setting's pooled candidates save no more): neighbouring grid points differ by less than two paired
standard errors even on all 64 prompts. On the HH helpful/harmless grid (512 val prompts, 27 of 100 points on the
front) the shipped rule generated 0.958 of the rows at recall 1.0: no dominated point there is beaten with t > 2.5
even on all 512 prompts, so only the finite-population correction drops any (bench/README.md, racing).

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
from .front import DroppedPoint, Racing
from .rewards.rate import measure_scores
from .stats import change_vs_base
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


def shares(n: int, first: int, double: bool = False) -> list[int]:
    """Cumulative prompt counts of the rounds: n_1 = max(first, ⌈n/8⌉), then adding n_1 each round (or, `double`,
    doubling: the earlier schedule), ending at n."""
    out = [min(n, max(first, math.ceil(n / 8)))]
    while out[-1] < n:
        out.append(min(n, 2 * out[-1] if double else out[-1] + out[0]))
    return out


def dominance(scores: Sequence[np.ndarray], total: int | None = None) -> np.ndarray:
    """scores[c]: values × prompts (the same n prompts for every c). Per candidate c, how confidently the best other
    candidate beats it on every value: t_c = max_{d ≠ c} min_v mean(D_v) / se(D_v), with D_v = s_v(d) − s_v(c)
    per prompt and se = sd / √n (paired), times √(1 − n/total) when `total` (the prompts whose mean decides) is
    given. A ratio with se = 0 is ±inf by the mean's sign, and 0 when D_v ≡ 0 (identical responses); with fewer
    than 2 prompts every t_c is −inf (nothing is known)."""
    if len(scores) == 0:
        return np.zeros(0)
    s = np.stack([np.asarray(x, dtype=np.float64) for x in scores])  # C × V × n
    c, n = s.shape[0], s.shape[2]
    if n < 2 or c < 2:
        return np.full(c, -np.inf)
    factor = math.sqrt(max(0.0, 1 - n / total)) if total is not None else 1.0
    out = np.empty(c)
    block = max(1, int(2**23 // (c * s.shape[1] * n)))  # candidates per block: ~64 MB of float64 differences
    for lo in range(0, c, block):
        diff = s[None, :, :, :] - s[lo : lo + block, None, :, :]  # [c, d] = s(d) − s(c)
        mean = diff.mean(axis=3)
        se = diff.std(axis=3, ddof=1) / math.sqrt(n) * factor
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.sign(mean) * np.inf)
        t = np.nan_to_num(t, nan=0.0, posinf=np.inf, neginf=-np.inf)  # nan: 0 · inf, D ≡ 0
        worst = t.min(axis=2)  # [c, d]: min over values
        worst[np.arange(worst.shape[0]), np.arange(lo, lo + worst.shape[0])] = -np.inf  # not against itself
        out[lo : lo + block] = worst.max(axis=1)
    return out


def dominated(scores: Sequence[np.ndarray], z: float, total: int | None = None) -> list[bool]:
    """True where another candidate dominates c with paired confidence: t_c > z (`dominance`)."""
    return [bool(x) for x in dominance(scores, total) > z]


def race(candidates: Sequence[Candidate], prompts: Sequence, evaluate: Callable[[list[Candidate], int, int], list[PointRecord]],
         scores: Callable[[PointRecord, int, int], np.ndarray], first: int, z: float, *, double: bool = False,
         finite: bool = True, rule: Callable[..., list[bool]] | None = None) -> RaceResult:
    """Race `candidates` over `prompts`. `evaluate(cands, a, b)`: their records on prompts [a, b) (through the
    store); `scores(record, a, b)`: its values × (b − a) per-prompt scores. `double` (doubling shares) and
    `finite` = False (no finite-population correction) give the earlier rule, for comparison; `rule(scores, z,
    total)` replaces the dropping rule (default `dominated`; the benchmark replays other rules through it)."""
    rule = rule or dominated
    alive = list(range(len(candidates)))
    per_cand: dict[int, list[np.ndarray]] = {i: [] for i in alive}
    result = RaceResult([])
    start, rows = 0, 0
    for end in shares(len(prompts), first, double):
        recs = evaluate([candidates[i] for i in alive], start, end)
        rows += len(alive) * (end - start)
        for i, rec in zip(alive, recs):
            per_cand[i].append(scores(rec, start, end) if not rec.flag else None)
        usable = [i for i in alive if all(s is not None for s in per_cand[i])]
        before = len(alive)
        if end < len(prompts):  # the last round drops nothing: its survivors are the evaluated set
            drop = rule([np.concatenate(per_cand[i], axis=1) for i in usable], z, len(prompts) if finite else None)
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
    return PointRecord(first.method, dict(first.label), split, point_key(key, cand), means, ci, len(prompts),
                       sum(c.seconds_generate for c in chunks), sum(c.seconds_score for c in chunks),
                       dict(first.generation), responses, flag="" if any(r.strip() for r in responses) else
                       "all responses empty", scores={k: [float(x) for x in v] for k, v in values_scores.items()})


def race_val(ev, cands: Sequence[Candidate]) -> RaceResult:
    """Race `cands` on an evaluator's val prompts (`ev`: `mvalign.evaluate.Evaluator`; the rule and z from its
    config's sweep section); the survivors' chunks are joined into their ordinary val records, so evaluating the
    survivors on "val" afterwards reads them from the store."""
    s, ctx, prompts = ev.cfg.sweep, ev.ctx, ev.prompts.val

    def scores(rec, a, b):
        return np.stack([measure_scores(rm, prompts[a:b], rec.responses, ctx.cache, prompts) for rm in ctx.rewards.values()])

    result = race(cands, prompts, ev.points_on, scores, s.racing_first, s.racing_z)
    key = ctx.key(prompts)
    for cand in result.survivors:
        if ev.stored(cand, "val") is None:
            parts = [ev.points_on([cand], *r["prompts"])[0] for r in result.rounds]
            responses = [x for p in parts for x in p.responses]
            full = {n: measure_scores(rm, prompts, responses, ctx.cache) for n, rm in ctx.measures().items()}
            ctx.store.put_point(joined(parts, prompts, key, cand, "val", full, s.bootstrap, s.seed))
    return result


def dropped_points(ev, result: RaceResult, base_scores: dict[str, list[float]]) -> list[DroppedPoint]:
    """What the race saw of each dropped candidate: its mean rewards and per-prompt scores on the val prompts it was
    evaluated on (the first n: its stored chunks, nothing is generated or scored again), and its paired change from
    the base model (`base_scores`: the base's val scores) on those prompts."""
    bounds = [r["prompts"] for r in result.rounds]
    out = []
    for cand, n in result.dropped:
        chunks = [ev.points_on([cand], a, b)[0] for a, b in bounds if b <= n]
        scores = {v: [float(x) for c in chunks for x in c.scores[v]] for v in chunks[0].scores}
        out.append(DroppedPoint(dict(cand.label), n, {v: float(np.mean(s)) for v, s in scores.items()}, scores,
                                [x for c in chunks for x in c.responses],
                                change_vs_base(scores, {v: s[:n] for v, s in base_scores.items()}, n_boot=1000, seed=0)
                                if set(base_scores) == set(scores) else {}))
    return out


def racing_record(cfg_sweep, result: RaceResult, dropped: list[DroppedPoint]) -> Racing:
    """The front's account of a race."""
    return Racing(result.rounds[0]["evaluated"], len(result.survivors), result.rounds, result.token_fraction,
                  cfg_sweep.racing_first, cfg_sweep.racing_z,
                  "equal shares; paired t over all val prompts (finite-population corrected) > z", dropped)
