"""The demo: the whole MVA pipeline on the embedded SmolLM2-135M-Instruct and the built-in helpful/harmless data.

    mvalign demo            # CPU-sized full demo (≤ 15 minutes on 2 cores; bench/README.md has its wall time)
    mvalign demo --quick    # tiny settings (≤ 2 minutes), run in CI

Measures: helpful by a BT head on all-MiniLM-L6-v2 (trained on the built-in dataset's `reward` prompts), audited by
the compliance rate on the benign eval prompts; harmless by the refusal rate on the harmful eval prompts (XSTest's
string rule), audited by the learned refusal detector's rate and a BT head. DPO and the evaluation prompts use the
dataset's disjoint `policy` prompts. `mvalign demo --show-config` prints the config it runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import RunConfig, resolve_anchors

FULL = {"limit": None, "steps": 30, "eval_pairs": 32, "head_epochs": 30, "grid": [0.25, 0.5, 0.75, 1.0],
        "val_prompts": 48, "test_prompts": 48, "max_new_tokens": 32,
        # all 180 policy prompts: 40% for training (30 steps use 120 of its ~530 pairs), 30% each for val and test:
        # 45 val and 48 test prompts (the default 80/10/10 split of the first 240 pairs gave 16 and 22)
        "split": {"train": 0.4, "val": 0.3, "test": 0.3}}
QUICK = {"limit": 16, "steps": 2, "eval_pairs": 8, "head_epochs": 10, "grid": [1.0],
         "val_prompts": 8, "test_prompts": 8, "max_new_tokens": 12}


def demo_config(quick: bool = False, run_dir: str = "runs/demo") -> RunConfig:
    s = QUICK if quick else FULL
    def head(v):
        return {"kind": "bt-head", "data": {"format": "builtin", "part": "reward"}, "epochs": s["head_epochs"]}

    data = {"format": "builtin", "part": "policy", "limit": s["limit"]}
    values = [
        # helpful: the BT head defines the axis; audited by the compliance rate on the benign prompts
        {"name": "helpful", "data": data, "reward": head("helpful"),
         "audits": [{"kind": "rate", "on": "benign", "detector": "string"}]},
        # harmless: the refusal rate on the harmful prompts (judge-free) defines the axis; audited by the learned
        # detector's rate and by the BT head, which methods that score pairs (VC-soup, MODPO, RiC) train with
        {"name": "harmless", "data": data, "reward": {"kind": "rate", "on": "harmful", "detector": "string"},
         "audits": [{"kind": "rate", "on": "harmful", "detector": "learned"}, head("harmless")],
         "train_judge": head("harmless")},
    ]
    cfg = RunConfig.model_validate({
        "values": values,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {"beta": 0.1, "lr": 5e-4, "max_steps": s["steps"], "batch_size": 4, "max_length": 128,
                     "max_prompt_length": 64, "precision": "auto", "seed": 0, "save_every": 10,
                     "eval_pairs": s["eval_pairs"]},
        "methods": {"mva": {"alpha": 0.1, "penalty": "cka", "target": "delta_w"}},
        "sweep": {"strategy": "grid", "grid": s["grid"], "val_prompts": s["val_prompts"], "test_prompts": s["test_prompts"],
                  "max_new_tokens": s["max_new_tokens"], "batch_size": 16},
        "run_dir": run_dir,
        **({"split": s["split"]} if "split" in s else {}),
    })
    return resolve_anchors(cfg, Path.cwd())  # XSTest / TruthfulQA anchors when ../shared/data is beside the checkout


def run_demo(quick: bool = False, run_dir: str | Path = "runs/demo") -> dict:
    """Run the demo pipeline (resumable); the quick demo's run dir gets a '-quick' suffix. Returns the summary with
    the wall time."""
    from .pipeline import run_pipeline

    run_dir = Path(run_dir).resolve()
    run_dir = run_dir.with_name(run_dir.name + ("-quick" if quick else ""))
    t0 = time.perf_counter()
    summary = run_pipeline(demo_config(quick, str(run_dir)))
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return summary
