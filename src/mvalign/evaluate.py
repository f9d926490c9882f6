"""Evaluate one method: its candidates on val, the non-dominated ones (and the base model) on test, its front.

Selection on val, report on test: every candidate the method's source yields is generated and scored on the val
prompts; the non-dominated ones are scored on the test prompts; front-<method>.json is written (and front.json for
the primary method). Points are stored under the method's vectors (`Candidates.vectors`), so methods evaluating
the same vectors share them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .candidates import Candidate, Candidates, FixedCandidates
from .combine import CombinedModel
from .config import ConfigError, MVAConfig
from .data import load_value_splits
from .data.pairs import Prompt, Split
from .faults import reached
from .generate import GenerationSettings
from .lora import load_lora_adapter
from .methods import get_method, prepare_run
from .mixed import MixedLoRA
from .models import cache_root, load_model
from .pareto import non_dominated
from .race import RaceResult, joined, race
from .report import build_front, write_front
from .rewards import RewardModel, ScoreCache, load_reward_models
from .rewards.base import prompt_text
from .rundir import RunDir
from .stats import change_vs_base
from .store import PointRecord, RunStore
from .sweep import Passes, evaluate_points, point_key, settings_key
from .track import log_front


def eval_prompts(cfg: MVAConfig, split: Split, n: int) -> list[Prompt]:
    """Held-out prompts: the union of every value's `split` prompts (deduplicated), shuffled by the sweep seed, first n."""
    seen: dict[str, Prompt] = {}
    for v in cfg.values:
        for p in load_value_splits(v.data, v.name, cfg.split.seed, cfg.split.train, cfg.split.val)[split]:
            seen.setdefault(p.prompt_key, p.prompt)
    keys = sorted(seen)
    random.Random(cfg.sweep.seed).shuffle(keys)
    if not keys:
        raise ConfigError(f"no {split} prompts: enlarge split.{split}")
    return [seen[k] for k in keys[:n]]


def generation_settings(cfg: MVAConfig) -> GenerationSettings:
    s = cfg.sweep
    return GenerationSettings(s.max_new_tokens, s.batch_size, s.do_sample, s.temperature, s.top_p, s.seed,
                              cfg.dpo.max_prompt_length)


