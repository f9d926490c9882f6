"""Exact combination of LoRA value vectors in weight space: W(ω) = W0 + Σ_k ω_k s_k B_k A_k.

Adapters are read as factors (`mvalign.lora`); the
update of one module is formed by a single matmul of the stacked factors [ω_1 s_1 B_1 | ... | ω_n s_n B_n] ·
[A_1; ...; A_n], one module at a time, so no more than one dense d_out × d_in update exists at once. Any real ω is
allowed (negative, > 1). `CombinedModel` applies and moves between weight vectors in place on one loaded model.
`factorwise_delta` is the reference soups' (wrong in general) averaging of A and B separately, kept only to
reproduce them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import torch

from .lora import AdapterError, LoraAdapter, LoraFactors, adapter_targets, load_lora_adapter, orient

__all__ = ["AdapterError", "CombinedModel", "LoraAdapter", "LoraFactors", "combine", "exact_delta", "factorwise_delta",
           "load_lora_adapter", "stacked_factors"]

def exact_delta(factors: Sequence[LoraFactors], weights: Sequence[float], dtype=torch.float32) -> torch.Tensor:
    """Σ_k ω_k s_k B_k A_k for one module as one matmul of stacked factors (in `dtype`, default float32)."""
    B = torch.cat([f.B.to(dtype) * (w * f.scale) for f, w in zip(factors, weights)], dim=1)
    A = torch.cat([f.A.to(dtype) for f in factors], dim=0)
    return orient(B @ A, factors[0].fan_in_fan_out)


def stacked_factors(adapters: Sequence[LoraAdapter], weights: Sequence[float]) -> dict[str, LoraFactors]:
    """Σ_k ω_k ΔW_k as ONE LoRA per module, exactly: rank R = Σ r_k (over the adapters with ω_k ≠ 0 that target the
    module), B = [ω_1 s_1 B_1 | ... | ω_n s_n B_n] (d_out × R), A = [A_1; ...; A_n] (R × d_in), scale 1, so
    1 · B A = Σ_k ω_k s_k B_k A_k. Any real ω (negative, > 1). Modules no weighted adapter targets are left out."""
    if len(weights) != len(adapters) or not all(math.isfinite(float(w)) for w in weights):
        raise AdapterError(f"need {len(adapters)} finite weights (one per adapter), got {list(weights)}")
    if len({f.fan_in_fan_out for a in adapters for f in a.modules.values()}) > 1:
        raise AdapterError("the adapters disagree on fan_in_fan_out: they were not trained on one base model")
    out: dict[str, LoraFactors] = {}
    for m in sorted(set().union(*(a.modules for a in adapters))):
        parts = [(a.modules[m], float(w)) for a, w in zip(adapters, weights) if m in a.modules and w != 0]
        if parts:
            B = torch.cat([f.B.to(torch.float32) * (w * f.scale) for f, w in parts], dim=1)
            A = torch.cat([f.A.to(torch.float32) for f, _ in parts], dim=0)
            out[m] = LoraFactors(A.contiguous(), B.contiguous(), 1.0, parts[0][0].fan_in_fan_out)
    return out


def factorwise_delta(factors: Sequence[LoraFactors], weights: Sequence[float], dtype=torch.float32) -> torch.Tensor:
    """Reference-soup mode, NOT the exact combination: s · (Σ_k ω_k B_k)(Σ_k ω_k A_k).

    This is what averaging the adapters' state dicts (the VC-soup reference) does; it adds cross terms
    ω_j ω_k s B_j A_k and equals the exact combination only for one adapter with ω = 1. Needs equal ranks and scales.
    """
    if len({f.scale for f in factors}) != 1 or len({f.A.shape for f in factors}) != 1:
        raise AdapterError("factor-wise averaging needs adapters with equal rank and scale")
    B = sum(f.B.to(dtype) * w for f, w in zip(factors, weights))
    A = sum(f.A.to(dtype) * w for f, w in zip(factors, weights))
    return orient(factors[0].scale * (B @ A), factors[0].fan_in_fan_out)


def beside(adapter: LoraAdapter, targets: Mapping[str, torch.Tensor]) -> LoraAdapter:
    """The adapter with each module's factors on the device of the weight they update (a GPU model's updates are
    formed on the GPU; factors stay float32)."""
    modules = {m: f if m not in targets or f.A.device == targets[m].device else
               dataclasses.replace(f, A=f.A.to(targets[m].device), B=f.B.to(targets[m].device))
               for m, f in adapter.modules.items()}
    return dataclasses.replace(adapter, modules=modules)


SAFE_OMEGA = 16.0
"""Largest |ω_k| moved to by difference updates; beyond it moves are rebuilt from the original weights."""


class CombinedModel:
    """A base model whose target weights are set in place to W0 + Σ ω_k ΔW_k, for one ω after another.

    `set_weights(ω)` adds the difference update Σ (ω_k − ω_k^current) s_k B_k A_k, so moving between points costs
    one low-rank matmul per module and no model copy. Float32/64 weights drift by at most a few ulps per move while
    every |ω_k| ≤ SAFE_OMEGA; the first move beyond it (e.g. ω = 1e6, where W + ΔW − ΔW no longer returns W) keeps
    a copy of the targeted modules' original weights, and from then on every move is rebuilt from W0 exactly.
    Lower-precision weights keep that copy from the start.
    `reset()` returns to W0. `mode='factorwise'` uses `factorwise_delta` (reference soups) and always rebuilds.
    """

    def __init__(self, model: torch.nn.Module, adapters: Sequence[LoraAdapter], mode: str = "exact") -> None:
        if mode not in ("exact", "factorwise"):
            raise AdapterError(f"mode must be 'exact' or 'factorwise', got {mode!r}")
        if not adapters:
            raise AdapterError("no adapters to combine")
        self.model, self.mode = model, mode
        self.names = [a.name for a in adapters]
        self.targets = adapter_targets(model, adapters)
        self.adapters = [beside(a, self.targets) for a in adapters]
        exact_reset = mode == "factorwise" or any(w.dtype not in (torch.float32, torch.float64) for w in self.targets.values())
        self._originals = {m: w.detach().clone() for m, w in self.targets.items()} if exact_reset else None
        self.current = [0.0] * len(self.adapters)

    def _factors(self, module: str, weights: Sequence[float]) -> tuple[list[LoraFactors], list[float]]:
        pairs = [(a.modules[module], w) for a, w in zip(self.adapters, weights) if module in a.modules]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def weights_vector(self, weights: Mapping[str, float] | Sequence[float]) -> list[float]:
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(self.names))
            if unknown:
                raise AdapterError(f"weights name unknown value vectors {unknown}; known: {self.names}")
            weights = [float(weights.get(n, 0.0)) for n in self.names]
        weights = [float(w) for w in weights]
        if len(weights) != len(self.adapters) or not all(math.isfinite(w) for w in weights):
            raise AdapterError(f"need {len(self.adapters)} finite weights (one per value vector), got {weights}")
        return weights

    @torch.no_grad()
    def set_weights(self, weights: Mapping[str, float] | Sequence[float]) -> None:
        """Put the model at W0 + Σ ω_k ΔW_k (exact mode) or the factor-wise soup (factorwise mode)."""
        target = self.weights_vector(weights)
        if self._originals is None and max(abs(x) for x in (*target, *self.current)) > SAFE_OMEGA:
            self._originals = {}
            for m, w in self.targets.items():  # W0 = W − ΔW(current): current is within SAFE_OMEGA, so a few ulps
                factors, cur = self._factors(m, self.current)
                w0 = w.detach().to(torch.float32).clone()
                if factors and any(cur):
                    w0 -= exact_delta(factors, cur).to(w0.device)
                self._originals[m] = w0
        for m, w in self.targets.items():
            if self._originals is None:
                factors, diff = self._factors(m, [t - c for t, c in zip(target, self.current)])
                if factors and any(diff):
                    w.add_(exact_delta(factors, diff).to(w.device, w.dtype))
            else:
                factors, ws = self._factors(m, target)
                delta_fn = exact_delta if self.mode == "exact" else factorwise_delta
                base = self._originals[m].to(torch.float32)
                w.copy_(base + delta_fn(factors, ws).to(base.device) if factors else base)
        self.current = target

    @torch.no_grad()
    def weights_finite(self) -> bool:
        """Whether every targeted weight is finite at the current ω (a huge ω can overflow)."""
        return all(bool(torch.isfinite(w).all()) for w in self.targets.values())

    def reset(self) -> None:
        self.set_weights([0.0] * len(self.adapters))


def combine(
    model: torch.nn.Module, adapters: Sequence[LoraAdapter], weights: Mapping[str, float] | Sequence[float], mode: str = "exact"
) -> torch.nn.Module:
    """Merge in place: `model` becomes W0 + Σ ω_k s_k B_k A_k (or the factor-wise soup). Returns `model`."""
    CombinedModel(model, adapters, mode).set_weights(weights)
    return model
