"""Loss terms a method composes into its training objective; the training loop only sums them.

An `Objective` is the training examples, how to pad them into a micro-batch, and a list of terms. Each term maps
(model, batch, pair indices, global micro-batch index) to (scalar loss, numbers to log); the loop adds the terms,
divides by grad_accum and steps. Terms:

  DPOTerm    mean_i w_i · −log σ(c · [β((log π − log π_ref)(y_w) − (log π − log π_ref)(y_l)) − m_i])
             (`train.dpo.dpo_loss`; per-pair weights w, margins m and logit scale c are optional);
  SFTTerm    −Σ_t log π(y_t | x, y_<t) / (number of response tokens in the micro-batch): token-mean NLL of the
             responses only (prompt tokens never count);
  PenaltyTerm  α · penalty(model) for a penalty that reads the live adapter, e.g. MVA's decorrelation
             (`train.decorrelation.DecorrelationLoss`), which ignores the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .dpo import dpo_loss
from .logprobs import pair_logprobs, sequence_logprobs
from .tokenize import TokenizedPair, TokenizedSequence, collate_pairs, collate_sequences

Batch = dict[str, torch.Tensor]
LossTerm = Callable[[torch.nn.Module, Batch, torch.Tensor, int], tuple[torch.Tensor, dict[str, float]]]
"""(model, batch on the device, indices of the batch's examples (CPU), global micro-batch index) -> (loss, logs)."""


@dataclass
class Objective:
    """What one adapter is trained on: examples, their collate function and the loss terms to sum."""

    examples: Sequence
    collate: Callable[[Sequence, int], Batch]
    terms: list[LossTerm] = field(default_factory=list)


@dataclass
class DPOTerm:
    """DPO against cached reference log-probs (one row per training pair); see `train.dpo.dpo_loss`."""

    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    beta: float
    weights: torch.Tensor | None = None
    margins: torch.Tensor | None = None
    scale: float = 1.0

    def __call__(self, model, batch, idx, micro):
        dev = batch["input_ids"].device

        def take(t):
            return None if t is None else t[idx].to(dev)

        pol_c, pol_r = pair_logprobs(model, batch)
        out = dpo_loss(pol_c, pol_r, take(self.ref_chosen), take(self.ref_rejected), self.beta,
                       weights=take(self.weights), margins=take(self.margins), scale=self.scale)
        return out.loss, {"dpo_loss": out.loss.item(), "accuracy": out.accuracy.item(), "margin": out.margin.item(),
                          "chosen_reward": out.chosen_rewards.mean().item(),
                          "rejected_reward": out.rejected_rewards.mean().item()}


@dataclass
class SFTTerm:
    """Token-mean negative log-likelihood of the response tokens of a batch built by `collate_sequences`."""

    def __call__(self, model, batch, idx, micro):
        logps = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        tokens = batch["response_mask"][:, 1:].sum().clamp_min(1)
        loss = -logps.sum() / tokens
        return loss, {"sft_loss": loss.item()}


@dataclass
class PenaltyTerm:
    """A penalty on the adapter itself: `penalty(model, micro) -> (loss, logs)` (the batch is not read)."""

    penalty: Callable[[torch.nn.Module, int], tuple[torch.Tensor, dict[str, float]]]
    autocast = False
    """Computed in the factors' own precision, never under the forward pass's bf16 autocast."""

    def __call__(self, model, batch, idx, micro):
        return self.penalty(model, micro)


def dpo_objective(pairs: Sequence[TokenizedPair], ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
                  *, weights: torch.Tensor | None = None, margins: torch.Tensor | None = None, scale: float = 1.0,
                  extra: Sequence[LossTerm] = ()) -> Objective:
    """DPO on tokenized pairs (plus any extra terms)."""
    n = len(pairs)
    for name, t in (("reference log-probs", ref_chosen), ("reference log-probs", ref_rejected),
                    ("pair weights", weights), ("pair margins", margins)):
        if t is not None and t.shape[0] != n:
            raise ValueError(f"{name} cover {t.shape[0]} pairs, the data has {n}")
    return Objective(list(pairs), collate_pairs, [DPOTerm(ref_chosen, ref_rejected, beta, weights, margins, scale), *extra])


def sft_objective(sequences: Sequence[TokenizedSequence], extra: Sequence[LossTerm] = ()) -> Objective:
    """Supervised fine-tuning on tokenized (prompt, response) sequences (plus any extra terms)."""
    return Objective(list(sequences), collate_sequences, [SFTTerm(), *extra])
