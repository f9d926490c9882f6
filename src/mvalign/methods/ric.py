"""Rewards-in-Context (RiC; Yang et al., arXiv:2402.10207): one model that is told, in its prompt, which rewards to
aim for.

Training (the paper's offline stage). Every value's train pairs give two SFT examples each, the chosen and the
rejected response, scored by every value's judge r_k. Scores are normalised per value over all these responses,
ẑ_k = round((r_k − mean_k) / std_k, decimals), and written after the last user turn as

    <helpful: 0.6> <harmless: -0.1>

The model (one LoRA adapter, adapters/ric/ric) is trained with the SFT loss on the response tokens,
−Σ_t log π(y_t | x ⊕ tags(ẑ), y_<t) / #tokens (`train.losses.SFTTerm`). The paper's online augmentation stage is
not implemented.

Inference. A preference w on the simplex becomes target rewards by the paper's mapping (its code calls it
'linf'), with low_k / high_k the minimum / maximum of ẑ_k over the training responses and n values:

    k* = argmax_k w_k:  target_k* = high_k*
    k ≠ k*:             target_k  = low_k + min(n · w_k, 1) · (high_k − low_k)

each rounded to `decimals`. So at w = (1/n, ..., 1/n) every value asks for its maximum, and a value whose weight
shrinks asks for less. Each w is one candidate: the same adapter, a prompt transform writing its targets; the
front reports w, and the judges score the responses against the original prompts.

Budget (matched with n value vectors of S DPO steps at batch B pairs): n·S SFT steps at batch 2B responses, since
a DPO pair is two sequences (`methods.ric.steps` / `batch_size` change it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..candidates import Candidate, Candidates, FixedCandidates, PromptTransform, simplex_points
from ..config import ConfigError, RunConfig
from ..data import value_splits
from ..data.pairs import Prompt
from ..models import cache_root
from ..rundir import RunDir, value_seed
from ..store import AdapterRef, VectorRecord
from ..train.job import AdapterJob, finished, run_adapter_job
from ..train.losses import sft_objective
from ..train.tokenize import tokenize_sequences
from .base import Method, value_names

ADAPTER = "ric"


class RiCSettings(BaseModel):
    """The `methods.ric` block of a config."""

    model_config = ConfigDict(extra="forbid")
    steps: int | None = Field(None, ge=1, description="SFT optimizer steps (null = n_values × training.max_steps).")
    batch_size: int | None = Field(None, ge=1, description="Responses per step (null = 2 × training.batch_size).")
    lr: float | None = Field(None, gt=0, description="Learning rate (null = training.lr).")
    decimals: int = Field(1, ge=0, le=4, description="Decimals of the rewards written in the prompt (paper: 1).")


def reward_tags(rewards: Mapping[str, float], decimals: int) -> str:
    """'<helpful: 0.6> <harmless: -0.1>' (values in the given order)."""
    return " ".join(f"<{k}: {round(float(x), decimals) + 0.0:.{decimals}f}>" for k, x in rewards.items())


def with_tags(prompt: Prompt, tags: str) -> Prompt:
    """The prompt with `tags` appended to its last user turn (a plain-text prompt: appended on a new line)."""
    if isinstance(prompt, str):
        return f"{prompt}\n{tags}"
    msgs = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=len(msgs) - 1)
    msgs[last]["content"] = f"{msgs[last]['content']}\n{tags}"
    return tuple(msgs)


def normalise(scores: Mapping[str, np.ndarray], decimals: int) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Per value: ẑ = round((r − mean) / std, decimals) over all training responses, and its statistics."""
    out, stats = {}, {}
    for k, r in scores.items():
        r = np.asarray(r, dtype=np.float64)
        mean, std = float(r.mean()), float(r.std())
        z = np.round((r - mean) / (std if std > 0 else 1.0), decimals)
        out[k] = z
        stats[k] = {"mean": mean, "std": std, "low": float(z.min()), "high": float(z.max())}
    return out, stats


