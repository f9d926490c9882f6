"""Decode-time fusion of value models (MOD, arXiv:2406.18853): the third way to combine the same value vectors.

A point ω is not one model but n of them, π_k = base + ΔW_k, read together at every decoding step:

    logits_t(ω) = Σ_k ω_k · logits_t(π_k | x, y_<t),    y_t = argmax logits_t(ω)   (greedy; the sweep's decoding)

(the MOD paper's fused policy ∝ Π_k π_k^{ω_k}: a per-model constant shift of logits does not change the softmax, so
fusing logits or log-probs is the same distribution). The n models are rows of one mixed-ω batch (`mvalign.mixed`,
row at ω = e_k), so the base weights are never copied: one row per (point, prompt, value with ω_k ≠ 0); a logits
processor (`FuseLogits`) replaces every row's logits by its group's fused logits before the token is chosen, so a
group's rows choose the same token and stay one sequence. Because argmax(c·z) = argmax(z) for c > 0, greedy
responses depend only on ω's direction: points on one ray through 0 share one generation (`generate_fused`).

The likelihood of a given answer under the fused policy (the TruthfulQA multiple-choice audit) does depend on ω's
scale: ℓ(a) = Σ_t log softmax(Σ_k ω_k logits_t(π_k))[a_t] (`fused_logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .generate import GenerationSettings, generate_texts
from .mixed import MixedLoRA
from .train.logprobs import logprobs_from_logits, response_logits


class FuseLogits(LogitsProcessor):
    """Row r belongs to group `group[r]` with weight `weight[r]`; every row's scores become Σ_{r' in its group}
    weight[r'] · scores[r']. Rows of one group must be the same sequence (same prompt, same tokens so far)."""

    def __init__(self, group: Sequence[int], weight: Sequence[float]) -> None:
        self.group = torch.as_tensor(group, dtype=torch.long)
        self.weight = torch.as_tensor(weight, dtype=torch.float32)
        self.n_groups = int(self.group.max()) + 1 if len(group) else 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        group, weight = self.group.to(scores.device), self.weight.to(scores.device, scores.dtype)
        fused = torch.zeros(self.n_groups, scores.shape[-1], device=scores.device, dtype=scores.dtype)
        fused.index_add_(0, group, scores * weight[:, None])
        return fused[group]


def active(omega: Sequence[float]) -> list[int]:
    """The values a point reads (ω_k ≠ 0); refuses ω = 0, whose fused logits are all zero (no distribution)."""
    ks = [k for k, w in enumerate(omega) if w != 0]
    if not ks:
        raise ValueError("decode-time fusion needs some ω_k ≠ 0 (at ω = 0 the fused logits are all zero)")
    return ks


def direction(omega: Sequence[float]) -> tuple[float, ...]:
    """ω / max_k |ω_k|, rounded: equal for points on one ray through 0 (identical greedy responses)."""
    top = max(abs(w) for w in omega)
    return tuple(round(w / top, 12) for w in omega) if top else tuple(0.0 for _ in omega)


def generate_fused(mixed: MixedLoRA, tokenizer, points: Sequence[Sequence[float]], texts: Sequence[Sequence[str]],
                   settings: GenerationSettings, rows_per_pass: int, chat: bool) -> list[list[str]]:
    """Greedy responses of every fused point to its prompts (texts[p]: point p's formatted prompts, all points the
    same number), computed once per direction of ω, at most `rows_per_pass` rows per `generate` call (a group of a
    point's rows for one prompt is never split). Returns [point][prompt]."""
    if settings.do_sample:
        raise ValueError("decode-time fusion is implemented for greedy decoding")
    n = len(texts[0]) if texts else 0
    if any(len(t) != n for t in texts) or len(texts) != len(points):
        raise ValueError("every point needs the same number of prompts")
    keys = [(direction(w), tuple(texts[p])) for p, w in enumerate(points)]  # one generation per ray (and prompts)
    sizes = [len(active(w)) for w in points]
    firsts: dict[tuple, int] = {}  # key -> the first point with it (it is generated; the others copy it)
    for p, key in enumerate(keys):
        firsts.setdefault(key, p)
    unique = sorted(set(firsts.values()))
    groups = [(p, i) for i in range(n) for p in unique]  # prompt-major, as `mixed.generate_mixed`
    out: dict[tuple[int, int], str] = {}
    start = 0
    while start < len(groups):
        chunk, rows = [], 0
        for g in groups[start:]:
            size = sizes[g[0]]
            if chunk and rows + size > rows_per_pass:
                break
            chunk.append(g)
            rows += size
        start += len(chunk)
        row_w, row_group, row_text, row_weight = [], [], [], []
        for j, (p, i) in enumerate(chunk):
            for k in active(points[p]):
                row_w.append([float(k == m) for m in range(len(mixed.names))])
                row_group.append(j)
                row_weight.append(float(points[p][k]))
                row_text.append(texts[p][i])
        fuse = LogitsProcessorList([FuseLogits(row_group, row_weight)])
        with mixed.rows(row_w):
            responses = generate_texts(mixed.model, tokenizer, row_text, settings, chat, batch_size=len(row_text),
                                       logits_processor=fuse)
        first_row = {}
        for r, j in enumerate(row_group):
            first_row.setdefault(j, r)
        for j, g in enumerate(chunk):
            out[g] = responses[first_row[j]]
    return [[out[firsts[keys[p]], i] for i in range(n)] for p in range(len(points))]


@torch.no_grad()
def fused_logprobs(model, mixed: MixedLoRA, omega: Sequence[float], input_ids: torch.Tensor,
                   attention_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Each row's response log-probability under the fused policy at ω: Σ over its response tokens of
    log softmax(Σ_k ω_k logits_k)[token], the value models' logits from the mixed-ω rows (row at e_k)."""
    fused = None
    for k in active(omega):
        with mixed.rows([[float(k == m) for m in range(len(mixed.names))]] * input_ids.shape[0]):
            part = response_logits(model, input_ids, attention_mask, response_mask).float() * float(omega[k])
        fused = part if fused is None else fused + part
    return logprobs_from_logits(fused, input_ids, response_mask)
