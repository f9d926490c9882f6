"""Mixed-ω batching: many weight vectors in one forward pass (SPEC, "Evaluating many ω in one pass").

For a target module with base weight W0 and adapters k = 1..n (A_k: r_k × d_in, B_k: d_out × r_k, scale s_k), batch
row i belongs to a point with weights ω(i) and gets

    y_i = W0 x_i + Σ_k ω_k(i) s_k B_k (A_k x_i),

computed for the whole batch as U = X A_catᵀ (rows × R, R = Σ r_k), U ← U ⊙ S with S[i, columns of k] = ω_k(i) s_k,
Y += U B_catᵀ. W0 is never modified: a row's ω (negative, > 1, huge) changes only that row, and the result equals
the merged model W0 + Σ ω_k s_k B_k A_k at ω(i) up to float reassociation. One `generate` call thereby serves P
points × N prompts, the multi-LoRA serving idea (S-LoRA, Punica) with continuous per-row weights.

`MixedLoRA.rows(weights)` is a context: inside it, forward hooks on the target modules add each row's update; outside
it the model is the plain base model. `generate_mixed` orders rows prompt-major (the P rows of one prompt are
adjacent and equally long, so a batch carries almost no padding) and returns each point's responses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from .generate import GenerationSettings, generate_texts
from .lora import LoraAdapter, adapter_targets


class MixedLoRA:
    """The stacked factors of every target module, applied per batch row through forward hooks."""

    def __init__(self, model: torch.nn.Module, adapters: Sequence[LoraAdapter]) -> None:
        self.model, self.names = model, [a.name for a in adapters]
        targets = adapter_targets(model, adapters)  # validates modules and shapes (one clear error otherwise)
        modules = dict(model.named_modules())
        self._factors: dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for name, weight in targets.items():
            parts = [(k, a.modules[name]) for k, a in enumerate(adapters) if name in a.modules]
            kw = {"device": weight.device, "dtype": weight.dtype}
            a_cat = torch.cat([f.A for _, f in parts], dim=0).to(**kw)  # R × d_in
            b_cat = torch.cat([f.B for _, f in parts], dim=1).to(**kw)  # d_out × R
            owner = torch.cat([torch.full((f.A.shape[0],), k) for k, f in parts])  # adapter of each column
            scale = torch.cat([torch.full((f.A.shape[0],), float(f.scale)) for _, f in parts])
            self._factors[name] = (modules[name], a_cat.T.contiguous(), b_cat.T.contiguous(), owner, scale)
        self._scales: dict[str, torch.Tensor] = {}

    def _hook(self, name: str):
        _, a_t, b_t, _, _ = self._factors[name]

        def add_update(module, inputs, output):
            s = self._scales[name]
            if output.shape[0] != s.shape[0]:
                raise RuntimeError(f"mixed-ω batch has {output.shape[0]} rows but {s.shape[0]} row weights were set")
            x = inputs[0]
            u = (x @ a_t).mul_(s.view(s.shape[0], *([1] * (x.dim() - 2)), s.shape[1]))
            if output.is_contiguous():  # Y += U B_catᵀ in place, one fused GEMM (no second output-sized tensor)
                output.view(-1, output.shape[-1]).addmm_(u.view(-1, u.shape[-1]), b_t)
                return output
            return output + u @ b_t
        return add_update

    @contextlib.contextmanager
    def rows(self, weights: torch.Tensor | Sequence[Sequence[float]]) -> Iterator[None]:
        """Within the context, batch row i is computed at ω = weights[i] (rows × adapters, in `self.names` order)."""
        self._check(weights)
        with self.hooks():
            self.set_rows(weights)
            yield

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """The hooks on every target module for the context (a server's whole life); `set_rows` before each forward
        pass chooses its rows' ω."""
        handles = [module.register_forward_hook(self._hook(name)) for name, (module, *_) in self._factors.items()]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self._scales.clear()

    def set_rows(self, weights: torch.Tensor | Sequence[Sequence[float]]) -> None:
        """Row i of the next forward passes at ω = weights[i] (rows × adapters, in `self.names` order)."""
        w = self._check(weights)
        for name, (_, a_t, _, owner, scale) in self._factors.items():
            self._scales[name] = (w[:, owner] * scale.double()).to(a_t.device, a_t.dtype)

    def _check(self, weights) -> torch.Tensor:
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.dim() != 2 or w.shape[1] != len(self.names):
            raise ValueError(f"row weights must be rows × {len(self.names)} ({self.names}), got {tuple(w.shape)}")
        return w


def generate_mixed(
    mixed: MixedLoRA, tokenizer, points: Sequence[Sequence[float]], texts: Sequence[Sequence[str]],
    settings: GenerationSettings, rows_per_pass: int, chat: bool,
) -> list[list[str]]:
    """Greedy responses of every point to its prompts (texts[p] are point p's prompts formatted by
    `generate.format_texts`; all points have the same number), `rows_per_pass` (point, prompt) rows per `generate`
    call, prompt-major. Returns [point][prompt]."""
    if settings.do_sample:
        raise ValueError("mixed-ω batching is for greedy decoding (sampled rows would depend on their batch-mates)")
    n = len(texts[0]) if texts else 0
    if any(len(t) != n for t in texts) or len(texts) != len(points):
        raise ValueError("every point needs the same number of prompts")
    order = [(p, i) for i in range(n) for p in range(len(points))]
    out: list[list[str]] = [[""] * n for _ in points]
    for start in range(0, len(order), rows_per_pass):
        chunk = order[start : start + rows_per_pass]
        with mixed.rows([points[p] for p, _ in chunk]):
            responses = generate_texts(mixed.model, tokenizer, [texts[p][i] for p, i in chunk], settings, chat,
                                       batch_size=len(chunk))
        for (p, i), r in zip(chunk, responses):
            out[p][i] = r
    return out