@dataclass
class Evaluator:
    """One method's plan on one loaded model: evaluates its candidates (or the base) on a split's prompts, through
    the store (a point asked for twice is generated once)."""

    cfg: MVAConfig
    plan: Candidates
    combined: CombinedModel | None
    """The loaded model with the adapters; None with the Ray backend (its workers hold the model)."""
    tokenizer: object
    common: dict
    prompts: dict[str, list[Prompt]]
    key: str
    """The store key of the points: the vectors' method (+ '-factorwise')."""

    def points(self, cands: Sequence[Candidate], split: Split, progress: bool = False) -> list[PointRecord]:
        return evaluate_points(self.combined, self.tokenizer, cands, method=self.key, split=split,
                               prompts=self.prompts[split], **{**self.common, "progress": progress})

    def base(self, split: Split) -> PointRecord:
        values = [v.name for v in self.cfg.values]
        return evaluate_points(self.combined, self.tokenizer, [Candidate({v: 0.0 for v in values}, {})], method="base",
                               split=split, prompts=self.prompts[split], **self.common)[0]

    def race(self, cands: Sequence[Candidate]) -> RaceResult:
        """Race `cands` on the val prompts (`mvalign.race`); the survivors' chunks are joined into their ordinary
        val records, so `points(survivors, "val")` reads them from the store."""
        s, prompts = self.cfg.sweep, self.prompts["val"]
        rewards, cache, store = self.common["rewards"], self.common["cache"], self.common["store"]

        def scores(rec, a, b):
            return np.stack([np.asarray(cache.score(rm, prompts[a:b], rec.responses)) for rm in rewards.values()])

        result = race(cands, prompts, self.points_on, scores, s.racing_first, s.racing_z)
        key = settings_key(prompts, self.common["generation"], rewards)
        for cand in result.survivors:
            if self.stored(cand, "val") is None:
                parts = [self.points_on([cand], *r["prompts"])[0] for r in result.rounds]
                responses = [x for p in parts for x in p.responses]
                full = {n: np.asarray(cache.score(rm, prompts, responses)) for n, rm in rewards.items()}
                store.put_point(joined(parts, prompts, key, cand, "val", full, s.bootstrap, s.seed))
        return result

    def dropped(self, result: RaceResult, base_scores: dict[str, list[float]]) -> list[dict]:
        """What the race saw of each dropped candidate: its mean rewards and per-prompt scores on the val prompts it
        was evaluated on (the first n: its stored chunks, nothing is generated or scored again), and its paired change
        from the base model (`base_scores`: the base's val scores) on those prompts."""
        bounds = [r["prompts"] for r in result.rounds]
        out = []
        for cand, n in result.dropped:
            chunks = [self.points_on([cand], a, b)[0] for a, b in bounds if b <= n]
            scores = {v: [float(x) for c in chunks for x in c.scores[v]] for v in chunks[0].scores}
            out.append({"weights": dict(cand.label), "prompts": n, "rewards": {v: float(np.mean(s)) for v, s in scores.items()},
                        "scores": scores, "responses": [x for c in chunks for x in c.responses],
                        "vs_base": change_vs_base(scores, {v: s[:n] for v, s in base_scores.items()}, n_boot=1000, seed=0)
                        if set(base_scores) == set(scores) else {}})
        return out

    def stored(self, cand: Candidate, split: Split) -> PointRecord | None:
        """The candidate's full record on `split` if the store holds it under this evaluator's settings (nothing is
        generated)."""
        key = settings_key(self.prompts[split], self.common["generation"], self.common["rewards"])
        return self.common["store"].get_point(self.key, dict(cand.label), split, point_key(key, cand))

    def points_on(self, cands: Sequence[Candidate], a: int, b: int) -> list[PointRecord]:
        """The candidates' records on val prompts [a, b) (a race's chunks; through the store)."""
        return evaluate_points(self.combined, self.tokenizer, cands, method=self.key, split=f"val[{a}:{b}]",
                               prompts=self.prompts["val"][a:b], **{**self.common, "progress": False})

    def reset(self) -> None:
        """Move the loaded model (if this process holds one) back to its base weights."""
        if self.combined is not None:
            self.combined.reset()

    def close(self) -> None:
        """Stop the Ray workers, if any (the local model is freed with the evaluator)."""
        if self.common["backend"] is not None:
            self.common["backend"].close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def racing(self, cands: Sequence[Candidate]) -> bool:
        mode = self.cfg.sweep.racing
        return mode == "on" or (mode == "auto" and isinstance(self.plan.source, FixedCandidates) and len(cands) >= 16)

    def scores(self, rec: PointRecord, split: Split) -> dict[str, np.ndarray]:
        """Per-prompt scores of a point's responses, per value (from the score cache), in prompt order."""
        rewards, cache = self.common["rewards"], self.common["cache"]
        return {name: np.asarray(cache.score(rm, self.prompts[split], rec.responses)) for name, rm in rewards.items()}


def evaluator(cfg: MVAConfig, method: str, progress: bool = True,
              rewards: dict[str, RewardModel] | None = None) -> Evaluator:
    """Load the base model with the adapters `method` evaluates (in this process, or on the Ray workers with
    `sweep.backend: ray`), its judges and the val / test prompts."""
    m = get_method(method)
    run = prepare_run(cfg)
    plan = m.candidates(cfg, run)
    missing = [str(run.adapter(plan.vectors, a)) for a in plan.adapters if not run.adapter(plan.vectors, a).is_dir()]
    if missing:
        raise ConfigError(f"{method}: adapters not trained yet: {missing}; run `mvalign train CONFIG --method {method}`")
    rewards = rewards if rewards is not None else load_reward_models(cfg)
    cache = ScoreCache(cache_root(cfg.cache_dir) / "reward_scores.sqlite")
    suffix = "" if cfg.sweep.combination == "exact" else "-factorwise"
    s = cfg.sweep
    mixed = s.mixed_batching and s.combination == "exact" and not s.do_sample
    prompts = {split: eval_prompts(cfg, split, getattr(s, f"{split}_prompts")) for split in ("val", "test")}
    combined, tokenizer, backend = None, None, None
    if s.backend == "ray":  # the workers load the model; this process only groups tasks, scores and stores
        from .scaleout import RayBackend

        passes = Passes(None, s.rows_per_pass, s.points_per_pass) if mixed else None
        backend = RayBackend(cfg, [(a, str(run.adapter(plan.vectors, a))) for a in plan.adapters],
                             (s.rows_per_pass, s.points_per_pass) if mixed else None,
                             check=lambda fp, dtype, where: run.check_fingerprint(fp, dtype, cfg.model.name, where))
    else:
        model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
        run.check_base(model, cfg.model.name)
        combined = CombinedModel(model, [load_lora_adapter(run.adapter(plan.vectors, a), a) for a in plan.adapters],
                                 cfg.sweep.combination)
        passes = Passes(MixedLoRA(model, combined.adapters), s.rows_per_pass, s.points_per_pass) if mixed else None
    common = dict(rewards=rewards, generation=generation_settings(cfg), store=run.store(), cache=cache,
                  bootstrap=cfg.sweep.bootstrap, use_chat_template=cfg.model.chat_template == "auto", progress=progress,
                  passes=passes, backend=backend)
    return Evaluator(cfg, plan, combined, tokenizer, common, prompts, plan.vectors + suffix)


