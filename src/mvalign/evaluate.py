"""Evaluate one method: its candidates on val, the non-dominated ones (and the base model) on test, its front.

Read top to bottom: `evaluator` loads the model with the method's adapters, its judges and the val / test prompts
into one `Evaluator` (its `SweepContext` holds what every point is made and kept with); `evaluate_method` asks the
method's candidate source for its candidates on val (racing them first when `sweep.racing` says so, `mvalign.race`),
keeps the non-dominated ones, scores them (and the base) on test, and writes the `Front` (`mvalign.front`):
front-<method>.json, and front.json for the primary method. Points are stored under the method's vectors
(`front.store_key`), so methods evaluating the same vectors share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .candidates import Candidate, Candidates, FixedCandidates
from .combine import CombinedModel
from .config import ConfigError, RunConfig
from .data import eval_prompts
from .data.pairs import Prompt, Split
from .faults import reached
from .front import EvalSettings, Front, PerSplit, Training, store_key
from .generate import GenerationSettings
from .likelihood import LikelihoodAudits
from .lora import load_lora_adapter
from .methods import get_method, prepare_run
from .mixed import MixedLoRA
from .models import cache_root, load_model
from .pareto import non_dominated
from .race import dropped_points, race_val, racing_record
from .rewards import RewardModel, ScoreCache, load_audits, load_reward_models
from .rewards.base import prompt_text
from .rewards.rate import check_rates, measure_scores
from .rundir import RunDir
from .store import AdapterRef, PointRecord, RunStore
from .sweep import Passes, SweepContext, evaluate_points, point_key
from .track import log_front


def generation_settings(cfg: RunConfig) -> GenerationSettings:
    s = cfg.sweep
    return GenerationSettings(s.max_new_tokens, s.batch_size, s.do_sample, s.temperature, s.top_p, s.seed,
                              cfg.training.max_prompt_length)


@dataclass
class Evaluator:
    """One method's plan on one loaded model: evaluates its candidates (or the base) on a split's prompts, through
    the store (a point asked for twice is generated once)."""

    cfg: RunConfig
    plan: Candidates
    combined: CombinedModel | None
    """The loaded model with the adapters; None with the Ray backend (its workers hold the model)."""
    tokenizer: object
    ctx: SweepContext
    prompts: PerSplit[list[Prompt]]
    key: str
    """The store key of the points (`front.store_key`)."""
    progress: bool = True

    def points(self, cands: Sequence[Candidate], split: Split, progress: bool = False) -> list[PointRecord]:
        return evaluate_points(self.ctx, self.combined, self.tokenizer, cands, method=self.key, split=split,
                               prompts=self.prompts.of(split), progress=progress)

    def base(self, split: Split) -> PointRecord:
        values = [v.name for v in self.cfg.values]
        return evaluate_points(self.ctx, self.combined, self.tokenizer, [Candidate({v: 0.0 for v in values}, {})],
                               method="base", split=split, prompts=self.prompts.of(split), progress=self.progress)[0]

    def stored(self, cand: Candidate, split: Split) -> PointRecord | None:
        """The candidate's full record on `split` if the store holds it under this evaluator's settings (nothing is
        generated)."""
        key = self.ctx.key(self.prompts.of(split))
        return self.ctx.store.get_point(self.key, dict(cand.label), split, point_key(key, cand))

    def points_on(self, cands: Sequence[Candidate], a: int, b: int) -> list[PointRecord]:
        """The candidates' records on val prompts [a, b) (a race's chunks; through the store)."""
        return evaluate_points(self.ctx, self.combined, self.tokenizer, cands, method=self.key, split=f"val[{a}:{b}]",
                               prompts=self.prompts.val[a:b], progress=False, whole=self.prompts.val)

    def reset(self) -> None:
        """Move the loaded model (if this process holds one) back to its base weights."""
        if self.combined is not None:
            self.combined.reset()

    def close(self) -> None:
        """Stop the Ray workers, if any (the local model is freed with the evaluator)."""
        if self.ctx.backend is not None:
            self.ctx.backend.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def racing(self, cands: Sequence[Candidate]) -> bool:
        mode = self.cfg.sweep.racing
        return mode == "on" or (mode == "auto" and isinstance(self.plan.source, FixedCandidates) and len(cands) >= 16)

    def scores(self, rec: PointRecord, split: Split) -> dict[str, np.ndarray]:
        """Per-prompt scores of a point's responses, per value (from the score cache), in prompt order."""
        prompts = self.prompts.of(split)
        return {name: measure_scores(rm, prompts, rec.responses, self.ctx.cache) for name, rm in self.ctx.rewards.items()}


