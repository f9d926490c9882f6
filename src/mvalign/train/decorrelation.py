"""MVA value decorrelation: HSIC / CKA / orthogonality penalties between a value vector in training and frozen ones.

Kernel statistics (biased HSIC estimator, Gretton et al. 2005), for two n×d matrices X, Y whose rows are paired:
    D_ab = ‖x_a − x_b‖²,   K = exp(−D / (2σ²)),   L likewise from Y,   H = I − 11ᵀ/n,
    HSIC(X, Y) = tr(K H L H) / (n − 1)²        (the reference code divides by n²; we use (n − 1)²),
    CKA(X, Y)  = HSIC(X, Y) / sqrt(HSIC(X, X) · HSIC(Y, Y)).
σ is fixed (reference: 1.0) or the median heuristic σ = median_{a<b} ‖x_a − x_b‖ (per matrix, no gradient).

Which rows enter the kernel (`target`):
  - "lora_A": X = A_j, Y = A_k (r × d_in), rows paired by rank index (the authors' released approximation);
  - "delta_w": rows of ΔW = s·B·A (d_out × d_in). Distances come from the Gram matrix G = s²·B (A Aᵀ) Bᵀ,
    D_ab = G_aa + G_bb − 2 G_ab, so no d_out × d_in matrix is formed; m rows (same indices for both adapters)
    are sampled per step when d_out > m.
Orthogonality ablation (`penalty = "orth"`): ‖A_k A_jᵀ‖_F² for lora_A and ‖ΔW_kᵀ ΔW_j‖_F² for delta_w, the latter
as tr(Mᵀ (A_k A_kᵀ) M (A_j A_jᵀ)) · s_k² s_j² with M = B_kᵀ B_j (only r × r products).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..combine import LoraAdapter, LoraFactors

EPS = 1e-12


def sqdist_from_gram(G: torch.Tensor) -> torch.Tensor:
    """D_ab = G_aa + G_bb − 2 G_ab, clamped at 0 (rounding)."""
    diag = torch.diagonal(G)
    return (diag[:, None] + diag[None, :] - 2 * G).clamp_min(0)


def median_sigma(D: torch.Tensor) -> torch.Tensor:
    """Median heuristic: median of the off-diagonal pairwise distances sqrt(D_ab), detached; EPS when all equal."""
    n = D.shape[0]
    off = D.detach()[~torch.eye(n, dtype=torch.bool, device=D.device)]
    return off.clamp_min(0).sqrt().median().clamp_min(1e-6) if off.numel() else torch.tensor(1.0)


def rbf_from_sqdist(D: torch.Tensor, sigma: float | str) -> torch.Tensor:
    """K = exp(−D / (2σ²)); sigma = 'median' uses `median_sigma(D)`."""
    s = median_sigma(D) if sigma == "median" else torch.as_tensor(float(sigma), dtype=D.dtype)
    return torch.exp(-D / (2 * s**2))


def hsic_from_kernels(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """tr(K H L H) / (n − 1)², computed as Σ (H K H) ⊙ L / (n − 1)² (H K H is K double-centred)."""
    n = K.shape[0]
    if n < 2:
        raise ValueError("HSIC needs at least 2 samples (rows)")
    Kc = K - K.mean(0, keepdim=True) - K.mean(1, keepdim=True) + K.mean()
    return (Kc * L).sum() / (n - 1) ** 2


def cka_from_kernels(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)); 0 when either side is constant (e.g. a zero update)."""
    return hsic_from_kernels(K, L) / torch.sqrt(hsic_from_kernels(K, K) * hsic_from_kernels(L, L) + EPS)


def hsic(X: torch.Tensor, Y: torch.Tensor, sigma: float | str = 1.0) -> torch.Tensor:
    """HSIC of two row-paired sample matrices with RBF kernels."""
    return hsic_from_kernels(rbf_from_sqdist(sqdist_from_gram(X @ X.T), sigma), rbf_from_sqdist(sqdist_from_gram(Y @ Y.T), sigma))


def cka(X: torch.Tensor, Y: torch.Tensor, sigma: float | str = 1.0) -> torch.Tensor:
    return cka_from_kernels(rbf_from_sqdist(sqdist_from_gram(X @ X.T), sigma), rbf_from_sqdist(sqdist_from_gram(Y @ Y.T), sigma))


def delta_w_gram(A: torch.Tensor, B: torch.Tensor, scale: float, rows: torch.Tensor | None = None) -> torch.Tensor:
    """G = s² · B_S (A Aᵀ) B_Sᵀ: the Gram matrix of the rows S of ΔW = s·B·A, from the factors only."""
    Bs = B if rows is None else B[rows]
    return scale**2 * (Bs @ (A @ A.T) @ Bs.T)