def evaluate_method(cfg: MVAConfig, method: str, progress: bool = True, primary: bool = True,
                    rewards: dict[str, RewardModel] | None = None) -> dict:
    """Evaluate the method's candidates on val, select the non-dominated ones, score them (and the base) on test,
    write front-<method>.json (and front.json when `primary`) and return the front. `rewards`: judges already
    loaded (default: load them from the config)."""
    run = RunDir.of(cfg)
    with run.lock(f"evaluate-{method}", f"evaluating {method}"):
        return _evaluate(cfg, method, progress, primary, rewards)


def _evaluate(cfg: MVAConfig, method: str, progress: bool, primary: bool, rewards) -> dict:
    with evaluator(cfg, method, progress, rewards) as ev:
        return _evaluate_with(ev, cfg, method, primary)


def _evaluate_with(ev: Evaluator, cfg: MVAConfig, method: str, primary: bool) -> dict:
    progress = ev.common["progress"]
    values = [v.name for v in cfg.values]
    base = {s: ev.base(s) for s in ("val", "test")}
    cands = ev.plan.source.run(lambda cs: ev.points(cs, "val"))
    raced = ev.race(cands) if ev.racing(cands) else None
    if raced is not None:
        cands = raced.survivors
    val = ev.points(cands, "val", progress)
    usable = [(c, p) for c, p in zip(cands, val) if not p.flag]  # degenerate models are never selected
    mask = non_dominated([[p.rewards[v] for v in values] for _, p in usable]) if usable else []
    chosen = [c for (c, _), keep in zip(usable, mask) if keep]
    test = ev.points(chosen, "test", progress)
    ev.reset()
    suffix = "" if cfg.sweep.combination == "exact" else "-factorwise"
    label = method + suffix
    for p in (*val, *test):
        p.method = label
    front = build_front(values, label, val, test, base["val"], base["test"], cfg.sweep.reference_point)
    front["settings"] = {"val_prompts": len(ev.prompts["val"]), "test_prompts": len(ev.prompts["test"]),
                         **ev.common["generation"].as_dict(), "candidates": ev.plan.label,
                         "combination": cfg.sweep.combination, "vectors": ev.plan.vectors,
                         "mixed_batching": None if ev.common["passes"] is None else
                         {"rows_per_pass": ev.common["passes"].rows, "points_per_pass": ev.common["passes"].points},
                         "backend": backend_settings(ev.common["backend"])}
    front["prompts"] = {s: [prompt_text(p) for p in ev.prompts[s]] for s in ("val", "test")}
    front["store_method"] = ev.key
    if raced is not None:
        front["racing"] = {"candidates": raced.rounds[0]["evaluated"], "survivors": len(raced.survivors),
                           "rounds": raced.rounds, "token_fraction": raced.token_fraction,
                           "first": cfg.sweep.racing_first, "z": cfg.sweep.racing_z,
                           "rule": "equal shares; paired t over all val prompts (finite-population corrected) > z",
                           "dropped": ev.dropped(raced, base["val"].scores)}
    front["training"] = training_compute(ev.common["store"], ev.plan.vectors, ev.plan.adapters)
    write_front(RunDir.of(cfg), front, label, primary)
    reached("front")
    log_front(cfg, RunDir.of(cfg), label, front)
    return front


def backend_settings(backend) -> dict:
    """Where the points were generated: this process, or Ray workers (how many, how many were replaced)."""
    if backend is None:
        return {"kind": "local"}
    return {"kind": "ray", "workers": backend.settings.workers, "replaced_workers": backend.restarts}


def training_compute(store: RunStore, vectors: str, adapters: list[str]) -> dict:
    """Optimizer steps, tokens and wall seconds summed over the adapters a method's candidates use."""
    recs = [r for r in (store.get_vector(name, vectors) for name in adapters) if r is not None]
    return {"adapters": len(recs), "steps": sum(r.steps for r in recs),
            "tokens": sum(float(r.metrics.get("train_tokens", 0.0)) for r in recs),
            "seconds": sum(r.seconds for r in recs)}