def evaluator(cfg: RunConfig, method: str, progress: bool = True,
              rewards: dict[str, RewardModel] | None = None) -> Evaluator:
    """Load the base model with the adapters `method` evaluates (in this process, or on the Ray workers with
    `sweep.backend: ray`), its judges and the val / test prompts."""
    m = get_method(method)
    run = prepare_run(cfg)
    plan = m.plan(cfg, run)
    missing = [str(run.adapter(r)) for r in plan.refs if not run.adapter(r).is_dir()]
    if missing:
        raise ConfigError(f"{method}: adapters not trained yet: {missing}; run `mvalign train CONFIG --method {method}`")
    likelihood = LikelihoodAudits.from_config(cfg)
    if likelihood is not None and cfg.sweep.backend == "ray":  # before any generation, not after it
        raise ConfigError("values.*.audits: truthfulqa-mc scores the model in this process; use sweep.backend: local")
    rewards = rewards if rewards is not None else load_reward_models(cfg)
    cache = ScoreCache(cache_root(cfg.cache_dir) / "reward_scores.sqlite")
    s = cfg.sweep
    mixed = s.mixed_batching and s.combination == "exact" and not s.do_sample
    prompts = PerSplit(*(eval_prompts(cfg, split, getattr(s, f"{split}_prompts")) for split in ("val", "test")))
    combined, tokenizer, backend = None, None, None
    if s.backend == "ray":  # the workers load the model; this process only groups tasks, scores and stores
        from .scaleout import RayBackend

        passes = Passes(None, s.rows_per_pass, s.points_per_pass) if mixed else None
        backend = RayBackend(cfg, [(r.name, str(run.adapter(r))) for r in plan.refs],
                             (s.rows_per_pass, s.points_per_pass) if mixed else None,
                             check=lambda fp, dtype, where: run.check_fingerprint(fp, dtype, cfg.model.name, where))
    else:
        model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
        run.check_base(model, cfg.model.name)
        combined = CombinedModel(model, [load_lora_adapter(run.adapter(r), r.name) for r in plan.refs],
                                 cfg.sweep.combination)
        passes = Passes(MixedLoRA(model, combined.adapters), s.rows_per_pass, s.points_per_pass) if mixed else None
    audits = load_audits(cfg)
    check_rates({**rewards, **audits}, {"val": prompts.val, "test": prompts.test})
    ctx = SweepContext(rewards, generation_settings(cfg), run.store(), cache, cfg.sweep.bootstrap,
                       cfg.model.chat_template == "auto", passes, backend, audits=audits, likelihood=likelihood)
    return Evaluator(cfg, plan, combined, tokenizer, ctx, prompts, store_key(plan.vectors, s.combination), progress)


def evaluate_method(cfg: RunConfig, method: str, progress: bool = True, primary: bool = True,
                    rewards: dict[str, RewardModel] | None = None) -> Front:
    """Evaluate the method's candidates on val, select the non-dominated ones, score them (and the base) on test,
    write front-<method>.json (and front.json when `primary`) and return the front. `rewards`: judges already
    loaded (default: load them from the config)."""
    run = RunDir.of(cfg)
    with run.lock(f"evaluate-{method}", f"evaluating {method}"):
        return _evaluate(cfg, method, progress, primary, rewards)


def _evaluate(cfg: RunConfig, method: str, progress: bool, primary: bool, rewards) -> Front:
    from .probes import run_probes

    with evaluator(cfg, method, progress, rewards) as ev:
        run_probes(cfg, ev.ctx.measures())  # before any sweep: a measure that mis-orders the obvious stops here
        return _evaluate_with(ev, cfg, method, primary)


def _evaluate_with(ev: Evaluator, cfg: RunConfig, method: str, primary: bool) -> Front:
    values = [v.name for v in cfg.values]
    base = {s: ev.base(s) for s in ("val", "test")}
    cands = ev.plan.source.run(lambda cs: ev.points(cs, "val"))
    raced = race_val(ev, cands) if ev.racing(cands) else None
    if raced is not None:
        cands = raced.survivors
    val = ev.points(cands, "val", ev.progress)
    usable = [(c, p) for c, p in zip(cands, val) if not p.flag]  # degenerate models are never selected
    if not usable:
        raise ConfigError(f"{method}: none of its {len(val)} candidates is a usable model" + (
            f" (every one flagged degenerate, e.g. {val[0].flag}); lower the weights in sweep.grid" if val else
            " (no candidate other than the base model); check sweep.grid / sweep.points"))
    mask = non_dominated([[p.rewards[v] for v in values] for _, p in usable]) if usable else []
    chosen = [c for (c, _), keep in zip(usable, mask) if keep]
    test = ev.points(chosen, "test", ev.progress)
    ev.reset()
    label = store_key(method, cfg.sweep.combination)
    front = Front.build(values, label, val, test, base["val"], base["test"], cfg.sweep.reference_point, ev.key)
    passes = ev.ctx.passes
    front.settings = EvalSettings(len(ev.prompts.val), len(ev.prompts.test), ev.ctx.generation.as_dict(),
                                  ev.plan.label, cfg.sweep.combination, ev.plan.vectors,
                                  None if passes is None else {"rows_per_pass": passes.rows, "points_per_pass": passes.points},
                                  backend_settings(ev.ctx.backend))
    front.prompts = PerSplit(*([prompt_text(p) for p in ev.prompts.of(s)] for s in ("val", "test")))
    if raced is not None:
        front.racing = racing_record(cfg.sweep, raced, dropped_points(ev, raced, base["val"].scores))
    front.training = training_compute(ev.ctx.store, ev.plan.refs)
    RunDir.of(cfg).write_front(front, label, primary)
    reached("front")
    log_front(cfg, RunDir.of(cfg), label, front)
    return front


def backend_settings(backend) -> dict:
    """Where the points were generated: this process, or Ray workers (how many, how many were replaced)."""
    if backend is None:
        return {"kind": "local"}
    return {"kind": "ray", "workers": backend.settings.workers, "replaced_workers": backend.restarts}


def training_compute(store: RunStore, refs: list[AdapterRef]) -> Training:
    """Optimizer steps, tokens and wall seconds summed over the adapters a method's candidates use."""
    recs = [r for r in (store.get_vector(ref) for ref in refs) if r is not None]
    return Training(len(recs), sum(r.steps for r in recs), sum(float(r.metrics.get("train_tokens", 0.0)) for r in recs),
                    sum(r.seconds for r in recs))
