"""What a method puts forward for evaluation: typed candidates, and the sources that produce them.

A `Candidate` is one model to evaluate, built whole by its method:
  label     what the front reports: ω for weight combinations, the preference weight w for per-weight models and
            RiC, the values a seqt stage has seen;
  adapters  the adapter weights that realise it ({name: weight}, names not given get 0; {} is the base model);
  prompt    for methods that steer by prompt (RiC), a transform applied to every prompt before generation (the
            judges still score the response against the original prompt).
A `CandidateSource` yields the candidates, given a way to evaluate some: a fixed list ignores it, the adaptive
search (`mvalign.search`) spends a budget choosing where to look next. Every evaluation goes through the store,
so asking for a candidate twice costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .data.pairs import Prompt
from .search import adaptive_search


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

    @classmethod
    def combination(cls, omega: Mapping[str, float]) -> Candidate:
        """W0 + Σ ω_k ΔW_k, reported as ω."""
        return cls(dict(omega), dict(omega))


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
class Candidates:
    """A method's evaluation plan: which adapters to load, and where its candidates come from."""

    vectors: str
    """The adapters' method folder (adapters/<vectors>/) and the store key of the points: methods evaluating the
    same vectors share evaluated points."""
    adapters: list[str]
    source: CandidateSource
    label: str
    """How the candidates were chosen, for the front's settings (e.g. 'simplex', 'grid', 'per-weight models')."""
