"""VC-soup benchmark on HH-RLHF helpful + harmless (../shared/data) with the embedded SmolLM2 and trained BT heads.

    .venv/bin/python -m bench.vcsoup            # CPU setting, about 20 minutes on 2 cores
    .venv/bin/python -m bench.vcsoup --quick    # smoke run, a few minutes

Reward heads (BT on all-MiniLM-L6-v2): helpful on helpful-online + helpful-rejection-sampled, harmless on the first 300
valid single-turn harmless-base pairs; DPO uses helpful-base and the harmless-base pairs after those (disjoint). Two soups,
same seeds, steps and sweep: `unfiltered` (consistency threshold τ = −1 keeps every pair) and `filtered` (τ = 0).
Both sweep the simplex in steps of 0.25 with the exact ΔW combination, select on val prompts, report on test
prompts; hypervolumes use one reference point (per-value minimum over both fronts and the base model).
Writes bench/results/vcsoup.json (or vcsoup-quick.json) and the VC histogram PNG beside it. Resumable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mvalign.config import RunConfig
from mvalign.consistency import plot_consistency, summary
from mvalign.evaluate import evaluate_method
from mvalign.methods import train_method
from mvalign.pareto import default_reference_point, hypervolume, non_dominated
from mvalign.rewards import load_reward_models
from mvalign.rundir import package_versions
from mvalign.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf"

SETTINGS = {
    "full": {"limit": 320, "steps": 40, "eval_pairs": 64, "prompts": 32, "tokens": 32, "rm_epochs": 30},
    "quick": {"limit": 16, "steps": 2, "eval_pairs": 8, "prompts": 6, "tokens": 8, "rm_epochs": 5},
}


def make_config(s: dict, variant: str, root: Path) -> RunConfig:
    def hh(*folders, rows=None, **extra):
        return {"format": "hh-rlhf", "path": [str(HH / f / "test.jsonl.gz") for f in folders], "single_turn_only": True,
                "on_invalid": "skip", "rows": rows, **extra}
    values = [
        {"name": "helpful", "data": hh("helpful-base", limit=s["limit"]),
         "reward": {"kind": "bt-head", "path": str(root / "rewards" / "helpful"), "epochs": s["rm_epochs"],
                    "data": hh("helpful-online", "helpful-rejection-sampled")}},
        {"name": "harmless", "data": hh("harmless-base", rows=[300, None], limit=s["limit"]),
         "reward": {"kind": "bt-head", "path": str(root / "rewards" / "harmless"), "epochs": s["rm_epochs"],
                    "data": hh("harmless-base", rows=[0, 300])}},
    ]
    return RunConfig.model_validate({
        "values": values,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {"beta": 0.1, "lr": 5e-4, "max_steps": s["steps"], "batch_size": 4, "max_length": 192,
                     "max_prompt_length": 96, "precision": "bf16", "seed": 0, "save_every": 10,
                     "eval_pairs": s["eval_pairs"]},
        "methods": {"vcsoup": {"mode": "threshold", "tau": -1.0 if variant == "unfiltered" else 0.0, "text": "response"}},
        "sweep": {"simplex_step": 0.25, "val_prompts": s["prompts"], "test_prompts": s["prompts"],
                  "max_new_tokens": s["tokens"], "batch_size": 16},
        "run_dir": str(root / variant),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    mode = "quick" if ap.parse_args().quick else "full"
    if not HH.is_dir():
        sys.exit(f"{HH} is absent: this benchmark needs ../shared/data beside the repository")
    s = SETTINGS[mode]
    root = ROOT / "runs" / f"bench-vcsoup-{mode}"
    cfgs = {v: make_config(s, v, root) for v in ("unfiltered", "filtered")}
    t0 = time.perf_counter()
    load_reward_models(cfgs["unfiltered"])  # trains the heads both variants share, once
    heads = {name: json.loads((root / "rewards" / name / "head.json").read_text()) for name in ("helpful", "harmless")}
    fronts, vectors, consistency = {}, {}, {}
    for variant, cfg in cfgs.items():
        train_method(cfg, "vcsoup")
        fronts[variant] = evaluate_method(cfg, "vcsoup")
        vectors[variant] = {
            r.name: {
                "train_pairs": r.train_pairs,
                "pairs_before_filter": r.metrics.get("pairs_before_filter"),
                "val_accuracy": r.metrics.get("val_accuracy"),
                "val_accuracy_se": r.metrics.get("val_accuracy_se"),
            }
            for r in RunStore(cfg.run_dir).vectors("vcsoup")
        }
    for value in ("helpful", "harmless"):
        consistency[value] = json.loads((Path(cfgs["filtered"].run_dir) / "consistency" / f"{value}.json").read_text())
    png = plot_consistency(
        consistency, ROOT / "bench" / "results" / f"vcsoup-consistency{'-quick' if mode == 'quick' else ''}.png"
    )

    values = ["helpful", "harmless"]
    def mat(front, split):
        return np.array([[p["rewards"][v] for v in values] for p in front["points"] if p["split"] == split])
    base = np.array([[f["base"][k][v] for v in values] for f in fronts.values() for k in ("rewards", "rewards_val")])
    ref = default_reference_point(base, *[mat(f, sp) for f in fronts.values() for sp in ("val", "test")])
    result = {
        "setting": {**s, "mode": mode, "model": "smollm2-135m-instruct", "sweep": "simplex step 0.25, exact ΔW",
                    "dpo_data": "helpful-base / harmless-base (after the first 300) single-turn",
                    "reward_data": "helpful-online + helpful-rejection-sampled / harmless-base first 300 (single-turn)",
                    "filter": "threshold τ = 0 (filtered) vs τ = −1 (unfiltered, keeps all)", "seeds": 1},
        "versions": package_versions(),
        "reward_heads": {k: {"val_accuracy": h["val_accuracy"], "val_pairs": h["val_pairs"], "train_pairs": h["train_pairs"]}
                         for k, h in heads.items()},
        "consistency": {v: {**summary(c), "kept_at_tau_0": float(np.mean(np.asarray(c["vc"]) >= 0)),
                            "histogram": np.histogram(c["vc"], bins=20, range=(-1, 1))[0].tolist(),
                            "stats": c["stats"]} for v, c in consistency.items()},
        "vectors": vectors,
        "reference_point": ref.tolist(),
        "fronts": {},
        "wall_seconds_this_invocation": time.perf_counter() - t0,
    }
    for variant, f in fronts.items():
        result["fronts"][variant] = {
            "hypervolume": {sp: hypervolume(mat(f, sp)[non_dominated(mat(f, sp))], ref) for sp in ("val", "test")},
            "points": f["points"], "base": f["base"],
        }
    out = ROOT / "bench" / "results" / ("vcsoup.json" if mode == "full" else "vcsoup-quick.json")
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("reward_heads", "reference_point")}, indent=1))
    print(
        json.dumps(
            {v: {k: x for k, x in c.items() if k not in ("histogram", "stats")} for v, c in result["consistency"].items()},
            indent=1,
        )
    )
    print(json.dumps({v: f["hypervolume"] for v, f in result["fronts"].items()}, indent=1), "\nwrote", out, png)


if __name__ == "__main__":
    main()