def target_rewards(w: Mapping[str, float], stats: Mapping[str, Mapping[str, float]], decimals: int) -> dict[str, float]:
    """The paper's preference-to-reward mapping ('linf'; see the module docstring)."""
    names = list(w)
    n, top = len(names), max(names, key=lambda k: w[k])  # first maximum, as numpy's argmax
    out = {}
    for k in names:
        low, high = stats[k]["low"], stats[k]["high"]
        out[k] = round(high if k == top else low + min(n * w[k], 1.0) * (high - low), decimals)
    return out


def _examples(cfg: RunConfig) -> tuple[list[Prompt], list[str]]:
    prompts, responses = [], []
    for v in value_names(cfg):
        for p in value_splits(cfg, v)["train"]:
            prompts += [p.prompt, p.prompt]
            responses += [p.chosen, p.rejected]
    return prompts, responses


def train(cfg: RunConfig, run: RunDir, values: Sequence[str], force: bool, progress: bool,
          s: RiCSettings) -> list[VectorRecord]:
    if values:
        raise ConfigError("ric trains one model on every value's data; run it without --value")
    done = finished(run, AdapterRef(ADAPTER, ADAPTER))
    if done is not None and not force:
        return [done]
    from ..rewards import ScoreCache, load_train_judges

    names = value_names(cfg)
    prompts, responses = _examples(cfg)
    if not prompts:
        raise ConfigError("ric: the values have no training pairs")
    judges = load_train_judges(cfg)
    cache = ScoreCache(cache_root(cfg.cache_dir) / "reward_scores.sqlite")
    z, stats = normalise({k: cache.score(judges[k], prompts, responses) for k in names}, s.decimals)
    shown = [with_tags(p, reward_tags({k: z[k][i] for k in names}, s.decimals)) for i, p in enumerate(prompts)]

    def build(ctx):
        d = ctx.settings
        seqs = tokenize_sequences(ctx.tokenizer, list(zip(shown, responses, strict=True)), d.max_length,
                                  d.max_prompt_length, ctx.chat)
        return sft_objective(seqs)

    steps = s.steps or (len(names) * cfg.training.max_steps if cfg.training.max_steps else None)
    overrides = {"batch_size": s.batch_size or 2 * cfg.training.batch_size, **({"max_steps": steps} if steps else {}),
                 **({"lr": s.lr} if s.lr else {})}
    job = AdapterJob(AdapterRef(ADAPTER, ADAPTER), value_seed(cfg.training.seed, "ric"), build, overrides=overrides,
                     metrics={"reward_stats": json.dumps(stats), "decimals": s.decimals})
    return [run_adapter_job(cfg, run, job, force=force, progress=progress)]


def candidates(cfg: RunConfig, run: RunDir, settings: RiCSettings) -> Candidates:
    """One prompt transform per preference weight on the simplex (sweep.simplex_step), all on the one adapter."""
    names = value_names(cfg)
    rec = run.store().get_vector(AdapterRef(ADAPTER, ADAPTER))
    if rec is None or "reward_stats" not in rec.metrics:
        raise ConfigError(f"ric: no trained model in {run.root}; run `mvalign train CONFIG --method ric`")
    stats, decimals = json.loads(rec.metrics["reward_stats"]), int(rec.metrics["decimals"])
    if sorted(stats) != sorted(names):
        raise ConfigError(f"ric: the model was trained for the values {sorted(stats)}, the config has {names}")
    points = []
    for w in simplex_points(names, cfg.sweep.simplex_step):
        tags = reward_tags(target_rewards(w, stats, decimals), decimals)
        transform = PromptTransform(f"ric:{tags}", lambda p, t=tags: with_tags(p, t))
        points.append(Candidate(dict(w), {ADAPTER: 1.0}, transform))
    return Candidates(ADAPTER, [ADAPTER], FixedCandidates(points), "ric: preference → target rewards in the prompt")


METHODS = [
    Method("ric", "one model, SFT on chosen and rejected responses with their per-value rewards in the prompt; "
           "candidates: each simplex preference w mapped to target rewards in the prompt (sweep.simplex_step)",
           "arXiv:2402.10207", candidates, train=train, kind="single", settings=RiCSettings),
]
