"""Scale-out on this machine (issue 18): 1 vs 2 training processes, local vs Ray sweep → bench/results/scale.json.

    .venv/bin/python -m bench.perf.scale            # ~8 min on 2 cores, nothing else running
    .venv/bin/python -m bench.perf.scale --quick    # small settings, bench/results/scale-quick.json

Training: the embedded SmolLM2, built-in data, DPO on both values with the same global batch (4 pairs per optimizer
step): one process (batch 2 × 2 accumulation steps, torch's default threads) vs `accelerate launch --multi_gpu
--num_processes 2` (batch 2 each, gloo, one thread each: torchrun's default). Seconds per optimizer step: the median
of log.jsonl over both values' steps after the first. The adapters must agree (max |Δ| reported).
Sweep: `soup` on those vectors (simplex, mixed-ω batching), local backend vs `sweep.backend: ray` with 2 workers of 1
CPU on a private 127.0.0.1 cluster; points per minute = points stored / wall seconds of `evaluate_method`, Ray's
cluster start included (its share is reported). On 2 cores both are bounded by the same 2 cores: this measures the
overhead of the machinery, not a speed-up, which needs more cores, GPUs or machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "runs" / "bench-scale"
SETTINGS = {"full": {"limit": 32, "steps": 8, "simplex_step": 0.125, "val_prompts": 16, "test_prompts": 8, "tokens": 16},
            "quick": {"limit": 8, "steps": 2, "simplex_step": 0.5, "val_prompts": 2, "test_prompts": 2, "tokens": 4}}


def config(folder: Path, s: dict, grad_accum: int) -> Path:
    values = [{"name": v, "data": {"format": "builtin", "part": "policy", "limit": s["limit"]},
               "reward": {"kind": "bt-head", "data": {"format": "builtin", "part": "reward"}, "epochs": 10}}
              for v in ("helpful", "harmless")]
    cfg = {"values": values, "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
           "training": {"max_steps": s["steps"], "batch_size": 2, "grad_accum": grad_accum, "max_length": 128,
                        "max_prompt_length": 64, "eval_pairs": 8, "save_every": 100},
           "sweep": {"simplex_step": s["simplex_step"], "val_prompts": s["val_prompts"],
                     "test_prompts": s["test_prompts"], "max_new_tokens": s["tokens"], "racing": "off"},
           "run_dir": str(folder / "run")}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "config.yaml"


def train(cfg: Path, processes: int) -> float:
    env = {**os.environ, "TQDM_DISABLE": "1", "MVALIGN_CACHE_DIR": str(cfg.parent / "cache")}
    models = Path(os.environ.get("MVALIGN_CACHE_DIR", Path.home() / ".cache" / "mvalign")) / "models"
    if models.is_dir():  # share the converted embedded model, not the reference cache
        (cfg.parent / "cache").mkdir(exist_ok=True)
        if not (cfg.parent / "cache" / "models").exists():
            (cfg.parent / "cache" / "models").symlink_to(models)
    cli = ["-m", "mvalign.cli", "train", str(cfg), "--method", "dpo"]
    cmd = [sys.executable, *cli] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1",
        "--main_process_port", "29631", *cli]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"training with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def step_seconds(run: Path) -> list[float]:
    out = []
    for log in sorted((run / "train" / "dpo").glob("*/log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        out += [r["seconds"] for r in rows if r["step"] > 1]
    return out


def adapter_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    worst = 0.0
    for v in ("helpful", "harmless"):
        x = load_file(str(a / "adapters" / "dpo" / v / "adapter_model.safetensors"))
        y = load_file(str(b / "adapters" / "dpo" / v / "adapter_model.safetensors"))
        worst = max(worst, max((x[k] - y[k]).abs().max().item() for k in x))
    return worst


def sweep(cfg_path: Path, backend: str) -> dict:
    from mvalign.config import load_config
    from mvalign.evaluate import evaluate_method
    from mvalign.store import RunStore

    cfg = load_config(cfg_path)
    cfg.sweep = cfg.sweep.model_copy(update={"backend": backend})
    os.environ["MVALIGN_CACHE_DIR"] = str(cfg_path.parent / "cache")
    t0 = time.perf_counter()
    if backend == "ray":
        import ray

        from mvalign.scaleout import loopback_only

        loopback_only(ray)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    start = time.perf_counter() - t0
    evaluate_method(cfg, "soup", progress=False)
    seconds = time.perf_counter() - t0
    if backend == "ray":
        ray.shutdown()
    points = len(RunStore(Path(cfg.run_dir)).points())
    return {"seconds": seconds, "points": points, "points_per_minute": 60 * points / seconds,
            "cluster_start_seconds": start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    shutil.rmtree(WORK / mode, ignore_errors=True)
    one, two = config(WORK / mode / "one", s, 2), config(WORK / mode / "two", s, 1)
    wall = {"1": train(one, 1), "2": train(two, 2)}
    steps = {"1": step_seconds(one.parent / "run"), "2": step_seconds(two.parent / "run")}
    training = {f"processes_{k}": {"seconds_per_step": statistics.median(v), "steps_timed": len(v),
                                   "wall_seconds_with_loading": wall[k]} for k, v in steps.items()}
    training["ratio_2_vs_1"] = training["processes_2"]["seconds_per_step"] / training["processes_1"]["seconds_per_step"]
    training["adapters_max_abs_diff"] = adapter_diff(one.parent / "run", two.parent / "run")
    # the sweep: the same trained run (reward heads trained first, untimed) evaluated by each backend in its own copy
    from mvalign.config import load_config
    from mvalign.rewards import load_reward_models

    os.environ["MVALIGN_CACHE_DIR"] = str(one.parent / "cache")
    load_reward_models(load_config(one))
    for name in ("local", "ray"):
        shutil.copytree(one.parent, WORK / mode / f"sweep-{name}", symlinks=True)
        cfg = yaml.safe_load((WORK / mode / f"sweep-{name}" / "config.yaml").read_text())
        cfg["run_dir"] = str(WORK / mode / f"sweep-{name}" / "run")
        (WORK / mode / f"sweep-{name}" / "config.yaml").write_text(yaml.safe_dump(cfg))
    sweeps = {name: sweep(WORK / mode / f"sweep-{name}" / "config.yaml", name) for name in ("local", "ray")}
    sweeps["ratio_ray_vs_local_points_per_minute"] = sweeps["ray"]["points_per_minute"] / sweeps["local"]["points_per_minute"]
    result = {"training": training, "sweep": sweeps,
              "setting": {**s, "mode": mode, "model": "smollm2-135m-instruct (fp32, CPU)",
                          "machine": f"{os.cpu_count()} CPU cores", "global_batch": 4,
                          "note": "2 cores bound every gain here; GPU numbers need a lent GPU"}}
    out = ROOT / "bench" / "results" / ("scale.json" if mode == "full" else "scale-quick.json")
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
