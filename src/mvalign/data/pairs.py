"""The preference-pair record, its validation, and the deterministic train/val/test split."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import MvalignError

log = logging.getLogger(__name__)

Message = dict[str, str]
"""A chat message: {"role": "user" | "assistant" | "system", "content": str}."""

Prompt = str | tuple[Message, ...]
"""A single user turn as text, or a whole dialogue (ending with a user turn) as chat messages."""

Split = Literal["train", "val", "test"]


class DataError(MvalignError, ValueError):
    """Preference data that cannot be used; the message names the file, the line or field, and what to do."""


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: for `prompt`, response `chosen` is preferred to `rejected` under one value.

    `meta` carries provenance ("source": file, "line": 1-based line or row) and format-specific extras.
    """

    prompt: Prompt
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def messages(self) -> list[Message]:
        """The prompt as chat messages (a plain-text prompt is one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]

    @property
    def prompt_key(self) -> str:
        """A stable text identity of the prompt (used for splitting and grouping)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.prompt)


@dataclass(frozen=True)
class RowRef:
    """Where a raw record came from, for error messages."""

    source: str
    line: int
    unit: str = ""
    """Empty for a line number; else what `line` counts (e.g. "record" in a JSON list)."""
    end: int = 0
    """Last physical line of a record spanning several (a CSV record with quoted newlines), else 0."""

    @property
    def lines(self) -> int:
        return self.end - self.line + 1 if self.end > self.line else 1

    def __str__(self) -> str:
        if self.unit:
            return f"{self.source} ({self.unit} {self.line})"
        return f"{self.source}:{self.line}" + (f"-{self.end}" if self.end > self.line else "")


@dataclass(frozen=True)
class BadRow:
    """A record the reader could not turn into a dict (malformed JSON line, not an object): handled by
    `PairCollector.rows` like any invalid row (error or skip, per on_invalid)."""

    why: str
    kind: str


def problem_of(prompt: Prompt, chosen: Any, rejected: Any) -> str | None:
    """Why a candidate pair is unusable, or None when it is fine."""
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            return f"field '{name}' is {type(text).__name__}, not text"
        if not text.strip():
            return f"field '{name}' is empty"
    if isinstance(prompt, str):
        if not prompt.strip():
            return "field 'prompt' is empty"
    elif not prompt or any(not str(m.get("content", "")).strip() for m in prompt):
        return "the prompt dialogue has an empty turn"
    if chosen.strip() == rejected.strip():
        return "chosen == rejected (the pair expresses no preference)"
    return None


class PairCollector:
    """Accumulates valid pairs and reports invalid rows in one error (on_invalid='error') or drops them ('skip')."""

    MAX_LISTED = 5

    def __init__(self, source: str, on_invalid: Literal["error", "skip"]) -> None:
        self.source = source
        self.on_invalid = on_invalid
        self.pairs: list[PreferencePair] = []
        self.problems: list[tuple[RowRef, str, str]] = []

    def rows(self, records: Iterable[tuple[RowRef, Any]]) -> Iterator[tuple[RowRef, dict[str, Any]]]:
        """The readable records; unreadable ones (`BadRow`) are recorded as problems."""
        for ref, rec in records:
            if isinstance(rec, BadRow):
                self.reject(ref, rec.why, rec.kind)
            else:
                yield ref, rec

    def has_columns(self, ref: RowRef, rec: dict[str, Any], columns: dict[str, str], what: str = "column") -> bool:
        """Whether the record has the source columns; if not, the row is recorded as a problem naming them."""
        missing = [f"'{src}' (for {dst})" for dst, src in columns.items() if src not in rec]
        if missing:
            have = ", ".join(repr(k) for k in rec)
            self.reject(ref, f"missing {what}(s) {', '.join(missing)}; the record has {have}. Map your columns with "
                        "`columns: {prompt: ..., chosen: ..., rejected: ...}` in the data config", f"missing {what}")
        return not missing

    def add(self, ref: RowRef, prompt: Prompt, chosen: Any, rejected: Any, **meta: Any) -> None:
        why = problem_of(prompt, chosen, rejected)
        if why is not None:
            self.reject(ref, why, "unusable pair (empty, not text, or chosen == rejected)")
            return
        self.pairs.append(PreferencePair(prompt, chosen, rejected, {"source": ref.source, "line": ref.line, **meta}))

    def reject(self, ref: RowRef, why: str, kind: str = "invalid row") -> None:
        self.problems.append((ref, why, kind))

    def counts(self) -> dict[str, int]:
        """Problems by kind, e.g. {"malformed JSON": 3, "missing column": 1}."""
        out: dict[str, int] = {}
        for _, _, kind in self.problems:
            out[kind] = out.get(kind, 0) + 1
        return out

    def finish(self) -> list[PreferencePair]:
        if self.problems and self.on_invalid == "error":
            listed = "\n".join(f"  {ref}: {why}" for ref, why, _ in self.problems[: self.MAX_LISTED])
            more = len(self.problems) - self.MAX_LISTED
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise DataError(
                f"{self.source}: {len(self.problems)} invalid row(s):\n{listed}{tail}\n"
                "Fix the rows, or set `on_invalid: skip` in the value's data config to drop them."
            )
        if self.problems:
            lines = sum(ref.lines for ref, _, _ in self.problems)
            spanned = f", {lines} lines of the file" if lines > len(self.problems) else ""
            by_kind = ", ".join(f"{n} {k}" for k, n in self.counts().items())
            log.warning("%s: skipped %d invalid row(s)%s: %s (first: %s: %s)", self.source, len(self.problems), spanned,
                        by_kind, *self.problems[0][:2])
        if not self.pairs:
            raise DataError(f"{self.source}: no usable preference pairs (empty dataset). Check the path and column mapping.")
        return self.pairs


def split_of(key: str, seed: int, train: float, val: float) -> Split:
    """Split of one prompt: u = sha256(f"{seed}:{key}") / 2^256; train if u < train, val if u < train + val, else test.

    Hash-based, so the split of a prompt does not depend on file order or on the other rows, and all pairs that share
    a prompt (e.g. several answers to one TruthfulQA question) land in the same split: no prompt leaks across splits.
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < train:
        return "train"
    if u < train + val:
        return "val"
    return "test"


def split_pairs(
    pairs: Iterable[PreferencePair], seed: int = 0, train: float = 0.8, val: float = 0.1
) -> dict[Split, list[PreferencePair]]:
    """Deterministic train/val/test split grouped by prompt (see `split_of`)."""
    out: dict[Split, list[PreferencePair]] = {"train": [], "val": [], "test": []}
    for p in pairs:
        out[split_of(p.prompt_key, seed, train, val)].append(p)
    return out
