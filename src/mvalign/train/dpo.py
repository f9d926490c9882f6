"""The DPO objective (with the optional per-pair weight and margin other methods plug in)."""

from __future__ import annotations

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
) -> DPOOutput:
    """L = mean_i w_i · −log σ( β[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))] − m_i ).

    All inputs are per-pair summed response log-probs. `weights` w_i (default 1) scale each pair's loss (soft
    value-consistency weighting); the mean is over pairs, so a pair of weight 0 contributes nothing and the scale of
    the weights matters. `margins` m_i (default 0) are subtracted inside the sigmoid (MODPO's margin term).
    """
    chosen_rewards = beta * (policy_chosen - ref_chosen)
    rejected_rewards = beta * (policy_rejected - ref_rejected)
    logits = chosen_rewards - rejected_rewards
    if margins is not None:
        logits = logits - margins
    losses = -F.logsigmoid(logits)
    if weights is not None:
        losses = losses * weights
    return DPOOutput(losses.mean(), chosen_rewards.detach(), rejected_rewards.detach())
