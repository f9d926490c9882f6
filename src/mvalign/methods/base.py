"""What a method is: one declaration (`Method`) of what it trains and what candidates it puts forward.

A method module defines `METHODS = [Method(...), ...]` and the registry (`registry.py`) lists the module once.
Everything that lists methods (the CLI's choices and help, run-dir compatibility rules, benchmarks, the front's
`settings.candidates`, the README methods table) reads the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ..candidates import (
    AdaptiveCandidates,
    BayesCandidates,
    Candidate,
    Candidates,
    FixedCandidates,
    simplex_points,
    strategy_points,
)
from ..config import ConfigError, RunConfig
from ..rundir import RunDir
from ..store import VectorRecord

TrainFn = Callable[[RunConfig, RunDir, Sequence[str], bool, bool, Any], list[VectorRecord]]
"""(config, run dir, values to train (empty: all), force, progress, the method's validated settings or None) ->
records of the trained adapters."""
CandidatesFn = Callable[[RunConfig, RunDir, Any], Candidates]
"""(config, run dir, the method's validated settings or None) -> what it evaluates."""


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    """One line: what it trains and which candidates it evaluates."""
    paper: str
    """Where it comes from, e.g. 'arXiv:2402.10207'."""
    candidates: CandidatesFn
    train: TrainFn | None = None
    """None: the method trains nothing itself and evaluates the vectors of `vectors`."""
    vectors: str | None = None
    """Whose adapters it evaluates (None: its own)."""
    kind: Literal["value-vectors", "stages", "per-weight", "single"] = "value-vectors"
    """What its adapters are: one independent vector per value (combinable; their interference is meaningful),
    sequential stages, one model per preference weight, or a single model."""
    settings: type[BaseModel] | None = None
    """The schema of its config block `methods.<block>`, if it has settings: validated and handed to its `train`
    and `candidates`; changing it is refused once the run dir holds this method's artifacts."""
    block: str | None = None
    """Whose block it reads when another method's (a family sharing settings: mva-orth reads methods.mva)."""
    fused: bool = False
    """Its points are decode-time fusions of the value vectors (`mvalign.fusion`): n models read together, so no
    point is one set of weights to export or serve."""

    @property
    def exportable(self) -> bool:
        """Whether each of its points is one model W0 + Σ ω_k ΔW_k (what export, serve and presets need)."""
        return self.kind == "value-vectors" and not self.fused

    @property
    def source(self) -> str:
        """The method whose adapters (and stored points) this method uses."""
        return self.vectors or self.name

    @property
    def section(self) -> str | None:
        """The config block it reads ('methods.<block>'), None when it has no settings."""
        return f"methods.{self.block or self.name}" if self.settings is not None else None

    def options(self, cfg: RunConfig) -> BaseModel | None:
        """This method's validated settings (defaults when the config has no block for it)."""
        if self.settings is None:
            return None
        block = self.block or self.name
        try:
            return self.settings.model_validate(cfg.methods.get(block) or {})
        except ValidationError as e:
            lines = [f"methods.{block}: invalid settings"]
            lines += [f"  methods.{block}.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
            raise ConfigError("\n".join(lines)) from None

    def plan(self, cfg: RunConfig, run: RunDir) -> Candidates:
        """What it evaluates: its candidates, given its settings."""
        return self.candidates(cfg, run, self.options(cfg))

    def fit(self, cfg: RunConfig, run: RunDir, values: Sequence[str] = (), force: bool = False,
            progress: bool = True) -> list[VectorRecord]:
        """Train its adapters (skipping finished ones), given its settings."""
        return self.train(cfg, run, tuple(values), force, progress, self.options(cfg))


def value_names(cfg: RunConfig) -> list[str]:
    names = [v.name for v in cfg.values]
    if not names:
        raise ConfigError("the config has no values")
    return names


def each_alone(vectors: str) -> CandidatesFn:
    """Each of `vectors`' value vectors alone: ω = e_k."""
    def build(cfg: RunConfig, run: RunDir, settings=None) -> Candidates:
        values = value_names(cfg)
        points = [Candidate.combination({u: float(u == v) for u in values}) for v in values]
        return Candidates(vectors, values, FixedCandidates(points), "each vector alone")
    return build


def simplex(vectors: str) -> CandidatesFn:
    """Soups of `vectors`' value vectors: ω on the simplex in steps of sweep.simplex_step."""
    def build(cfg: RunConfig, run: RunDir, settings=None) -> Candidates:
        values = value_names(cfg)
        points = [Candidate.combination(p) for p in simplex_points(values, cfg.sweep.simplex_step)]
        return Candidates(vectors, values, FixedCandidates(points), "simplex")
    return build


def extrapolation(vectors: str) -> CandidatesFn:
    """W0 + Σ ω_k ΔW_k with ω from sweep.strategy: the grid box (each ω_k independently; the MVA extrapolation),
    the simplex, an explicit list, or the adaptive search over the grid (sweep.budget points)."""
    def build(cfg: RunConfig, run: RunDir, settings=None) -> Candidates:
        values = value_names(cfg)
        s = cfg.sweep
        if s.strategy == "adaptive":
            return Candidates(vectors, values, AdaptiveCandidates(values, s.budget, s.grid), "adaptive")
        if s.strategy == "bo":
            return Candidates(vectors, values, BayesCandidates(values, s), "bo")
        points = [Candidate.combination(p) for p in strategy_points(s, values) if any(p.values())]
        return Candidates(vectors, values, FixedCandidates(points), s.strategy)
    return build


def in_order(cfg: RunConfig, values: Sequence[str], force: bool,
             train_one: Callable[[str, list[str], bool], VectorRecord]) -> list[VectorRecord]:
    """Train values in config order, each after the earlier ones (`train_one(value, earlier values, force)`), up to
    the last of `values` (all when empty); `force` retrains the named values and every value after the first."""
    order = value_names(cfg)
    for v in values:
        cfg.value(v)
    wanted = list(values) or order
    last = max(order.index(v) for v in wanted)
    first_forced = min(order.index(v) for v in wanted) if force else len(order)
    return [train_one(v, order[:k], k >= first_forced) for k, v in enumerate(order[: last + 1])]
