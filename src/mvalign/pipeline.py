"""The whole MVA pipeline on one config: reward heads → value vectors → sweep → front → report; and the demo."""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

from .combine import CombinedModel, load_lora_adapter
from .config import ConfigError, MVAConfig
from .data import load_value_splits
from .data.pairs import Prompt, Split
from .generate import GenerationSettings
from .models import cache_root, load_model
from .pareto import non_dominated
from .report import build_front, write_front, write_report
from .rewards import RewardModel, ScoreCache, load_reward_models, reward_dir
from .run import adapter_dir, prepare_run_dir
from .search import adaptive_search
from .training import PER_WEIGHT, preference_weights, train_method, vector_source, weight_label
from .store import RunStore
from .sweep import evaluate_points, simplex_points, strategy_points

log = logging.getLogger(__name__)
SOUP_METHODS = ("soup", "vcsoup", "mva-convex")
"""Methods whose candidates are soups: weights on the simplex (sweep.simplex_step), whatever sweep.strategy says."""


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
class Candidates:
    """What a method puts forward for evaluation: adapters loaded on one model and the points to try.

    Each point is (label, adapter weights): the label is the ω (or, for per-weight methods, the preference weight
    w; for seqt, which values' data the stage has seen) reported in fronts; adapter weights say which combination
    of the loaded adapters realises it. Points are stored under `source` (the vectors' method), so methods sharing
    vectors (dpo, soup, mva-nohsic) share evaluations.
    """

    source: str
    adapters: list[tuple[str, Path]]
    points: list[tuple[dict[str, float], dict[str, float]]]
    adaptive: bool = False
    """True: no fixed points; `mvalign.search.adaptive_search` picks sweep.budget of them while evaluating."""


def method_candidates(cfg: MVAConfig, method: str) -> Candidates:
    """dpo: each vector alone (ω = e_k). soup, vcsoup, mva-convex: the simplex (sweep.simplex_step). mva, mva-nohsic,
    mva-orth: sweep.strategy (the extrapolation box by default). seqt: each stage's model. lw, modpo: each
    per-weight model."""
    run = Path(cfg.run_dir)
    values = [v.name for v in cfg.values]
    source = vector_source(method)
    if method in PER_WEIGHT:
        ws = preference_weights(cfg)
        labels = [weight_label(w) for w in ws]
        return Candidates(source, [(lb, adapter_dir(run, source, lb)) for lb in labels],
                          [(w, {lb: 1.0}) for w, lb in zip(ws, labels)])
    adapters = [(v, adapter_dir(run, source, v)) for v in values]
    if method == "seqt":
        return Candidates(source, adapters, [({u: float(j <= k) for j, u in enumerate(values)}, {v: 1.0})
                                             for k, v in enumerate(values)])
    if method == "dpo":
        points = [{u: float(u == v) for u in values} for v in values]
    elif method in SOUP_METHODS:
        points = simplex_points(values, cfg.sweep.simplex_step)
    elif cfg.sweep.strategy == "adaptive":
        return Candidates(source, adapters, [], adaptive=True)
    else:
        points = [p for p in strategy_points(cfg.sweep, values) if any(p.values())]
    return Candidates(source, adapters, [(p, p) for p in points])


