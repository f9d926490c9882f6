"""Turn preference pairs (DPO) or single responses (SFT) into token ids (prompt | response) and pad them into batches."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ..data.pairs import PreferencePair, Prompt
from ..models import format_prompt, has_chat_template


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair: the prompt (chat template applied) and each response (ending with EOS)."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    max_length: int,
    max_prompt_length: int,
    use_chat_template: bool = True,
) -> list[TokenizedPair]:
    """Prompt tokens keep their last `max_prompt_length`; each response is cut so prompt + response <= max_length.

    Responses are tokenised separately from the prompt (no special tokens added) and get the EOS token appended, so
    the response mask is exact and the model learns to stop. Plain-text prompts end in "Assistant:", so the response
    gets a leading space there.
    """
    out = []
    for pair in pairs:
        prompt_ids, (chosen, rejected) = _tokenize(tokenizer, pair.prompt, (pair.chosen, pair.rejected), max_length,
                                                   max_prompt_length, use_chat_template)
        out.append(TokenizedPair(prompt_ids, chosen, rejected))
    return out


@dataclass(frozen=True)
class TokenizedSequence:
    """Token ids of one (prompt, response) example for supervised fine-tuning."""

    prompt: tuple[int, ...]
    response: tuple[int, ...]


def tokenize_sequences(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[tuple[Prompt, str]],
    max_length: int,
    max_prompt_length: int,
    use_chat_template: bool = True,
) -> list[TokenizedSequence]:
    """(prompt, response) examples, formatted and truncated exactly like `tokenize_pairs`."""
    out = []
    for prompt, response in examples:
        prompt_ids, (resp,) = _tokenize(tokenizer, prompt, (response,), max_length, max_prompt_length, use_chat_template)
        out.append(TokenizedSequence(prompt_ids, resp))
    return out


def _tokenize(tokenizer, prompt: Prompt, responses: Sequence[str], max_length: int, max_prompt_length: int,
              use_chat_template: bool) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    chat = use_chat_template and has_chat_template(tokenizer)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_ids = tokenizer(format_prompt(tokenizer, prompt, chat), add_special_tokens=not chat)["input_ids"]
    prompt_ids = prompt_ids[-max_prompt_length:]
    room = max_length - len(prompt_ids)
    out = []
    for text in responses:
        ids = tokenizer(text if chat else " " + text, add_special_tokens=False)["input_ids"] + eos
        out.append(tuple(ids[:room]))
    return tuple(prompt_ids), out


def tokens_digest(pairs: Sequence[TokenizedPair]) -> str:
    """sha256 of all token ids: identifies data + tokenisation + truncation for caching."""
    h = hashlib.sha256()
    for p in pairs:
        for part in (p.prompt, p.chosen, p.rejected):
            h.update(len(part).to_bytes(4, "little"))
            h.update(torch.tensor(part, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


def collate_pairs(pairs: Sequence[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of 2B sequences: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected.

    Returns input_ids, attention_mask and response_mask (1 exactly on the response tokens).
    """
    return _pad([(p.prompt, getattr(p, which)) for which in ("chosen", "rejected") for p in pairs], pad_id)


def collate_sequences(examples: Sequence[TokenizedSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of prompt+response rows, with the same keys as `collate_pairs`."""
    return _pad([(e.prompt, e.response) for e in examples], pad_id)


def _pad(rows: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], pad_id: int) -> dict[str, torch.Tensor]:
    seqs = [p + r for p, r in rows]
    masks = [(0,) * len(p) + (1,) * len(r) for p, r in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    response_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention_mask[i, : len(s)] = 1
        response_mask[i, : len(s)] = torch.tensor(m)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
