"""MVA value decorrelation: HSIC / CKA / orthogonality penalties between a value vector in training and frozen ones.

Kernel statistics (biased HSIC estimator, Gretton et al. 2005), for two n×d matrices X, Y whose rows are paired:
    D_ab = ‖x_a − x_b‖²,   K = exp(−D / (2σ²)),   L likewise from Y,   H = I − 11ᵀ/n,
    HSIC(X, Y) = tr(K H L H) / (n − 1)²        (the reference code divides by n²: `denominator="n"`),
    CKA(X, Y)  = HSIC(X, Y) / sqrt(HSIC(X, X) · HSIC(Y, Y)).
σ is fixed (reference: 1.0) or the median heuristic σ = median_{a<b} ‖x_a − x_b‖ (per matrix, no gradient).

Which rows enter the kernel (`target`):
  - "lora_A": X = A_j, Y = A_k (r × d_in), rows paired by rank index (the authors' released approximation);
  - "delta_w": rows of ΔW = s·B·A (d_out × d_in). Distances come from the Gram matrix G = s²·B (A Aᵀ) Bᵀ,
    D_ab = G_aa + G_bb − 2 G_ab, so no d_out × d_in matrix is formed; m rows (same indices for both adapters)
    are sampled per step when d_out > m.
Orthogonality ablation (`penalty = "orth"`): ‖A_k A_jᵀ‖_F² for lora_A and ‖ΔW_kᵀ ΔW_j‖_F² for delta_w, the latter
as tr(Mᵀ (A_k A_kᵀ) M (A_j A_jᵀ)) · s_k² s_j² with M = B_kᵀ B_j (only r × r products). `orth-normalised` divides
by sqrt(‖ΔW_kᵀ ΔW_k‖_F² ‖ΔW_jᵀ ΔW_j‖_F²): a scale-free overlap in [0, 1] (Cauchy–Schwarz on the PSD matrices
ΔW ΔWᵀ), the orthogonality counterpart of CKA, so the same α means a comparable pull.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..lora import LoraAdapter, LoraFactors, trainable_lora_factors

EPS = 1e-12


def sqdist_from_gram(G: torch.Tensor) -> torch.Tensor:
    """D_ab = G_aa + G_bb − 2 G_ab, clamped at 0 (rounding). Leading dimensions are batch dimensions."""
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    return (diag[..., :, None] + diag[..., None, :] - 2 * G).clamp_min(0)


def median_sigma(D: torch.Tensor, max_pairs: int = 8192) -> torch.Tensor:
    """Median heuristic, per matrix: median over pairs a < b of the distances sqrt(D_ab), detached.

    Taken as sqrt(median D) (sqrt is monotone); for large n an evenly strided subset of at most `max_pairs` pairs
    estimates it, which keeps the heuristic cheap next to the kernel itself.
    """
    n = D.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=D.device)
    if iu.shape[1] > max_pairs:
        iu = iu[:, :: -(-iu.shape[1] // max_pairs)]
    off = D.detach()[..., iu[0], iu[1]]
    return off.median(dim=-1).values.clamp_min(0).sqrt().clamp_min(1e-6)


def rbf_from_sqdist(D: torch.Tensor, sigma: float | str) -> torch.Tensor:
    """K = exp(−D / (2σ²)); sigma = 'median' uses `median_sigma(D)` (one σ per matrix)."""
    s = median_sigma(D)[..., None, None] if sigma == "median" else float(sigma)
    return torch.exp(-D / (2 * s**2))


def hsic_from_kernels(K: torch.Tensor, L: torch.Tensor, denominator: str = "n-1") -> torch.Tensor:
    """tr(K H L H) / (n − 1)² (or / n², `denominator="n"`, the authors' code), computed as Σ (H K H) ⊙ L / (n − 1)²
    (H K H is K double-centred)."""
    n = K.shape[-1]
    if n < 2:
        raise ValueError("HSIC needs at least 2 samples (rows)")
    Kc = K - K.mean(-2, keepdim=True) - K.mean(-1, keepdim=True) + K.mean((-2, -1), keepdim=True)
    return (Kc * L).sum((-2, -1)) / ((n - 1) if denominator == "n-1" else n) ** 2


def cka_from_kernels(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)); 0 when either side is constant (e.g. a zero update)."""
    return hsic_from_kernels(K, L) / torch.sqrt(hsic_from_kernels(K, K) * hsic_from_kernels(L, L) + EPS)


def _gram(X: torch.Tensor) -> torch.Tensor:
    return X @ X.transpose(-2, -1)


def rbf_from_gram(G: torch.Tensor, sigma: float | str) -> torch.Tensor:
    """RBF kernel of the samples whose Gram matrix is G."""
    return rbf_from_sqdist(sqdist_from_gram(G), sigma)


def hsic(X: torch.Tensor, Y: torch.Tensor, sigma: float | str = 1.0) -> torch.Tensor:
    """HSIC of two row-paired sample matrices with RBF kernels."""
    return hsic_from_kernels(rbf_from_gram(_gram(X), sigma), rbf_from_gram(_gram(Y), sigma))


def cka(X: torch.Tensor, Y: torch.Tensor, sigma: float | str = 1.0) -> torch.Tensor:
    return cka_from_kernels(rbf_from_gram(_gram(X), sigma), rbf_from_gram(_gram(Y), sigma))


def _scale(scale: float | torch.Tensor) -> float | torch.Tensor:
    """A per-module scale broadcast over the last two (matrix) dimensions."""
    return scale[..., None, None] if isinstance(scale, torch.Tensor) else scale


def delta_w_gram(A: torch.Tensor, B: torch.Tensor, scale: float | torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """G = s² · B_S (A Aᵀ) B_Sᵀ: the Gram matrix of the rows S of ΔW = s·B·A, from the factors only."""
    Bs = B if rows is None else B[..., rows, :]
    return _scale(scale) ** 2 * (Bs @ _gram(A) @ Bs.transpose(-2, -1))


@dataclass(frozen=True)
class PenaltySpec:
    """How two value vectors are compared (see module docstring)."""

    kind: str = "hsic"  # hsic | cka | orth | orth-normalised
    target: str = "delta_w"  # delta_w | lora_A
    sigma: float | str = "median"
    rows: int = 128  # m: ΔW rows sampled per step (delta_w), all rows when d_out <= m
    denominator: str = "n-1"  # hsic: tr(KHLH) / (n − 1)², or / n² ("n", the authors' code); cka: cancels


def _orth_overlap(x: LoraFactors, y: LoraFactors, target: str) -> torch.Tensor:
    """‖A_x A_yᵀ‖_F² (lora_A) or ‖ΔW_xᵀ ΔW_y‖_F² = s_x² s_y² tr(Mᵀ (A_x A_xᵀ) M (A_y A_yᵀ)), M = B_xᵀ B_y (delta_w)."""
    if target == "lora_A":
        return (x.A @ y.A.transpose(-2, -1)).pow(2).sum((-2, -1))
    M = x.B.transpose(-2, -1) @ y.B
    prod = M.transpose(-2, -1) @ _gram(x.A) @ M @ _gram(y.A)
    scale = torch.as_tensor(x.scale) * torch.as_tensor(y.scale)
    return scale**2 * torch.diagonal(prod, dim1=-2, dim2=-1).sum(-1)


def module_penalty(
    train: LoraFactors, frozen: LoraFactors, spec: PenaltySpec, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Penalty between modules of the adapter in training and the same modules of a frozen adapter.

    Factors may carry leading batch dimensions (several modules of equal shapes stacked, with a tensor of scales):
    the result then has those dimensions.
    """
    if spec.kind in ("orth", "orth-normalised"):
        cross = _orth_overlap(train, frozen, spec.target)
        if spec.kind == "orth":
            return cross
        norm = _orth_overlap(train, train, spec.target) * _orth_overlap(frozen, frozen, spec.target)
        return cross / norm.clamp_min(1e-24).sqrt()
    if spec.target == "lora_A":
        if train.A.shape != frozen.A.shape:
            raise ValueError(f"lora_A target pairs rows by rank index: ranks differ ({train.A.shape} vs {frozen.A.shape})")
        Gx, Gy = _gram(train.A), _gram(frozen.A)
    else:
        Gx = delta_w_gram(train.A, train.B, train.scale, rows)
        Gy = delta_w_gram(frozen.A, frozen.B, frozen.scale, rows)
    K, L = rbf_from_gram(Gx, spec.sigma), rbf_from_gram(Gy, spec.sigma)
    return cka_from_kernels(K, L) if spec.kind == "cka" else hsic_from_kernels(K, L, spec.denominator)


_LAYER = re.compile(r"\.(\d+)\.")


def layer_of(module: str) -> str:
    """'model.layers.7.self_attn.q_proj' -> '7' (the first number in the name), else the module name itself."""
    m = _LAYER.search(module)
    return m.group(1) if m else module


class DecorrelationLoss:
    """α · Σ_{j<k} Σ_ℓ penalty(θ_k^ℓ, θ_j^ℓ) as the trainer's extra loss; logs the total and each layer's sum.

    Frozen adapters are plain tensors (never in the forward pass, never trained). Modules whose factors have equal
    shapes are stacked and computed in one batched pass (a few kernels instead of hundreds of small ones). Row
    samples for delta_w (one draw per group of modules) come from a generator seeded by (seed, micro-batch index), so
    a resumed run draws the same rows.
    """

    def __init__(self, frozen: Sequence[LoraAdapter], spec: PenaltySpec, alpha: float, seed: int = 0) -> None:
        self.frozen, self.spec, self.alpha, self.seed = list(frozen), spec, float(alpha), seed
        self._stacked: dict[tuple, LoraFactors] = {}

    def _frozen_stack(self, j: int, modules: tuple[str, ...], like: torch.Tensor) -> LoraFactors:
        key = (j, modules, like.device, like.dtype)
        if key not in self._stacked:
            fs = [self.frozen[j].modules[m] for m in modules]
            self._stacked[key] = LoraFactors(
                torch.stack([f.A for f in fs]).to(like.device, like.dtype),
                torch.stack([f.B for f in fs]).to(like.device, like.dtype),
                torch.tensor([f.scale for f in fs], device=like.device, dtype=like.dtype),
            )
        return self._stacked[key]

    def __call__(self, model: torch.nn.Module, micro: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
        live = trainable_lora_factors(model)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + micro)
        parts: list[torch.Tensor] = []
        names: list[str] = []
        for j, adapter in enumerate(self.frozen):
            groups: dict[tuple, list[str]] = {}
            for m, t in live.items():
                if m in adapter.modules:
                    f = adapter.modules[m]
                    groups.setdefault((t.A.shape, t.B.shape, f.A.shape, f.B.shape), []).append(m)
            for (_, b_shape, _, _), modules in groups.items():
                ts = [live[m] for m in modules]
                A = torch.stack([t.A for t in ts])
                train = LoraFactors(A, torch.stack([t.B for t in ts]),
                                    torch.tensor([t.scale for t in ts], device=A.device, dtype=A.dtype))
                rows = None
                if self.spec.target == "delta_w" and self.spec.kind != "orth" and b_shape[0] > self.spec.rows:
                    rows = torch.randperm(b_shape[0], generator=gen)[: self.spec.rows].to(A.device)
                parts.append(module_penalty(train, self._frozen_stack(j, tuple(modules), A), self.spec, rows))
                names.extend(modules)
        if not parts:
            raise ValueError("no module of the adapter in training is shared with the frozen adapters")
        values = torch.cat(parts)
        total = values.sum()
        per_layer: dict[str, float] = {}
        for m, v in zip(names, values.detach().tolist()):
            per_layer[layer_of(m)] = per_layer.get(layer_of(m), 0.0) + v
        logs = {f"{self.spec.kind}_total": total.item(), **{f"{self.spec.kind}/layer{k}": v for k, v in per_layer.items()}}
        return self.alpha * total, logs
