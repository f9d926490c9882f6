"""MVA (arXiv:2511.17579): value decorrelation training + value combination extrapolation, and its ablations.

  mva         values in config order; the first vector is plain DPO (the dpo vector, reused when trained), each
              later vector θ_k is trained with L_DPO(θ_k; D_k) + α · Σ_{j<k} Σ_ℓ penalty(θ_k^ℓ, θ_j^ℓ) against the
              earlier, frozen vectors (methods.mva.penalty: HSIC or CKA by default; `train.decorrelation`).
              Candidates: W0 + Σ ω_k ΔW_k with ω from sweep.strategy (each ω_k chosen independently: the box).
  mva-orth    the same with the orthogonality penalty ‖ΔW_kᵀ ΔW_j‖_F² instead (orth-normalised when the mva
              penalty is scale-free (cka / orth-normalised), raw orth when it is hsic / orth).
  mva-convex  the mva vectors on the simplex only (no extrapolation).
  mva-paper   MVA as the authors' released code trains it (methods.mva-paper: raw HSIC between the lora_A matrices,
              rows paired by rank index, RBF σ = 1, tr(K H L H) / n², α = 10; earlier vectors frozen and not in the
              forward pass). The paper's text describes HSIC between whole value vectors (`mva` with
              target delta_w); SPEC.md, "MVA as published".
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import DecorrelationSettings, PaperDecorrelationSettings, RunConfig
from ..data import value_splits
from ..lora import load_lora_adapter
from ..rundir import RunDir, value_seed
from ..store import AdapterRef, VectorRecord
from ..train.decorrelation import DecorrelationLoss, PenaltySpec
from ..train.job import AdapterJob, finished, reuse, run_adapter_job
from ..train.losses import PenaltyTerm
from . import dpo
from .base import Method, extrapolation, in_order, simplex


def penalty_kind(dc: DecorrelationSettings, group: str) -> str:
    """The penalty `group` trains with: its block's, except mva-orth's orthogonality counterpart of it."""
    p = dc.penalty
    if group != "mva-orth":
        return p
    return "orth-normalised" if p in ("cka", "orth-normalised") else "orth"


def penalty_spec(dc: DecorrelationSettings, group: str) -> PenaltySpec:
    """What `group`'s later vectors are penalised with, from its block's settings."""
    return PenaltySpec(kind=penalty_kind(dc, group), target=dc.target, sigma=dc.sigma, rows=dc.rows,
                       denominator=dc.denominator)


def train_decorrelated(cfg: RunConfig, run: RunDir, group: str, value: str, frozen: list[str], force: bool,
                       progress: bool, dc: DecorrelationSettings) -> VectorRecord:
    done = finished(run, AdapterRef(group, value))
    if done is not None and not force:
        return done
    if not frozen:  # the first vector is plain DPO: the same training
        plain = None if force else finished(run, AdapterRef("dpo", value))
        return reuse(run, plain or dpo.train_vector(cfg, run, value, force=force, progress=progress), group)
    splits = value_splits(cfg, value)
    seed = value_seed(cfg.training.seed, value)
    spec = penalty_spec(dc, group)

    def build(ctx):
        earlier = [load_lora_adapter(run.adapter(AdapterRef(group, v)), v) for v in frozen]
        return ctx.dpo(splits["train"], extra=[PenaltyTerm(DecorrelationLoss(earlier, spec, dc.alpha, seed=seed))])

    settings = f"{spec.kind} on {dc.target}, sigma {dc.sigma}, alpha {dc.alpha:g}" + (
        f", / {dc.denominator}^2" if spec.kind == "hsic" else "")
    job = AdapterJob(AdapterRef(group, value), seed, build, val_sets={value: splits["val"]},
                     metrics={"decorrelated_against": ",".join(frozen), "penalty": spec.kind,
                              "penalty_settings": settings})
    return run_adapter_job(cfg, run, job, force=force, progress=progress)


def trainer(group: str):
    def train(cfg: RunConfig, run: RunDir, values: Sequence[str], force: bool, progress: bool,
              dc: DecorrelationSettings) -> list[VectorRecord]:
        return in_order(cfg, values, force,
                        lambda v, frozen, f: train_decorrelated(cfg, run, group, v, frozen, f, progress, dc))
    return train


METHODS = [
    Method("mva", "values in order, each later vector DPO + α·decorrelation (HSIC/CKA) against the earlier, frozen "
           "ones; extrapolation candidates (sweep.strategy)", "arXiv:2511.17579", extrapolation("mva"),
           train=trainer("mva"), settings=DecorrelationSettings),
    Method("mva-orth", "as mva with the orthogonality penalty instead of HSIC/CKA (the paper's ablation)",
           "arXiv:2511.17579", extrapolation("mva-orth"), train=trainer("mva-orth"), settings=DecorrelationSettings,
           block="mva"),
    Method("mva-paper", "MVA as the authors' released code: DPO + 10·HSIC on the lora_A rows (σ = 1, / n²) against the "
           "earlier, frozen vectors; extrapolation candidates (sweep.strategy)", "arXiv:2511.17579 (authors' code)",
           extrapolation("mva-paper"), train=trainer("mva-paper"), settings=PaperDecorrelationSettings),
    Method("mva-convex", "the mva vectors on the simplex only (no extrapolation; ablation)", "arXiv:2511.17579",
           simplex("mva"), vectors="mva"),
]
