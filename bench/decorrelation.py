"""Decorrelation benchmark (issue: MVA value decorrelation) on the embedded SmolLM2 with HH-RLHF helpful + harmless.

    .venv/bin/python -m bench.decorrelation --seeds 0 1   # full CPU setting (about 13 minutes per seed on 2 cores)
    .venv/bin/python -m bench.decorrelation --quick    # tiny setting, a few minutes

Trains the helpful vector once with plain DPO, then the harmless vector three ways with the same seed, data and
steps: without decorrelation (plain DPO), with the CKA penalty on ΔW rows (`delta_w`), and with the CKA penalty on
A rows (`lora_A`). Reports, per variant: mean |cos| and CKA between the two vectors (over modules), each vector's
held-out DPO implicit-reward accuracy (± standard error), and seconds per step; plus the penalty's own cost
measured by interleaving DPO steps with and without it on one loaded model (robust to machine noise).
Resumable: each variant is a run directory under runs/bench-decorrelation/; finished vectors are skipped.
Writes bench/results/decorrelation.json (or decorrelation-quick.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mvalign.combine import load_lora_adapter
from mvalign.config import RunConfig
from mvalign.data import load_value_splits
from mvalign.diagnose import interference_report
from mvalign.lora import add_value_adapter
from mvalign.methods import train_method
from mvalign.models import cache_root, load_model
from mvalign.rundir import RunDir, package_versions, value_seed
from mvalign.store import AdapterRef, RunStore
from mvalign.train.decorrelation import DecorrelationLoss, PenaltySpec
from mvalign.train.dpo import dpo_loss
from mvalign.train.logprobs import pair_logprobs
from mvalign.train.tokenize import collate_pairs, tokenize_pairs

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "hh-rlhf"

SETTINGS = {
    "full": {"limit": 160, "steps": 40, "eval_pairs": 128, "timing_reps": 5},
    "quick": {"limit": 16, "steps": 3, "eval_pairs": 16, "timing_reps": 2},
}
# variant -> (penalty, target, alpha); "plain" trains the harmless vector without decorrelation
VARIANTS = {"plain": None, "cka-delta_w": ("cka", "delta_w", 1.0), "cka-delta_w-alpha0.1": ("cka", "delta_w", 0.1),
            "cka-lora_A": ("cka", "lora_A", 1.0)}


def make_config(s: dict, variant: str, run_root: Path, seed: int = 0) -> RunConfig:
    values = [
        {"name": name, "data": {"format": "hh-rlhf", "path": [str(SHARED / folder / "test.jsonl.gz")], "limit": s["limit"],
                                "single_turn_only": True, "on_invalid": "skip"}}
        for name, folder in (("helpful", "helpful-base"), ("harmless", "harmless-base"))
    ]
    kind, target, alpha = VARIANTS[variant] or ("cka", "delta_w", 1.0)
    return RunConfig.model_validate({
        "values": values,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {"beta": 0.1, "lr": 5e-4, "max_steps": s["steps"], "batch_size": 4, "max_length": 192,
                     "max_prompt_length": 96, "precision": "bf16", "seed": seed, "save_every": 10,
                     "eval_pairs": s["eval_pairs"]},
        "methods": {"mva": {"alpha": alpha, "penalty": kind, "target": target, "sigma": "median", "rows": 128}},
        "run_dir": str(run_root / variant),
    })


def seed_first_vector(src_cfg: RunConfig, dst_cfg: RunConfig) -> None:
    """Give a variant's run the already-trained plain helpful vector (identical config for it), so it is not retrained."""
    src, dst = RunStore(src_cfg.run_dir), RunStore(dst_cfg.run_dir)
    rec = src.get_vector(AdapterRef("dpo", "helpful"))
    target = RunDir(dst_cfg.run_dir).adapter(AdapterRef("dpo", "helpful"))
    if dst.get_vector(AdapterRef("dpo", "helpful")) is None:
        shutil.copytree(rec.adapter_dir, target, dirs_exist_ok=True)
        rec.adapter_dir = str(target)
        dst.put_vector(rec)


