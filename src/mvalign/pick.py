"""Pick a trade-off from value targets (`mvalign pick`), in the spirit of MAP (arXiv:2410.19198): the user states
targets per value, and the answer is a model meeting them, or a clear statement that they are not achievable with
what the run has, with how far each target is missed.

Targets: maximise one value (`maximize`) under constraints `VALUE>=base`, `VALUE>=base+0.2`, `VALUE>=0.5` (also
`<=`), or maximise the scalarisation Σ_k w_k r_k (`weights`).

Selection on val, report on test:
  1. The candidates are the val points of the chosen methods' fronts (front-<method>.json); "base" in a constraint
     is the base model's val mean.
  2. Feasible = every constraint holds on the val means. Among the feasible points the best objective wins. With none
     feasible the answer is infeasible: the point with the smallest total normalised shortfall
     Σ_c max(0, miss_c) / spread_c (spread = the value's range over the candidates) is reported with each miss.
     A point disputed in a value (its primary measure says better than base, an audit says worse, each with
     paired confidence: `mvalign.agreement`) cannot satisfy a constraint on that value unless allow_disputed.
  3. `refine` N (weight-combination methods only): a pattern search from the chosen ω spends up to N new val
     evaluations: the 2n moves ω ± δ e_k (δ = half the smallest step of sweep.grid), taking the best (feasible first,
     then objective) and halving δ when no move improves. Points are stored like every sweep point.
  4. The chosen point and the base are scored on the test prompts; reported with bootstrap 95% intervals, and with
     P(constraints hold): the share of paired bootstrap replicates over test prompts (the point's and the base's
     per-prompt scores resampled with the same indices) in which every constraint holds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .config import ConfigError
from .rundir import RunDir

_CONSTRAINT = re.compile(r"^\s*([\w.-]+)\s*(>=|<=)\s*(base)?\s*(?:([+-]?)\s*(\d+(?:\.\d*)?|\.\d+))?\s*$")


@dataclass(frozen=True)
class Constraint:
    value: str
    op: str  # ">=" or "<="
    relative: bool  # against the base model's mean
    offset: float

    def bound(self, base: dict[str, float]) -> float:
        return (base[self.value] if self.relative else 0.0) + self.offset

    def miss(self, rewards: dict[str, float], base: dict[str, float]) -> float:
        """How far the constraint is missed (≤ 0 when it holds)."""
        b = self.bound(base)
        return b - rewards[self.value] if self.op == ">=" else rewards[self.value] - b

    def __str__(self) -> str:
        rhs = ("base" + (f"{self.offset:+g}" if self.offset else "")) if self.relative else f"{self.offset:g}"
        return f"{self.value}{self.op}{rhs}"


def parse_constraint(text: str, values: Sequence[str]) -> Constraint:
    m = _CONSTRAINT.match(text)
    if not m or (m.group(3) is None and m.group(5) is None):
        raise ConfigError(f"--require {text!r}: expected VALUE>=base, VALUE>=base+0.2 or VALUE>=0.5 (or <=)")
    value, op, base, sign, num = m.groups()
    if value not in values:
        raise ConfigError(f"--require {text!r}: {value!r} is not a value of this run; values: {list(values)}")
    offset = float(num) * (-1 if sign == "-" else 1) if num else 0.0
    return Constraint(value, op, base is not None, offset)


@dataclass
class Target:
    maximize: str | None
    weights: dict[str, float] | None
    constraints: list[Constraint]

    def objective(self, r: dict[str, float]) -> float:
        if self.weights is not None:
            return sum(w * r[v] for v, w in self.weights.items())
        return r[self.maximize]

    def rank(self, r: dict[str, float], base: dict[str, float], spread: dict[str, float],
             disputed: Sequence[str] = ()) -> tuple:
        """Sort key (larger is better): feasible first, then the objective; infeasible by smaller shortfall. A
        constraint on a value the point is disputed in (`mvalign.agreement`) counts as missed by one spread."""
        short = sum(1.0 if c.value in disputed else max(0.0, c.miss(r, base)) / spread[c.value]
                    for c in self.constraints)
        return (short == 0.0, -short, self.objective(r))


def make_target(values: Sequence[str], maximize: str | None, require: Sequence[str],
                weights: dict[str, float] | None) -> Target:
    if (maximize is None) == (weights is None):
        raise ConfigError("give exactly one of --maximize VALUE or --weights NAME=W,...")
    if maximize is not None and maximize not in values:
        raise ConfigError(f"--maximize {maximize!r}: not a value of this run; values: {list(values)}")
    unknown = sorted(set(weights or {}) - set(values))
    if unknown:
        raise ConfigError(f"--weights: {unknown} not a value of this run; values: {list(values)}")
    if weights is not None and any(w < 0 for w in weights.values()):
        raise ConfigError(f"--weights {weights}: scalarisation weights must be >= 0")
    return Target(maximize, weights, [parse_constraint(t, values) for t in require])


def spreads(points: Sequence[dict[str, float]], values: Sequence[str]) -> dict[str, float]:
    return {v: (max(p[v] for p in points) - min(p[v] for p in points)) or 1.0 for v in values}


def refine(ev, target: Target, start: dict[str, float], base_val: dict[str, float], budget: int, grid: Sequence[float],
           known: list[tuple[dict[str, float], dict[str, float]]]) -> tuple[dict[str, float], dict[str, float], int]:
    """Pattern search over ω from `start` (see the module docstring); returns (ω, its val rewards, evaluations)."""
    values = list(start)
    steps = sorted({abs(a - b) for a in grid for b in grid if a != b}) or [0.25]
    delta = steps[0] / 2
    best = start
    best_r = next(r for w, r in known if w == start)
    spent = 0
    while spent < budget and delta > 1e-3:
        moves = []
        for v in values:
            for sign in (1, -1):
                w = {**best, v: round(best[v] + sign * delta, 6)}
                if all(any(abs(w[u] - kw[u]) > 1e-9 for u in values) for kw, _ in known):
                    moves.append(w)
        moves = moves[: budget - spent]
        if not moves:
            delta /= 2
            continue
        recs = ev.points([ev.plan.candidate(w) for w in moves], "val")
        spent += len(moves)
        known += [(w, rec.rewards) for w, rec in zip(moves, recs)]
        sp = spreads([r for _, r in known], values)
        top_w, top_r = max(known, key=lambda kr: target.rank(kr[1], base_val, sp))
        if target.rank(top_r, base_val, sp) > target.rank(best_r, base_val, sp):
            best, best_r = top_w, top_r
        else:
            delta /= 2
    return best, best_r, spent


def paired_probability(target: Target, point: dict[str, np.ndarray], base: dict[str, np.ndarray],
                       n_boot: int, seed: int) -> float:
    """Share of paired bootstrap replicates (prompt indices resampled once for point and base) in which every
    constraint holds on the replicate's means."""
    if not target.constraints:
        return 1.0
    n = len(next(iter(point.values())))
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ok = np.ones(n_boot, dtype=bool)
    for c in target.constraints:
        p, b = point[c.value][idx].mean(1), base[c.value][idx].mean(1)
        bound = (b if c.relative else 0.0) + c.offset
        ok &= p >= bound if c.op == ">=" else p <= bound
    return float(ok.mean())