@dataclass(frozen=True)
class PenaltySpec:
    """How two value vectors are compared (see module docstring)."""

    kind: str = "hsic"  # hsic | cka | orth
    target: str = "delta_w"  # delta_w | lora_A
    sigma: float | str = "median"
    rows: int = 256  # m: ΔW rows sampled per step (delta_w), all rows when d_out <= m


def module_penalty(
    train: LoraFactors, frozen: LoraFactors, spec: PenaltySpec, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Penalty between one module of the adapter in training and the same module of a frozen adapter."""
    if spec.kind == "orth":
        if spec.target == "lora_A":
            return (train.A @ frozen.A.T).pow(2).sum()
        M = train.B.T @ frozen.B
        return train.scale**2 * frozen.scale**2 * torch.trace(M.T @ (train.A @ train.A.T) @ M @ (frozen.A @ frozen.A.T))
    if spec.target == "lora_A":
        if train.A.shape != frozen.A.shape:
            raise ValueError(f"lora_A target pairs rows by rank index: ranks differ ({train.A.shape} vs {frozen.A.shape})")
        Gx, Gy = train.A @ train.A.T, frozen.A @ frozen.A.T
    else:
        Gx = delta_w_gram(train.A, train.B, train.scale, rows)
        Gy = delta_w_gram(frozen.A, frozen.B, frozen.scale, rows)
    K = rbf_from_sqdist(sqdist_from_gram(Gx), spec.sigma)
    L = rbf_from_sqdist(sqdist_from_gram(Gy), spec.sigma)
    return cka_from_kernels(K, L) if spec.kind == "cka" else hsic_from_kernels(K, L)


_LAYER = re.compile(r"\.(\d+)\.")


def layer_of(module: str) -> str:
    """'model.layers.7.self_attn.q_proj' -> '7' (the first number in the name), else the module name itself."""
    m = _LAYER.search(module)
    return m.group(1) if m else module


def trainable_lora_factors(model: torch.nn.Module, adapter: str = "default") -> dict[str, LoraFactors]:
    """Live (differentiable) factors of a PEFT model's adapter, keyed by base-model module name."""
    out = {}
    for name, module in model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if isinstance(lora_A, torch.nn.ModuleDict) and adapter in lora_A:
            base = name.removeprefix("base_model.model.")
            out[base] = LoraFactors(lora_A[adapter].weight, module.lora_B[adapter].weight, float(module.scaling[adapter]))
    return out


class DecorrelationLoss:
    """α · Σ_{j<k} Σ_ℓ penalty(θ_k^ℓ, θ_j^ℓ) as the trainer's extra loss; logs the total and each layer's sum.

    Frozen adapters are plain tensors (never in the forward pass, never trained). Row samples for delta_w are drawn
    from a generator seeded by (seed, micro-batch index), so a resumed run draws the same rows.
    """

    def __init__(self, frozen: Sequence[LoraAdapter], spec: PenaltySpec, alpha: float, seed: int = 0) -> None:
        self.frozen, self.spec, self.alpha, self.seed = list(frozen), spec, float(alpha), seed

    def __call__(self, model: torch.nn.Module, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        live = trainable_lora_factors(model)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + micro)
        total = None
        per_layer: dict[str, torch.Tensor] = {}
        for module, train in live.items():
            rows = None
            d_out = train.B.shape[0]
            if self.spec.target == "delta_w" and self.spec.kind != "orth" and d_out > self.spec.rows:
                rows = torch.randperm(d_out, generator=gen)[: self.spec.rows].to(train.B.device)
            for adapter in self.frozen:
                if module not in adapter.modules:
                    continue
                f = adapter.modules[module]
                frozen = LoraFactors(f.A.to(train.A.device, train.A.dtype), f.B.to(train.B.device, train.B.dtype), f.scale)
                value = module_penalty(train, frozen, self.spec, rows)
                total = value if total is None else total + value
                layer = layer_of(module)
                per_layer[layer] = per_layer.get(layer, 0.0) + value.detach()
        if total is None:
            raise ValueError("no module of the adapter in training is shared with the frozen adapters")
        values = torch.stack([total.detach(), *per_layer.values()]).tolist()
        logs = {f"{self.spec.kind}_total": values[0], **{f"{self.spec.kind}/layer{k}": v for k, v in zip(per_layer, values[1:])}}
        return self.alpha * total, logs
