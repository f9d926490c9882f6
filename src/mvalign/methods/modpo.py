"""MODPO (arXiv:2310.03708): one model per preference weight w, trained on the first value's data D_1 with the other
values entering as a margin:

    −log σ( (1/w_1) [ β Δlog(π/π_ref) − Σ_{j>1} w_j (r_j(x, y_w) − r_j(x, y_l)) ] ),

r_j the implicit reward β log π_j/π_ref of value j's dpo vector (default; trained first when missing), or value j's
reward model (`methods.modpo.margin: reward`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import ConfigError, ModpoSettings, RunConfig
from ..data import value_splits
from ..data.pairs import PreferencePair
from ..devices import autocast_dtype
from ..lora import attached
from ..rundir import RunDir
from ..store import AdapterRef, VectorRecord
from ..train.dpo import modpo_margins
from ..train.logprobs import compute_logprobs, reference_logprobs
from ..train.tokenize import TokenizedPair
from . import dpo
from .base import Method, value_names
from .perweight import per_weight_models, train_per_weight


def margins(cfg: RunConfig, run: RunDir, model, tok: Sequence[TokenizedPair], pad: int, pairs: Sequence[PreferencePair],
            others: Sequence[str], w: dict[str, float], cache, only: Sequence[int] | None = None,
            margin: str = "implicit") -> torch.Tensor:
    """m_i = Σ_j w_j (r_j(x, y_w) − r_j(x, y_l)) over the other values j, computed on the plain base `model`;
    `only`: for these pairs (those the training visits), NaN for the others."""
    idx = list(range(len(pairs))) if only is None else sorted(set(only))
    cols_c, cols_r = [], []
    if margin == "reward":
        from ..rewards import load_train_judges

        rewards = load_train_judges(cfg)
        text = [pairs[i].prompt for i in idx]
        for j in others:
            cols_c.append(torch.as_tensor(rewards[j].score(text, [pairs[i].chosen for i in idx]), dtype=torch.float32))
            cols_r.append(torch.as_tensor(rewards[j].score(text, [pairs[i].rejected for i in idx]), dtype=torch.float32))
    else:
        d = cfg.training
        autocast = autocast_dtype(d.precision, next(model.parameters()).device)
        ref_c, ref_r = reference_logprobs(model, tok, pad, cache, d.batch_size * 2, autocast, only)
        for j in others:
            with attached(model, run.adapter(AdapterRef("dpo", j))) as pj:
                pol_c, pol_r = compute_logprobs(pj, [tok[i] for i in idx], pad, d.batch_size * 2, autocast,
                                                desc=f"implicit {j} rewards")
            cols_c.append(d.beta * (pol_c - ref_c[idx]))
            cols_r.append(d.beta * (pol_r - ref_r[idx]))
    out = torch.full((len(pairs),), float("nan"))
    out[idx] = modpo_margins(torch.stack(cols_c, 1), torch.stack(cols_r, 1), [w[j] for j in others])
    return out


def train(cfg: RunConfig, run: RunDir, values: Sequence[str], force: bool, progress: bool,
          settings: ModpoSettings) -> list[VectorRecord]:
    names = value_names(cfg)
    first, others = names[0], names[1:]
    if settings.margin == "implicit" and not values:
        dpo.train(cfg, run, others, False, progress)
    splits = {v: value_splits(cfg, v) for v in names}

    def job_for(w, job):
        if w[first] <= 0:
            raise ConfigError(f"modpo trains on {first!r} data and scales by 1/w_{first}: every weight needs "
                              f"{first} > 0, got {w}")
        pairs = splits[first]["train"]

        def build(ctx):
            tok = ctx.tokenize(pairs)
            m = margins(cfg, run, ctx.model, tok, ctx.pad, pairs, others, w, ctx.cache, ctx.visited(len(tok)),
                        settings.margin)
            return ctx.dpo(pairs, margins=m, scale=1.0 / w[first], tokenized=tok)

        job.build = build
        job.val_sets = {first: splits[first]["val"]}
        return job

    return train_per_weight(cfg, run, "modpo", settings, values, force, progress, job_for)


METHODS = [
    Method("modpo", "one model per preference weight on the first value's data, the other values as a margin "
           "(implicit DPO rewards or reward models: methods.modpo.margin)", "arXiv:2310.03708",
           per_weight_models("modpo"), train=train, kind="per-weight", settings=ModpoSettings),
]