def pick_run(run_dir, maximize: str | None = None, require: Sequence[str] = (), weights: dict[str, float] | None = None,
             methods: Sequence[str] = (), refine_budget: int = 0, progress: bool = False,
             allow_disputed: bool = False) -> dict:
    """Choose a point for the targets (see the module docstring); returns the answer as a dict (`feasible`,
    `method`, `weights`, val / test rewards with intervals, base test rewards, P(constraints hold), misses)."""

    from .evaluate import evaluator
    from .methods import get_method, run_fronts

    run = RunDir(run_dir)
    cfg = run.load_config()
    values = [v.name for v in cfg.values]
    target = make_target(values, maximize, require, weights)
    fronts = {m: run.read_front(m) for m in run_fronts(run) if not methods or m in methods}
    if not fronts:
        raise ConfigError(f"{run.root}: no evaluated fronts{' for ' + str(list(methods)) if methods else ''}; "
                          "run `mvalign run CONFIG --method ...` first")
    base_val = next(iter(fronts.values())).base.val.rewards
    cands = [(m, p) for m, f in fronts.items() for p in f.on("val")]
    sp = spreads([p.rewards for _, p in cands], values)
    method, point = max(cands, key=lambda mp: target.rank(mp[1].rewards, base_val, sp,
                                                          () if allow_disputed else mp[1].disputed))
    m = get_method(method)
    with evaluator(cfg, method, progress) as ev:  # closes the Ray workers, if any
        label, val_r, spent = dict(point.weights), point.rewards, 0
        if refine_budget and m.kind == "value-vectors":
            known = [(dict(p.weights), p.rewards) for mm, p in cands if mm == method]
            label, val_r, spent = refine(ev, target, label, base_val, refine_budget, cfg.sweep.grid, known)
        fixed = {tuple(sorted(c.label.items())): c for c in getattr(ev.plan.source, "points", [])}
        cand = fixed.get(tuple(sorted(label.items())))
        if cand is None:
            if m.kind != "value-vectors":
                raise ConfigError(f"{method}: point {label} is not one of its candidates")
            cand = ev.plan.candidate(label)
        rec, base = ev.points([cand], "test")[0], ev.base("test")
        ev.reset()
        prob = paired_probability(target, ev.scores(rec, "test"), ev.scores(base, "test"), cfg.sweep.bootstrap,
                                  cfg.sweep.seed)
        misses = {str(c): c.miss(val_r, base_val) for c in target.constraints}
        disputed = list(point.disputed) if label == dict(point.weights) else []
        held = [str(c) for c in target.constraints if c.value in disputed and not allow_disputed]
        return {"feasible": all(x <= 0 for x in misses.values()) and not held, "method": method,
                "vectors": ev.plan.vectors, "disputed": disputed, "allow_disputed": allow_disputed,
                "blocked_by_dispute": held,
                "weights": label, "exportable": m.exportable, "objective": target.maximize or target.weights,
                "constraints": [str(c) for c in target.constraints], "val": {"rewards": val_r, "base": base_val},
                "test": {"rewards": rec.rewards, "ci95": rec.ci95, "base": base.rewards, "base_ci95": base.ci95,
                         "prompts": rec.n_prompts},
                "p_constraints_hold_test": prob, "misses_val": misses, "refine_evaluations": spent}


def describe(answer: dict) -> str:
    """The answer of `pick_run` as a few lines of text."""
    t = answer["test"]
    lines = [("feasible" if answer["feasible"] else "NOT achievable; closest point")
             + f": {answer['method']} {answer['weights']}"]
    for v, r in t["rewards"].items():
        lo, hi = t["ci95"][v]
        lines.append(f"  {v}: test {r:.4f} [{lo:.4f}, {hi:.4f}] over {t['prompts']} prompts; base {t['base'][v]:.4f}")
    for c, miss in answer["misses_val"].items():
        lines.append(f"  {c}: " + ("not met: its measures dispute the gain" if c in answer["blocked_by_dispute"]
                                   else "met on val" if miss <= 0 else f"missed by {miss:.4f} on val"))
    if answer["disputed"]:
        lines.append(f"  disputed in {answer['disputed']}: an audit measure says worse than base where the primary "
                     "says better" + (" (allowed by --allow-disputed)" if answer["allow_disputed"] else ""))
    if answer["constraints"]:
        lines.append(f"  P(all constraints hold on test) = {answer['p_constraints_hold_test']:.3f}")
    if "export" in answer:
        lines.append(f"wrote {answer['export']}")
    return "\n".join(lines)
