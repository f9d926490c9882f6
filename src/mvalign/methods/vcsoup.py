"""VC-soup: value-consistency filtering, independent DPO vectors on the kept pairs, soups, Pareto filtering.

Every training pair of value k is scored by all values' judges; pairs whose z-normalised reward-gap vector points
away from the all-ones direction are dropped (VC < τ), or the top quantile is kept, or every pair's DPO loss is
weighted by (1 + VC)/2 (`methods.vcsoup`; `mvalign.consistency`). One DPO vector per value on what is kept,
then soups: ω on the simplex (sweep.simplex_step). Never reuses the plain dpo vectors (other data).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import ConfigError, ConsistencySettings, RunConfig
from ..consistency import consistency_for_value, select
from ..data import value_splits
from ..rundir import RunDir, value_seed
from ..store import AdapterRef, VectorRecord
from ..train.job import AdapterJob, finished, run_adapter_job
from .base import Method, simplex, value_names


def train(cfg: RunConfig, run: RunDir, values: Sequence[str], force: bool, progress: bool,
          c: ConsistencySettings) -> list[VectorRecord]:
    rewards = None
    out = []
    for value in values or value_names(cfg):
        done = finished(run, AdapterRef("vcsoup", value))
        if done is not None and not force:
            out.append(done)
            continue
        if rewards is None:
            from ..rewards import load_train_judges

            rewards = load_train_judges(cfg)
        splits = value_splits(cfg, value)
        keep, weights = select(consistency_for_value(cfg, value, splits["train"], c, rewards)["vc"], c.mode, c.tau,
                               c.quantile)
        if not len(keep):
            raise ConfigError(f"consistency filter keeps no {value!r} training pair (mode {c.mode}); lower "
                              "methods.vcsoup.tau")
        pairs = [splits["train"][i] for i in keep]
        pair_weights = torch.tensor(weights, dtype=torch.float32) if c.mode == "soft" else None
        job = AdapterJob(AdapterRef("vcsoup", value), value_seed(cfg.training.seed, value),
                         build=lambda ctx, pairs=pairs, w=pair_weights: ctx.dpo(pairs, weights=w),
                         val_sets={value: splits["val"]},
                         metrics={"consistency_mode": c.mode, "pairs_before_filter": len(splits["train"])})
        out.append(run_adapter_job(cfg, run, job, force=force, progress=progress))
    return out


METHODS = [
    Method("vcsoup", "DPO vectors on value-consistency-filtered (or soft-weighted) pairs; soups on the simplex",
           "VC-soup (Xu et al.; the seed abstract gives no arXiv id)", simplex("vcsoup"), train=train,
           settings=ConsistencySettings),
]
