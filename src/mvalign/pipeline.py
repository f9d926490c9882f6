"""The whole pipeline on one config: reward heads → each method's training → its evaluation → the report."""

from __future__ import annotations

import json
import time

from .audit import ensure_audit
from .config import RunConfig
from .evaluate import evaluate_method
from .methods import get_method, prepare_run, run_fronts, train_method
from .probes import run_probes
from .report import write_report, write_run_explorer
from .rewards import load_audits, load_reward_models, reward_dir


def run_pipeline(cfg: RunConfig, methods: tuple[str, ...] = ("mva",), progress: bool = True) -> dict:
    """Train reward heads and every method's adapters (skipping finished work), evaluate each method, write the
    report and summary.json; returns the summary."""
    for m in methods:
        get_method(m)
    run = prepare_run(cfg)
    t0 = time.perf_counter()
    rewards = load_reward_models(cfg)  # trains missing BT heads first: a bad reward config fails before DPO
    run_probes(cfg, {**rewards, **load_audits(cfg)})  # a measure that mis-orders the obvious stops here
    audit = ensure_audit(cfg)  # every measure against human labels (RUN/audit.json), shown in the report
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
    settings = {"model": cfg.model.name, "steps": cfg.training.max_steps, "strategy": cfg.sweep.strategy,
                "grid": cfg.sweep.grid if cfg.sweep.strategy == "grid" else "", "val_prompts": cfg.sweep.val_prompts,
                "test_prompts": cfg.sweep.test_prompts, "max_new_tokens": cfg.sweep.max_new_tokens}
    earlier = {m: run.read_front(m) for m in run_fronts(run) if m not in fronts}  # the report covers every method
    report = write_report(run, {**fronts, **earlier}, settings)
    explorer = write_run_explorer(run, run.root)
    summary = {
        "run_dir": str(run.root),
        "report": str(report),
        "explorer": str(explorer),
        "timings": timings,
        "untrusted_measures": [k for k, e in audit["measures"].items() if e["trusted"] is False],
        "reward_heads": {k: {"val_accuracy": h.get("val_accuracy"), "val_pairs": h.get("val_pairs")} for k, h in heads.items()},
        "fronts": {m: {"hypervolume": {"val": f.hypervolume.val, "test": f.hypervolume.test},
                       "reference_point": f.reference_point} for m, f in fronts.items()},
    }
    run.summary_path.write_text(json.dumps(summary, indent=2))
    return summary
