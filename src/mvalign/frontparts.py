"""The parts of a front that describe how it was made (`mvalign.front` documents the file format): the evaluation
settings, racing's record and the training compute."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DroppedPoint:
    """A candidate racing dropped, as seen on the first `prompts` val prompts."""

    weights: dict[str, float]
    prompts: int
    rewards: dict[str, float]
    scores: dict[str, list[float]]
    responses: list[str]
    vs_base: dict[str, dict] = field(default_factory=dict)


@dataclass
class Racing:
    candidates: int
    survivors: int
    rounds: list[dict]
    token_fraction: float
    first: int
    z: float
    rule: str
    dropped: list[DroppedPoint] = field(default_factory=list)


@dataclass
class EvalSettings:
    """How a front's points were made."""

    val_prompts: int | None = None
    test_prompts: int | None = None
    generation: dict[str, Any] = field(default_factory=dict)
    """`GenerationSettings.as_dict()` (flat in the JSON)."""
    candidates: str | None = None
    combination: str = "exact"
    vectors: str | None = None
    mixed_batching: dict | None = None
    backend: dict | None = None

    NAMED = ("val_prompts", "test_prompts", "candidates", "combination", "vectors", "mixed_batching", "backend")

    def to_json(self) -> dict:
        return {"val_prompts": self.val_prompts, "test_prompts": self.test_prompts, **self.generation,
                "candidates": self.candidates, "combination": self.combination, "vectors": self.vectors,
                "mixed_batching": self.mixed_batching, "backend": self.backend}

    @classmethod
    def from_json(cls, raw: Mapping) -> EvalSettings:
        return cls(**{k: raw[k] for k in cls.NAMED if k in raw},
                   generation={k: v for k, v in raw.items() if k not in cls.NAMED})


@dataclass
class Training:
    """Training compute summed over the adapters a method's candidates use."""

    adapters: int = 0
    steps: int = 0
    tokens: float = 0.0
    seconds: float = 0.0
