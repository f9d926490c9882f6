"""Summed response log-probabilities, and the reference model's log-probs computed once and cached on disk."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import write_atomic
from ..models import model_fingerprint
from .tokenize import TokenizedPair, collate_pairs, tokens_digest

log = logging.getLogger(__name__)


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(transformer body, LM head) of an HF causal LM (PEFT-wrapped or not), or None when logits need more than the
    head (soft-capping, logit scaling), in which case the full forward is used."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    if config is None or getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None):
        return None
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if body is None or head is None or body is base:
        return None
    return body, head


def sequence_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """log π(y|x) = Σ_{t ∈ response} log softmax(logits_{t-1})[token_t], one number per row.

    Only positions that predict a response token go through the LM head (the prompt's logits are never formed),
    and each token's log-prob is computed as logit[token] − logsumexp(logits) in float32.
    """
    return logprobs_from_logits(response_logits(model, input_ids, attention_mask, response_mask), input_ids,
                                response_mask)


def padded_sequences(chunk: Sequence[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, response_mask) of (token ids, prompt length) rows, right-padded with `pad_id`:
    the response is every token after the prompt."""
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    att, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    for r, (seq, n_prompt) in enumerate(chunk):
        ids[r, : len(seq)] = torch.tensor(seq)
        att[r, : len(seq)] = 1
        resp[r, n_prompt : len(seq)] = 1
    return ids, att, resp


def logprobs_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Σ over each row's response tokens of logit[token] − logsumexp(logits), from `response_logits`' rows."""
    target = response_mask[:, 1:].bool()
    labels = input_ids[:, 1:][target]
    logits = logits.float()
    token_logps = logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(target)[target]
    return torch.zeros(input_ids.shape[0], device=input_ids.device, dtype=torch.float32).index_add_(0, rows, token_logps)


def response_logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """The logits at the positions that predict a response token (t − 1 for each response token t), row-major:
    (number of response tokens) × vocabulary."""
    target = response_mask[:, 1:].bool()
    parts = _backbone_and_head(model)
    if parts is None:  # the full forward (e.g. through DDP's wrapper), from the first response position on
        inner = getattr(model, "module", model)
        start = int(target.any(0).nonzero().min()) if target.any() else 0
        if "logits_to_keep" in inspect.signature(inner.forward).parameters:
            out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=input_ids.shape[1] - start)
            logits = out.logits[:, :-1][target[:, start:]]
        else:
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][target]
    else:
        body, head = parts
        hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = head(hidden[:, :-1][target])
    return logits


def pair_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) summed log-probs of a batch built by `collate_pairs`."""
    logps = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def disabled_adapters(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Context in which a PEFT model runs as its base model (the DPO reference π_ref)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()


def pair_length(p: TokenizedPair) -> int:
    """Tokens of the longer of a pair's two sequences (what its batch is padded to)."""
    return len(p.prompt) + max(len(p.chosen), len(p.rejected))


@torch.no_grad()
def compute_logprobs(
    model: torch.nn.Module,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    desc: str = "log-probs",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) log-probs of every pair under `model` as it is (eval mode), on CPU in float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    try:
        for i in tqdm(range(0, len(pairs), batch_size), desc=desc, leave=False, disable=len(pairs) <= batch_size):
            batch = {k: v.to(device) for k, v in collate_pairs(pairs[i : i + batch_size], pad_id).items()}
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                c, r = pair_logprobs(model, batch)
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def reference_logprobs(
    model: torch.nn.Module,
    pairs: Sequence[TokenizedPair],
    pad_id: int,
    cache_dir: str | os.PathLike[str],
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    only: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference (adapters disabled) log-probs, cached under `cache_dir/ref_logps/<key>.safetensors`.

    `only`: the indices of the pairs that will be read (e.g. those a step-limited training visits); the others are
    not computed and hold NaN. Pairs are computed longest first in batches of similar length (little padding).
    key = sha256(model fingerprint, precision, token ids of every pair, `only`): a cache entry is reused for the same
    base model, data, tokenisation and pair subset across epochs, values and methods, and never for anything else.
    """
    with disabled_adapters(model):
        fingerprint = model_fingerprint(model)
    subset = "all" if only is None else hashlib.sha256(str(sorted(set(only))).encode()).hexdigest()
    key = hashlib.sha256(f"v2|{fingerprint}|{autocast_dtype}|{tokens_digest(pairs)}|{subset}".encode()).hexdigest()[:32]
    path = Path(cache_dir) / "ref_logps" / f"{key}.safetensors"
    if path.is_file():
        try:
            cached = load_file(path)
            if cached["chosen"].shape[0] == len(pairs):
                return cached["chosen"], cached["rejected"]
            log.warning("reference cache %s has the wrong length; recomputing", path)
        except Exception as e:  # a truncated or foreign file: the cache is only a cache
            log.warning("reference cache %s is unreadable (%s); recomputing", path, e)
    wanted = sorted(set(range(len(pairs)) if only is None else only), key=lambda i: -pair_length(pairs[i]))
    log.info("computing reference log-probs of %d of %d pairs (cache %s)", len(wanted), len(pairs), path.name)
    with disabled_adapters(model):
        c, r = compute_logprobs(model, [pairs[i] for i in wanted], pad_id, batch_size, autocast_dtype,
                                desc="reference log-probs")
    chosen = torch.full((len(pairs),), float("nan"))
    rejected = torch.full((len(pairs),), float("nan"))
    chosen[wanted], rejected[wanted] = c, r
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"pairs": str(len(pairs)), "precision": json.dumps(str(autocast_dtype))}
    write_atomic(path, "reference log-probs (a cache)",
                 lambda tmp: save_file({"chosen": chosen.contiguous(), "rejected": rejected.contiguous()}, str(tmp),
                                       metadata=meta), "nothing is lost: it is recomputed")
    return chosen, rejected
