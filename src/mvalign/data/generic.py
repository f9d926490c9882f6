"""Generic preference tables: one record per pair with prompt / chosen / rejected columns (mappable).

A prompt cell may be text or a list of chat messages; a response cell may be text or a list of messages whose last
assistant turn is the response (the conversational layout TRL uses).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .pairs import PairCollector, PreferencePair, Prompt, RowRef


def _as_prompt(cell: Any) -> Prompt | None:
    """Text, or a list of {role, content} messages as a tuple; None for anything else."""
    if isinstance(cell, str):
        return cell
    if isinstance(cell, list) and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in cell):
        return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in cell)
    return None


def _as_response(cell: Any) -> Any:
    if isinstance(cell, list) and cell and isinstance(cell[-1], dict) and "content" in cell[-1]:
        return cell[-1]["content"]
    return cell


def collect_generic(
    records: Iterator[tuple[RowRef, dict[str, Any]]], columns: dict[str, str], collector: PairCollector
) -> list[PreferencePair]:
    for ref, rec in collector.rows(records):
        if not collector.has_columns(ref, rec, columns):
            continue
        prompt = _as_prompt(rec[columns["prompt"]])
        if prompt is None:
            cell = rec[columns["prompt"]]
            collector.reject(ref, f"field 'prompt' must be text or a list of {{role, content}} messages, got "
                             f"{type(cell).__name__}", "prompt not text")
            continue
        collector.add(ref, prompt, _as_response(rec[columns["chosen"]]), _as_response(rec[columns["rejected"]]))
    return collector.finish()