def evaluate_method(cfg: MVAConfig, method: str, progress: bool = True, primary: bool = True,
                    rewards: dict[str, RewardModel] | None = None) -> dict:
    """Evaluate the method's candidates on val, select the non-dominated ones, score them (and the base) on test,
    write front-<method>.json (and front.json when `primary`) and return the front. `rewards`: judges already
    loaded (default: load them from the config)."""
    run = Path(cfg.run_dir)
    store = RunStore(run)
    values = [v.name for v in cfg.values]
    rewards = rewards if rewards is not None else load_reward_models(cfg)
    cache = ScoreCache(cache_root(cfg.cache_dir) / "reward_scores.sqlite")
    cand = method_candidates(cfg, method)
    missing = [str(p) for _, p in cand.adapters if not p.is_dir()]
    if missing:
        raise ConfigError(f"{method}: adapters not trained yet: {missing}; run `mvalign train CONFIG --method {method}`")
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    combined = CombinedModel(model, [load_lora_adapter(p, name) for name, p in cand.adapters], cfg.sweep.combination)
    suffix = "" if cfg.sweep.combination == "exact" else "-factorwise"
    label, key = method + suffix, cand.source + suffix
    gen = generation_settings(cfg)
    common = dict(rewards=rewards, generation=gen, store=store, cache=cache, bootstrap=cfg.sweep.bootstrap,
                  use_chat_template=cfg.model.chat_template == "auto", progress=progress)
    prompts = {s: eval_prompts(cfg, s, getattr(cfg.sweep, f"{s}_prompts")) for s in ("val", "test")}
    base = {s: evaluate_points(combined, tokenizer, [{v: 0.0 for v in values}], apply=[{}], method="base", split=s,
                               prompts=prompts[s], **common)[0] for s in ("val", "test")}
    if cand.adaptive:
        found = adaptive_search(lambda ws: [p.rewards for p in evaluate_points(
            combined, tokenizer, ws, method=key, split="val", prompts=prompts["val"], **{**common, "progress": False})],
            values, cfg.sweep.budget, cfg.sweep.grid)
        cand.points = [(w, w) for w, _ in found]
    labels, applies = [p[0] for p in cand.points], [p[1] for p in cand.points]
    val = evaluate_points(combined, tokenizer, labels, apply=applies, method=key, split="val", prompts=prompts["val"], **common)
    mask = non_dominated([[p.rewards[v] for v in values] for p in val])
    chosen = [i for i, m in enumerate(mask) if m]
    test = evaluate_points(combined, tokenizer, [labels[i] for i in chosen], apply=[applies[i] for i in chosen],
                           method=key, split="test", prompts=prompts["test"], **common)
    combined.reset()
    for p in (*val, *test):
        p.method = label
    front = build_front(values, label, val, test, base["val"], base["test"], cfg.sweep.reference_point)
    front["settings"] = {"val_prompts": len(prompts["val"]), "test_prompts": len(prompts["test"]), **gen.as_dict(),
                         "candidates": "per-weight models" if method in PER_WEIGHT else "stages" if method == "seqt"
                         else "each vector alone" if method == "dpo" else "simplex" if method in SOUP_METHODS
                         else cfg.sweep.strategy, "combination": cfg.sweep.combination, "vectors": cand.source}
    front["training"] = training_compute(store, cand)
    write_front(run, front, label, primary)
    return front


def training_compute(store: RunStore, cand: Candidates) -> dict:
    """Optimizer steps, tokens and wall seconds summed over the adapters a method's candidates use."""
    recs = [store.get_vector(name, cand.source) for name, _ in cand.adapters]
    recs = [r for r in recs if r is not None]
    return {"adapters": len(recs), "steps": sum(r.steps for r in recs),
            "tokens": sum(float(r.metrics.get("train_tokens", 0.0)) for r in recs),
            "seconds": sum(r.seconds for r in recs)}


def run_pipeline(cfg: MVAConfig, methods: tuple[str, ...] = ("mva",), progress: bool = True) -> dict:
    """Train reward heads and value vectors (skipping finished work), evaluate each method, write the report."""
    run = prepare_run_dir(cfg)
    t0 = time.perf_counter()
    rewards = load_reward_models(cfg)  # trains missing BT heads first: a bad reward config fails before DPO
    heads = {}
    for v in cfg.values:
        head_json = reward_dir(cfg, v.name) / "head.json"
        if head_json.is_file():
            heads[v.name] = json.loads(head_json.read_text())
    timings = {"rewards_s": time.perf_counter() - t0}
    for method in methods:
        t = time.perf_counter()
        train_method(cfg, method, progress=progress)
        timings[f"train_{method}_s"] = time.perf_counter() - t
    fronts = {}
    for method in methods:
        t = time.perf_counter()
        fronts[method] = evaluate_method(cfg, method, progress, primary=method == methods[0], rewards=rewards)
        timings[f"sweep_{method}_s"] = time.perf_counter() - t
    settings = {"model": cfg.model.name, "steps": cfg.dpo.max_steps, "strategy": cfg.sweep.strategy,
                "grid": cfg.sweep.grid if cfg.sweep.strategy == "grid" else "", "val_prompts": cfg.sweep.val_prompts,
                "test_prompts": cfg.sweep.test_prompts, "max_new_tokens": cfg.sweep.max_new_tokens}
    report = write_report(run, fronts, settings)
    summary = {"run_dir": str(run), "report": str(report), "timings": timings,
               "reward_heads": {k: {"val_accuracy": h.get("val_accuracy"), "val_pairs": h.get("val_pairs")} for k, h in heads.items()},
               "fronts": {m: {"hypervolume": f["hypervolume"], "reference_point": f["reference_point"]} for m, f in fronts.items()}}
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
