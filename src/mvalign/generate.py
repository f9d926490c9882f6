"""Batched response generation (left padding, KV cache) for evaluating a model at one weight vector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.pairs import Prompt
from .models import format_prompt, has_chat_template


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 48
    batch_size: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_prompt_length: int = 256

    def as_dict(self) -> dict:
        return asdict(self)


def generate_responses(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], settings: GenerationSettings,
    use_chat_template: bool = True,
) -> list[str]:
    """One response per prompt: prompts formatted like in training (`format_texts`), then `generate_texts`."""
    chat = use_chat_template and has_chat_template(tokenizer)
    return generate_texts(model, tokenizer, format_texts(tokenizer, prompts, chat), settings, chat)


def format_texts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], use_chat_template: bool = True) -> list[str]:
    """Prompts as the model reads them (the chat template when there is one and it is wanted)."""
    chat = use_chat_template and has_chat_template(tokenizer)
    return [format_prompt(tokenizer, p, chat) for p in prompts]


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], settings: GenerationSettings,
    chat: bool, batch_size: int | None = None, logits_processor=None,
) -> list[str]:
    """One response per formatted prompt (`chat`: formatted by the chat template, which brings its own special
    tokens): left-padded into batches (`batch_size`, default settings.batch_size), `model.generate` with its KV
    cache (greedy unless do_sample), new tokens decoded without special tokens. Sampling is seeded per batch, so a
    point's responses do not depend on what ran before it. `logits_processor` (a `LogitsProcessorList`) goes to
    `generate` as it is (`mvalign.fusion`)."""
    size = batch_size or settings.batch_size
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(texts), size):
            batch = tokenizer(list(texts[start : start + size]), return_tensors="pt", padding=True,
                              truncation=True, max_length=settings.max_prompt_length, add_special_tokens=not chat)
            batch = {k: v.to(device) for k, v in batch.items()}
            kwargs = {"do_sample": settings.do_sample}
            if logits_processor is not None:
                kwargs["logits_processor"] = logits_processor
            if settings.do_sample:
                torch.manual_seed(settings.seed + start)
                kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            ids = model.generate(**batch, max_new_tokens=settings.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, use_cache=True, **kwargs)
            new = ids[:, batch["input_ids"].shape[1] :]
            out.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out
