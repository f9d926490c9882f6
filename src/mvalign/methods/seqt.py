"""DPO-SeqT (a baseline of the MVA paper, arXiv:2511.17579): DPO on value 1, then continued with DPO on value 2, ...

Stage 1 is the dpo vector of the first value (reused when trained); stage k starts from stage k−1's adapter and
trains on D_k (π_ref = the base model in every stage). adapters/seqt/<value k> is the model after stage k, and each
stage is a candidate, labelled by the values its data has covered (1 for the first k values, 0 after).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..candidates import Candidate, Candidates, FixedCandidates
from ..config import RunConfig
from ..data import value_splits
from ..rundir import RunDir, value_seed
from ..store import AdapterRef, VectorRecord
from ..train.job import AdapterJob, finished, reuse, run_adapter_job
from . import dpo
from .base import Method, in_order, value_names


def train_stage(cfg: RunConfig, run: RunDir, value: str, earlier: list[str], force: bool, progress: bool) -> VectorRecord:
    done = finished(run, AdapterRef("seqt", value))
    if done is not None and not force:
        return done
    if not earlier:
        plain = None if force else finished(run, AdapterRef("dpo", value))
        return reuse(run, plain or dpo.train_vector(cfg, run, value, force=force, progress=progress), "seqt")
    splits = value_splits(cfg, value)
    job = AdapterJob(AdapterRef("seqt", value), value_seed(cfg.training.seed, f"seqt:{value}"),
                     build=lambda ctx: ctx.dpo(splits["train"]), val_sets={value: splits["val"]},
                     init_from=run.adapter(AdapterRef("seqt", earlier[-1])),
                     metrics={"continued_from": earlier[-1]})
    return run_adapter_job(cfg, run, job, force=force, progress=progress)


def train(cfg: RunConfig, run: RunDir, values: Sequence[str], force: bool, progress: bool,
          settings=None) -> list[VectorRecord]:
    return in_order(cfg, values, force, lambda v, earlier, f: train_stage(cfg, run, v, earlier, f, progress))


def stages(cfg: RunConfig, run: RunDir, settings=None) -> Candidates:
    values = value_names(cfg)
    points = [Candidate({u: float(j <= k) for j, u in enumerate(values)}, {v: 1.0}) for k, v in enumerate(values)]
    return Candidates("seqt", values, FixedCandidates(points), "stages")


METHODS = [
    Method("seqt", "DPO on each value in turn, continuing the previous stage's adapter; each stage evaluated",
           "arXiv:2511.17579 (baseline)", stages, train=train, kind="stages"),
]
