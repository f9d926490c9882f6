"""Anthropic HH-RLHF transcripts: {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...}.

prompt = the dialogue through the last "\\n\\nAssistant:" (as chat messages, user/assistant alternating, ending with
a user turn); chosen / rejected = the final assistant turn of each transcript. A row whose two transcripts differ
before that turn, or that cannot be parsed, is invalid (error or skip, per `on_invalid`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .pairs import Message, PairCollector, PreferencePair, RowRef

_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}
ASSISTANT_TAG = "\n\nAssistant:"


def parse_dialogue(text: str) -> list[Message]:
    """Split a transcript into chat messages; raises ValueError when it does not start with a Human turn."""
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("text before the first 'Human:' turn")
    messages = [{"role": _ROLE[role], "content": content.strip()} for role, content in zip(parts[1::2], parts[2::2])]
    if not messages or messages[0]["role"] != "user":
        raise ValueError("the dialogue does not start with a 'Human:' turn")
    return messages


def split_transcript(text: str) -> tuple[str, str]:
    """(prefix through the last Assistant tag, final assistant response)."""
    i = text.rfind(ASSISTANT_TAG)
    if i < 0:
        raise ValueError("no '\\n\\nAssistant:' turn")
    return text[: i + len(ASSISTANT_TAG)], text[i + len(ASSISTANT_TAG) :].strip()


def collect_hh(
    records: Iterator[tuple[RowRef, dict[str, Any]]], collector: PairCollector, single_turn_only: bool = False
) -> list[PreferencePair]:
    for ref, rec in collector.rows(records):
        if not collector.has_columns(ref, rec, {"chosen": "chosen", "rejected": "rejected"}, what="field"):
            continue
        try:
            prefix, chosen = split_transcript(rec["chosen"])
            prefix_r, rejected = split_transcript(rec["rejected"])
            if prefix != prefix_r:
                raise ValueError("chosen and rejected transcripts differ before the last Assistant turn")
            messages = parse_dialogue(prefix[: -len(ASSISTANT_TAG)])
        except (ValueError, AttributeError, TypeError) as e:
            collector.reject(ref, f"HH transcript: {e}")
            continue
        if messages[-1]["role"] != "user":
            collector.reject(ref, "HH transcript: the prompt does not end with a Human turn")
            continue
        turns = sum(m["role"] == "user" for m in messages)
        if single_turn_only and turns > 1:
            continue
        prompt = messages[0]["content"] if len(messages) == 1 else tuple(messages)
        collector.add(ref, prompt, chosen, rejected, turns=turns)
    return collector.finish()