def penalty_timing(cfg: RunConfig, reps: int) -> dict:
    """Median seconds of one DPO micro-step (fwd+bwd, batch 4) and of the penalty's fwd+bwd, interleaved."""
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    frozen = load_lora_adapter(RunDir(cfg.run_dir).adapter(AdapterRef("dpo", "helpful")), "helpful")
    peft = add_value_adapter(model, cfg.lora, value_seed(0, "harmless"))
    trained = load_lora_adapter(RunDir(cfg.run_dir).adapter(AdapterRef("mva", "harmless")))
    with torch.no_grad():  # start from the trained vector so the penalty sees realistic factors
        for name, p in peft.named_parameters():
            if "lora_" in name:
                module = name.removeprefix("base_model.model.").split(".lora_")[0]
                f = trained.modules[module]
                p.copy_(f.A if ".lora_A." in name else f.B)
    pairs = load_value_splits(cfg.values[1].data, "harmless", 0, 0.8, 0.1)["train"][:4]
    batch = collate_pairs(tokenize_pairs(tokenizer, pairs, 192, 96), tokenizer.pad_token_id)
    peft.train()
    out = {}
    for kind, target in [("cka", "delta_w"), ("cka", "lora_A"), ("hsic", "delta_w")]:
        loss_fn = DecorrelationLoss([frozen], PenaltySpec(kind, target, "median", 128), alpha=1.0)
        dpo_times, pen_times = [], []
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                c, r = pair_logprobs(peft, batch)
            dpo_loss(c, r, c.detach(), r.detach(), 0.1).loss.backward()
            t1 = time.perf_counter()
            loss_fn(peft, rep)[0].backward()
            t2 = time.perf_counter()
            peft.zero_grad(set_to_none=True)
            if rep:  # the first round warms up
                dpo_times.append(t1 - t0)
                pen_times.append(t2 - t1)
        step, pen = statistics.median(dpo_times), statistics.median(pen_times)
        out[f"{kind}-{target}"] = {"dpo_step_s": step, "penalty_s": pen, "penalty_share": pen / (step + pen),
                                   "raw_dpo_step_s": dpo_times, "raw_penalty_s": pen_times}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="config seeds to run (each a full set of vectors)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} is absent: this benchmark needs ../shared/data beside the repository")
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    base_root = ROOT / "runs" / f"bench-decorrelation-{mode}"
    result = {
        "setting": {
            **s,
            "mode": mode,
            "model": "smollm2-135m-instruct",
            "data": "HH-RLHF test splits, single-turn",
            "lora": "r=16 alpha=32 q,k,v,o dropout 0.05",
            "dpo": "beta 0.1, lr 5e-4, batch 4, bf16, max_length 192",
            "penalty": "CKA (normalised HSIC), median-heuristic sigma, 128 sampled rows for delta_w, summed over modules",
            "variants": {k: v and dict(zip(("penalty", "target", "alpha"), v)) for k, v in VARIANTS.items()},
            "seeds": args.seeds,
        },
        "machine": {"platform": platform.platform(), "cpus": torch.get_num_threads()},
        "versions": package_versions(),
        "variants": {v: {"per_seed": {}} for v in VARIANTS},
    }
    t0 = time.perf_counter()
    for seed in args.seeds:
        run_root = base_root if seed == 0 else base_root / f"seed{seed}"  # seed 0 keeps the first layout (resumable)
        cfgs = {v: make_config(s, v, run_root, seed) for v in VARIANTS}
        train_method(cfgs["plain"], "dpo")
        for variant in VARIANTS:
            if variant != "plain":
                seed_first_vector(cfgs["plain"], cfgs[variant])
                train_method(cfgs[variant], "mva")
        helpful = RunStore(cfgs["plain"].run_dir).get_vector(AdapterRef("dpo", "helpful"))
        for variant, cfg in cfgs.items():
            method = "dpo" if variant == "plain" else "mva"
            harmless = RunStore(cfg.run_dir).get_vector(AdapterRef(method, "harmless"))
            adapters = [load_lora_adapter(helpful.adapter_dir, "helpful"), load_lora_adapter(harmless.adapter_dir, "harmless")]
            overall = interference_report(adapters)["pairs"][0]["overall"]
            log = [
                json.loads(line)
                for line in (Path(cfg.run_dir) / "train" / method / "harmless" / "log.jsonl").read_text().splitlines()
            ]
            result["variants"][variant]["per_seed"][str(seed)] = {
                "harmless_train_log": {
                    k: [round(r.get(k, float("nan")), 5) for r in log] for k in ("dpo_loss", "cka_total", "grad_norm")
                },
                "similarity": {"cos": overall["cos"], "mean_abs_cos": overall["mean_abs_cos"], "cka": overall["cka"]},
                "val_accuracy": {
                    "helpful": [helpful.metrics["val_accuracy"], helpful.metrics["val_accuracy_se"]],
                    "harmless": [harmless.metrics["val_accuracy"], harmless.metrics["val_accuracy_se"]],
                },
                "val_margin": {"helpful": helpful.metrics["val_margin"], "harmless": harmless.metrics["val_margin"]},
                "val_pairs": harmless.metrics["val_pairs"],
                "harmless_seconds_per_step": harmless.seconds_per_step,
            }
    train_seconds = time.perf_counter() - t0
    for entry in result["variants"].values():
        runs = list(entry["per_seed"].values())
        entry["mean_over_seeds"] = {
            "seeds": len(runs),
            **{k: float(np.mean([r["similarity"][k] for r in runs])) for k in ("cos", "mean_abs_cos", "cka")},
            **{f"val_accuracy_{v}": float(np.mean([r["val_accuracy"][v][0] for r in runs])) for v in ("helpful", "harmless")},
            "harmless_seconds_per_step": float(np.mean([r["harmless_seconds_per_step"] for r in runs])),
        }
    cfgs = {v: make_config(s, v, base_root) for v in VARIANTS}
    result["penalty_timing"] = penalty_timing(cfgs["cka-delta_w"], s["timing_reps"])
    result["train_wall_seconds_this_invocation"] = train_seconds
    out = ROOT / "bench" / "results" / ("decorrelation.json" if mode == "full" else "decorrelation-quick.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
