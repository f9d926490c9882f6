"""What a method puts forward for evaluation: typed candidates, and the sources that produce them.

A `Candidate` is one model to evaluate, built whole by its method:
  label     what the front reports: ω for weight combinations, the preference weight w for per-weight models and
            RiC, the values a seqt stage has seen;
  adapters  the adapter weights that realise it ({name: weight}, names not given get 0; {} is the base model);
  prompt    for methods that steer by prompt (RiC), a transform applied to every prompt before generation (the
            judges still score the response against the original prompt);
  fused     decode-time fusion (`mvalign.fusion`, the `mod` methods): not the merged model but the value models
            π_k = W0 + ΔW_k read together, next-token logits Σ ω_k logits_k.
A `CandidateSource` yields the candidates, given a way to evaluate some: a fixed list ignores it, the adaptive
search (`mvalign.search`) spends a budget choosing where to look next. Every evaluation goes through the store,
so asking for a candidate twice costs nothing.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .config import ConfigError, SweepSettings
from .data.pairs import Prompt
from .search import adaptive_search
from .store import AdapterRef


@dataclass(frozen=True)
class PromptTransform:
    key: str
    """Identity of the transform (part of the stored point's key), e.g. 'ric:<helpful: 0.6> <harmless: 1.2>'."""
    apply: Callable[[Prompt], Prompt] = field(compare=False)


@dataclass(frozen=True)
class Candidate:
    label: Mapping[str, float]
    adapters: Mapping[str, float]
    prompt: PromptTransform | None = None
    fused: bool = False

    @classmethod
    def combination(cls, omega: Mapping[str, float]) -> Candidate:
        """W0 + Σ ω_k ΔW_k, reported as ω."""
        return cls(dict(omega), dict(omega))

    @classmethod
    def fusion(cls, omega: Mapping[str, float]) -> Candidate:
        """The value models fused at decoding time with weights ω (Σ ω_k logits_k), reported as ω."""
        return cls(dict(omega), dict(omega), fused=True)


def grid_points(values: Sequence[str], grid: Sequence[float]) -> list[dict[str, float]]:
    """Every combination: ω_k chosen independently from `grid` for each value (the MVA extrapolation box)."""
    return [dict(zip(values, combo)) for combo in itertools.product([float(g) for g in grid], repeat=len(values))]


def simplex_points(values: Sequence[str], step: float) -> list[dict[str, float]]:
    """ω on the simplex (ω_k ≥ 0, Σ ω_k = 1) in multiples of `step` (soups)."""
    n_steps = round(1 / step)
    if abs(n_steps * step - 1) > 1e-9:
        raise ConfigError(f"sweep.simplex_step {step} does not divide 1 (use e.g. 0.1, 0.2, 0.25)")
    out = []
    for combo in itertools.product(range(n_steps + 1), repeat=len(values)):
        if sum(combo) == n_steps:
            out.append({v: round(c * step, 10) for v, c in zip(values, combo)})
    return out


def strategy_points(settings: SweepSettings, values: Sequence[str]) -> list[dict[str, float]]:
    if settings.strategy == "grid":
        return grid_points(values, settings.grid)
    if settings.strategy == "simplex":
        return simplex_points(values, settings.simplex_step)
    if settings.strategy in ("adaptive", "bo"):
        raise ConfigError(f"sweep.strategy {settings.strategy!r} chooses its points while it evaluates")
    points = []
    for i, p in enumerate(settings.points):
        unknown = sorted(set(p) - set(values))
        if unknown:
            raise ConfigError(f"sweep.points[{i}] names unknown values {unknown}; known: {list(values)}")
        points.append({v: float(p.get(v, 0.0)) for v in values})
    if not points:
        raise ConfigError("sweep.strategy is 'list' but sweep.points is empty")
    return points


Evaluate = Callable[[list[Candidate]], list]
"""Evaluates candidates (in the order given) and returns their records (each with `.rewards`: value -> mean)."""


class CandidateSource(Protocol):
    def run(self, evaluate: Evaluate) -> list[Candidate]:
        """The candidates of the method; may call `evaluate` to decide which (all returned ones get evaluated)."""


@dataclass
class FixedCandidates:
    points: list[Candidate]

    def run(self, evaluate: Evaluate) -> list[Candidate]:
        return list(self.points)


@dataclass
class AdaptiveCandidates:
    """`budget` weight combinations from the lattice gridⁿ, chosen by `mvalign.search.adaptive_search`."""

    values: Sequence[str]
    budget: int
    grid: Sequence[float]

    def run(self, evaluate: Evaluate) -> list[Candidate]:
        def rewards(omegas):
            return [rec.rewards for rec in evaluate([Candidate.combination(w) for w in omegas])]
        return [Candidate.combination(w) for w, _ in adaptive_search(rewards, self.values, self.budget, self.grid)]


@dataclass
class BayesCandidates:
    """Up to `settings.budget` weight combinations, `bo_batch` per round, chosen by `mvalign.bo.bo_search` from each
    point's mean and standard error of the mean per value (its per-prompt scores)."""

    values: Sequence[str]
    settings: SweepSettings

    def run(self, evaluate: Evaluate) -> list[Candidate]:
        from .bo import bo_search

        def observe(omegas):
            recs = evaluate([Candidate.combination(w) for w in omegas])
            return [(rec.rewards, {v: standard_error(rec, v) for v in self.values}) for rec in recs]
        s = self.settings
        found = bo_search(observe, self.values, s.budget, s.grid, s.bo_batch, s.seed, s.bo_snap, s.bo_initial,
                          s.bo_stop_at_noise)
        return [Candidate.combination(w) for w, _ in found]


@dataclass
class DecodingFusion:
    """Another source's weight combinations, each read as a decode-time fusion at the same ω (`mvalign.fusion`):
    what the inner source evaluates and returns are the fused candidates."""

    inner: CandidateSource

    def run(self, evaluate: Evaluate) -> list[Candidate]:
        return [as_fusion(c) for c in self.inner.run(lambda cs: evaluate([as_fusion(c) for c in cs]))]


def as_fusion(c: Candidate) -> Candidate:
    if c.prompt is not None:
        raise ValueError("a prompt-steered candidate cannot be a decode-time fusion")
    return Candidate.fusion(c.adapters) if not c.fused else c


def standard_error(rec, value: str) -> float:
    """s/√n of a point's per-prompt scores for `value` (from its 95% interval's width when scores are missing)."""
    scores = rec.scores.get(value) or []
    if len(scores) > 1:
        return statistics.stdev(scores) / len(scores) ** 0.5
    lo, hi = rec.ci95[value]
    return (hi - lo) / 3.92


@dataclass
class Candidates:
    """A method's evaluation plan: which adapters to load, and where its candidates come from."""

    vectors: str
    """The adapters' method folder (adapters/<vectors>/) and the store key of the points: methods evaluating the
    same vectors share evaluated points."""
    adapters: list[str]
    source: CandidateSource
    label: str
    """How the candidates were chosen, for the front's settings (e.g. 'simplex', 'grid', 'per-weight models')."""
    fused: bool = False
    """Its points are decode-time fusions of the value models (`Candidate.fusion`), not merged models."""

    def candidate(self, omega: Mapping[str, float]) -> Candidate:
        """The plan's candidate at ω (a refinement's new point): a weight combination, or a fusion."""
        return Candidate.fusion(omega) if self.fused else Candidate.combination(omega)

    @property
    def refs(self) -> list[AdapterRef]:
        """The adapters to load, as the run dir and the store name them."""
        return [AdapterRef(self.vectors, a) for a in self.adapters]
