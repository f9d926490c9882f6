"""The whole MVA pipeline on one config: reward heads → value vectors → sweep → front → report; and the demo."""

from __future__ import annotations

import json
import logging
import random
import time
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
from .run import adapter_dir, prepare_run_dir, train_method
from .store import RunStore
from .sweep import evaluate_points, strategy_points

log = logging.getLogger(__name__)
SOUP_METHODS = ("vcsoup",)
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


def evaluate_method(cfg: MVAConfig, method: str, progress: bool = True, primary: bool = True,
                    rewards: dict[str, RewardModel] | None = None) -> dict:
    """Sweep the method's weight vectors on val, select the non-dominated ones, score them (and the base) on test,
    write front-<method>.json (and front.json when `primary`) and return the front. `rewards`: judges already
    loaded (default: load them from the config)."""
    run = Path(cfg.run_dir)
    store = RunStore(run)
    values = [v.name for v in cfg.values]
    rewards = rewards if rewards is not None else load_reward_models(cfg)
    cache = ScoreCache(cache_root(cfg.cache_dir) / "reward_scores.sqlite")
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    adapters = [load_lora_adapter(adapter_dir(run, method, v), v) for v in values]
    combined = CombinedModel(model, adapters, cfg.sweep.combination)
    label = method if cfg.sweep.combination == "exact" else f"{method}-factorwise"
    gen = generation_settings(cfg)
    chat = cfg.model.chat_template == "auto"
    common = dict(rewards=rewards, generation=gen, store=store, cache=cache, bootstrap=cfg.sweep.bootstrap,
                  use_chat_template=chat, progress=progress)
    prompts = {s: eval_prompts(cfg, s, getattr(cfg.sweep, f"{s}_prompts")) for s in ("val", "test")}
    base_w = {v: 0.0 for v in values}
    base = {s: evaluate_points(combined, tokenizer, [base_w], method="base", split=s, prompts=prompts[s], **common)[0]
            for s in ("val", "test")}
    strategy = cfg.sweep.model_copy(update={"strategy": "simplex"}) if method in SOUP_METHODS else cfg.sweep
    candidates = [p for p in strategy_points(strategy, values) if any(p.values())]
    val = evaluate_points(combined, tokenizer, candidates, method=label, split="val", prompts=prompts["val"], **common)
    mask = non_dominated([[p.rewards[v] for v in values] for p in val])
    selected = [p.weights for p, m in zip(val, mask) if m]
    test = evaluate_points(combined, tokenizer, selected, method=label, split="test", prompts=prompts["test"], **common)
    combined.reset()
    front = build_front(values, label, val, test, base["val"], base["test"], cfg.sweep.reference_point)
    front["settings"] = {"val_prompts": len(prompts["val"]), "test_prompts": len(prompts["test"]), **gen.as_dict(),
                         "strategy": strategy.strategy, "combination": cfg.sweep.combination}
    write_front(run, front, label, primary)
    return front


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
