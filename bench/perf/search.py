"""Adaptive front search vs the dense 10×10 reference grid, on the same trained value vectors and judges.

    .venv/bin/python -m bench.perf.search --run runs/bench-quality-full/hh/seed0 --method mva   # ~10 min on 2 cores
    .venv/bin/python -m bench.perf.search --run RUN --quick                                       # smoke run

Evaluates (on the run's val prompts, greedy, its judges) the dense grid ω ∈ {0.1, ..., 1.0}² (100 points), the
adaptive search (`mvalign.search`, budget 25 of those grid points) and, as the naive same-budget baseline, the
uniform 5×5 grid {0.2, ..., 1.0}². All points go through one store under one label, so a ω chosen by two
strategies is generated once (greedy decoding makes it the same point). Hypervolumes share one
reference point: the per-value minimum over every evaluated point. Reported: `hv_fraction_at_25` = HV(adaptive,
25 points) / HV(dense, 100 points), `points_to_98pct` = the fewest adaptive points reaching 98% of it, and the
5×5 grid's fraction. Merges the "search" block into bench/results/perf.json (perf-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mvalign.candidates import grid_points
from mvalign.combine import CombinedModel, load_lora_adapter
from mvalign.data import eval_prompts
from mvalign.evaluate import generation_settings
from mvalign.models import cache_root, load_model
from mvalign.pareto import hypervolume, non_dominated
from mvalign.rewards import ScoreCache, load_reward_models
from mvalign.rundir import RunDir
from mvalign.search import adaptive_search
from mvalign.store import AdapterRef, RunStore
from mvalign.sweep import SweepContext, evaluate_points

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory with trained vectors and judges")
    ap.add_argument("--method", default="mva")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--budget", type=int, default=25)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    cfg = RunDir(args.run).load_config()
    if args.quick:
        args.prompts, args.tokens, dense_axis = 3, 4, [0.1, 0.4, 0.7, 1.0]
    else:
        dense_axis = [round(0.1 * i, 1) for i in range(1, 11)]
    cfg = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"val_prompts": args.prompts,
                                                                        "max_new_tokens": args.tokens})})
    values = [v.name for v in cfg.values]
    run = Path(args.run)
    work = ROOT / "runs" / "bench-perf" / "search" / f"{run.parent.name}-{run.name}-{args.method}"
    store = RunStore(work)
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    combined = CombinedModel(model, [load_lora_adapter(RunDir(run).adapter(AdapterRef(args.method, v)), v) for v in values])
    ctx = SweepContext(load_reward_models(cfg, train_missing=False), generation_settings(cfg), store,
                       ScoreCache(cache_root(cfg.cache_dir) / "reward_scores.sqlite"), bootstrap=200,
                       use_chat_template=cfg.model.chat_template == "auto")
    prompts = eval_prompts(cfg, "val", args.prompts)

    def evaluate(ws, progress=False):
        return evaluate_points(ctx, combined, tokenizer, ws, method="search", split="val", prompts=prompts,
                               progress=progress)

    t0 = time.perf_counter()
    dense = evaluate(grid_points(values, dense_axis), progress=True)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    adaptive = adaptive_search(lambda ws: [p.rewards for p in evaluate(ws)], values, args.budget, dense_axis)
    t_adaptive = time.perf_counter() - t0
    coarse_axis = dense_axis[1::2] if not args.quick else [0.4, 1.0]
    coarse = evaluate(grid_points(values, coarse_axis))

    def mat(rewards):
        return np.array([[r[v] for v in values] for r in rewards], float)
    D, A, C = mat(p.rewards for p in dense), mat(r for _, r in adaptive), mat(p.rewards for p in coarse)
    ref = np.concatenate([D, A, C]).min(axis=0)

    def hv(m):
        return hypervolume(m[non_dominated(m)], ref) if len(m) else 0.0
    hv_dense = hv(D)
    curve = [hv(A[:k]) / hv_dense for k in range(1, len(A) + 1)]
    reach = next((k + 1 for k, f in enumerate(curve) if f >= 0.98), None)
    block = {
        "hv_fraction_at_25": curve[min(len(curve), 25) - 1],
        "points_to_98pct": reach,
        "uniform_5x5_fraction": hv(C) / hv_dense,
        "hv_dense": hv_dense, "hv_fraction_curve": curve, "reference_point": ref.tolist(),
        "dense_points": len(D), "adaptive_points": [{"weights": w, "rewards": r} for w, r in adaptive],
        "seconds": {"dense_grid_generate_and_score": sum(p.seconds_generate + p.seconds_score for p in dense),
                    "adaptive_generate_and_score": sum(p.seconds_generate + p.seconds_score for p in evaluate(
                        [w for w, _ in adaptive])),
                    "this_invocation": {"dense": t_dense, "adaptive": t_adaptive},
                    "note": "generate+score seconds are as stored when each point was first evaluated"},
        "setting": {"run": str(run), "method": args.method, "val_prompts": args.prompts, "max_new_tokens": args.tokens,
                    "dense_axis": dense_axis, "budget": args.budget, "decoding": "greedy",
                    "judges": {k: rm.identity for k, rm in ctx.rewards.items()}},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
    }
    out = ROOT / "bench" / "results" / ("perf-quick.json" if args.quick else "perf.json")
    perf = json.loads(out.read_text()) if out.is_file() else {}
    perf["search"] = block
    out.write_text(json.dumps(perf, indent=2))
    print(json.dumps({k: v for k, v in block.items() if k not in ("adaptive_points", "hv_fraction_curve")}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
