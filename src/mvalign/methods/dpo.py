"""Independent DPO value vectors, and the two methods that only combine them differently.

  dpo         one DPO vector per value (π_ref = the base model); each evaluated alone (ω = e_k).
  soup        the dpo vectors as soups: ω on the simplex (Rewarded / Personalized soups).
  mva-nohsic  the dpo vectors on MVA's extrapolation candidates (sweep.strategy): MVA without decorrelation,
              i.e. plain task arithmetic.
soup and mva-nohsic train nothing: they evaluate the dpo vectors, and share the dpo points already stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import RunConfig
from ..data import value_splits
from ..rundir import RunDir, value_seed
from ..store import AdapterRef, VectorRecord
from ..train.job import AdapterJob, finished, run_adapter_job
from .base import Method, each_alone, extrapolation, simplex, value_names


def train_vector(cfg: RunConfig, run: RunDir, value: str, *, force: bool = False, progress: bool = True,
                 group: str = "dpo") -> VectorRecord:
    """Train (or resume, or skip when finished) the plain DPO vector of one value under adapters/<group>/."""
    done = finished(run, AdapterRef(group, value))
    if done is not None and not force:
        return done
    splits = value_splits(cfg, value)
    job = AdapterJob(AdapterRef(group, value), value_seed(cfg.training.seed, value), build=lambda ctx: ctx.dpo(splits["train"]),
                     val_sets={value: splits["val"]})
    return run_adapter_job(cfg, run, job, force=force, progress=progress)


def train(cfg: RunConfig, run: RunDir, values: Sequence[str], force: bool, progress: bool,
          settings=None) -> list[VectorRecord]:
    return [train_vector(cfg, run, v, force=force, progress=progress) for v in (values or value_names(cfg))]


METHODS = [
    Method("dpo", "one independent DPO vector per value; each vector evaluated alone", "arXiv:2305.18290",
           each_alone("dpo"), train=train),
    Method("soup", "soups of the dpo vectors: ω on the simplex (sweep.simplex_step)", "arXiv:2306.04488",
           simplex("dpo"), vectors="dpo"),
    Method("mva-nohsic", "MVA without decorrelation: the dpo vectors on the extrapolation candidates (sweep.strategy)",
           "arXiv:2511.17579", extrapolation("dpo"), vectors="dpo"),
]
