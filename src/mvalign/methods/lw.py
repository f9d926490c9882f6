"""DPO-LW, loss weighting (a baseline of the MVA paper, arXiv:2511.17579): one model per preference weight w,
trained on the union of the values' data with loss Σ_k w_k L_DPO(D_k).

A uniformly drawn micro-batch of the union with per-pair weights w_k · N / N_k (`train.dpo.
loss_weighting_pair_weights`) estimates that loss without bias (exactly over a full epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import PerWeightSettings, RunConfig
from ..data import value_splits
from ..rundir import RunDir
from ..store import VectorRecord
from ..train.dpo import loss_weighting_pair_weights
from .base import Method, value_names
from .perweight import per_weight_models, train_per_weight


def train(cfg: RunConfig, run: RunDir, values: Sequence[str], force: bool, progress: bool,
          settings: PerWeightSettings) -> list[VectorRecord]:
    names = value_names(cfg)
    splits = {v: value_splits(cfg, v) for v in names}

    def job_for(w, job):
        use = [v for v in names if w[v] > 0]
        pairs = [p for v in use for p in splits[v]["train"]]
        weights = loss_weighting_pair_weights([len(splits[v]["train"]) for v in use], [w[v] for v in use])
        job.build = lambda ctx: ctx.dpo(pairs, weights=weights)
        job.val_sets = {v: splits[v]["val"] for v in names}
        return job

    return train_per_weight(cfg, run, "lw", settings, values, force, progress, job_for)


METHODS = [
    Method("lw", "one model per preference weight w (methods.lw.weights) on Σ_k w_k L_DPO(D_k)",
           "arXiv:2511.17579 (baseline)", per_weight_models("lw"), train=train, kind="per-weight",
           settings=PerWeightSettings),
]
