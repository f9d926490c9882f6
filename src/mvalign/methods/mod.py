"""Decode-time fusion of value vectors (MOD, arXiv:2406.18853): the third combination mode beside weight space (mva,
soups) and prompt conditioning (ric), on the same ω as the weight combinations so all three share one front.

  mod       the dpo vectors (independent per-value DPO, as the MOD paper fuses separately trained models), each
            point ω decoded with next-token logits Σ_k ω_k · logits(W0 + ΔW_k) (`mvalign.fusion`); ω from
            sweep.strategy, as mva-nohsic (the same vectors combined in weight space).
  mod-mva   the same fusion of the mva (decorrelated) vectors, beside mva.
A point is n models read together, not one model: it is evaluated (and its TruthfulQA likelihood audited) as the
fused policy, and cannot be exported or served as merged weights.
"""

from __future__ import annotations

from ..candidates import Candidates, DecodingFusion
from ..config import RunConfig
from ..rundir import RunDir
from .base import CandidatesFn, Method, extrapolation


def fusion(vectors: str) -> CandidatesFn:
    """`vectors`' extrapolation candidates (sweep.strategy), each read as a decode-time fusion."""
    weights = extrapolation(vectors)

    def build(cfg: RunConfig, run: RunDir, settings=None) -> Candidates:
        plan = weights(cfg, run, settings)
        return Candidates(plan.vectors, plan.adapters, DecodingFusion(plan.source), f"{plan.label}, decode-time fusion",
                          fused=True)
    return build


METHODS = [
    Method("mod", "decode-time fusion of the dpo vectors: next-token logits Σ ω_k·logits(W0 + ΔW_k), ω from "
           "sweep.strategy", "arXiv:2406.18853", fusion("dpo"), vectors="dpo", fused=True),
    Method("mod-mva", "decode-time fusion of the mva vectors (as mod)", "arXiv:2406.18853", fusion("mva"),
           vectors="mva", fused=True),
]
