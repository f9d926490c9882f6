"""The DPO objective (with the optional per-pair weight and margin other methods plug in)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DPOOutput:
    loss: torch.Tensor
    """Scalar loss to minimise."""
    chosen_rewards: torch.Tensor
    """Implicit rewards β (log π(y_w|x) − log π_ref(y_w|x)), one per pair (detached)."""
    rejected_rewards: torch.Tensor
    """Implicit rewards β (log π(y_l|x) − log π_ref(y_l|x)), one per pair (detached)."""

    @property
    def accuracy(self) -> torch.Tensor:
        """Share of pairs whose chosen implicit reward exceeds the rejected one."""
        return (self.chosen_rewards > self.rejected_rewards).float().mean()

    @property
    def margin(self) -> torch.Tensor:
        return (self.chosen_rewards - self.rejected_rewards).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    weights: torch.Tensor | None = None,
    margins: torch.Tensor | None = None,
    scale: float = 1.0,
) -> DPOOutput:
    """L = mean_i w_i · −log σ( c · [ β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))] − m_i ] ).

    All inputs are per-pair summed response log-probs. `weights` w_i (default 1) scale each pair's loss (soft
    value-consistency weighting, loss weighting); the mean is over pairs, so a pair of weight 0 contributes nothing
    and the scale of the weights matters. `margins` m_i (default 0) are subtracted inside the sigmoid and `scale`
    c (default 1) multiplies the logit: MODPO uses m_i = w_{−k}ᵀ(r_{−k}(x, y_w) − r_{−k}(x, y_l)) and c = 1/w_k.
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    logits = chosen_rewards - rejected_rewards
    if margins is not None:
        logits = logits - margins
    if scale != 1.0:
        logits = logits * scale
    losses = -F.logsigmoid(logits)
    if weights is not None:
        losses = losses * weights
    return DPOOutput(losses.mean(), chosen_rewards.detach(), rejected_rewards.detach())


def loss_weighting_pair_weights(sizes: Sequence[int], w: Sequence[float]) -> torch.Tensor:
    """DPO-LW per-pair weights over the concatenation D_1 ∥ … ∥ D_n (sizes N_k): pair i of D_k gets w_k · N / N_k,
    N = Σ N_k.

    Then the mean over all N pairs of weight · loss equals Σ_k w_k · mean_{D_k} loss = Σ_k w_k L_DPO(D_k), and a
    uniformly drawn micro-batch of the union estimates it without bias (exactly over a full epoch).
    """
    if len(sizes) != len(w):
        raise ValueError(f"{len(sizes)} datasets but {len(w)} weights")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"every dataset needs pairs; sizes {list(sizes)}")
    total = sum(sizes)
    return torch.cat([torch.full((n,), wk * total / n, dtype=torch.float32) for n, wk in zip(sizes, w)])


def modpo_margins(other_chosen: torch.Tensor, other_rejected: torch.Tensor, other_weights: Sequence[float]) -> torch.Tensor:
    """MODPO margin m_i = Σ_j w_j (r_j(x_i, y_w) − r_j(x_i, y_l)) over the other values j.

    `other_chosen` / `other_rejected`: (pairs × other values) rewards r_j of each pair's chosen / rejected response
    (reward-model scores, or implicit DPO rewards β log π_j/π_ref); `other_weights`: w_j, one per column.
    """
    w = torch.as_tensor(list(other_weights), dtype=torch.float32)
    if other_chosen.shape != other_rejected.shape or other_chosen.shape[-1] != len(w):
        raise ValueError(f"margin rewards {tuple(other_chosen.shape)} / {tuple(other_rejected.shape)} vs {len(w)} weights")
    return (other_chosen.float() - other_rejected.float()) @ w
