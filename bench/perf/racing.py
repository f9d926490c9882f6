"""Racing on a 10×10 grid of trained value vectors (issue 14): how much generation it saves and what it loses.

    .venv/bin/python bench/perf/racing.py          # ~30 min on 2 cores (training included the first time)
    .venv/bin/python bench/perf/racing.py --quick  # smoke run

Setting: the quality benchmark's TruthfulQA cell, seed 0 (honest vs helpful, SmolLM2, BT judges on MiniLM, mva
vectors with its training budget; runs/bench-quality-full/tqa/seed0, trained here if missing). Grid ω ∈ {0.2, 0.4,
…, 2.0}² (100 points), 64 val prompts, 32 new tokens, greedy, mixed-ω batching on in both runs. First every point
is evaluated on every val prompt (racing off: the reference), then the same grid is raced (doubling shares from 8
prompts, z = 2). Both runs use one store: the race's chunks are separate records (`val[a:b]`), and its survivors'
joined val records are identical to the reference's by construction (tests/test_race.py).

The authors' loop (bench/perf/sweep_cost.py's reference: reload, PEFT merge with ω-scaled alpha, batch-1
generation, scoring) is timed on the first --reference-points points of the same grid and prompts; its cost per
point does not depend on ω, so the grid's is the number of points × the mean.

Recorded in bench/results/perf.json "racing": speedup_vs_reference_loop (the reference loop's estimate for the grid /
the race's wall time), racing_speedup_vs_full, token_fraction (generated rows of the race / of the reference),
front_recall (share of the reference's non-dominated val points that survive), hv_ratio (val hypervolume of the
survivors' front / of the reference front, one reference point), survivors, rounds, and the wall seconds of each
run (timed with nothing else running).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "quality"))
sys.path.insert(0, str(ROOT / "bench" / "perf"))

from run import BUDGET, make_config  # noqa: E402

from mvalign.evaluate import evaluator  # noqa: E402
from mvalign.methods import train_method  # noqa: E402
from mvalign.pareto import default_reference_point, hypervolume, non_dominated  # noqa: E402
from mvalign.rundir import package_versions  # noqa: E402

GRIDS = {"full": [round(0.2 * i, 1) for i in range(1, 11)], "quick": [0.5, 1.0, 1.5, 2.0]}
PROMPTS = {"full": 64, "quick": 16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reference-points", type=int, default=2, help="Points timed with the authors' loop.")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    b = BUDGET[mode]
    root = ROOT / "runs" / ("bench-quality-full" if mode == "full" else "bench-racing-quick")
    cfg = make_config("tqa", 0, b, root)
    cfg.sweep.grid = GRIDS[mode]
    cfg.sweep.val_prompts = PROMPTS[mode]
    cfg.sweep.max_new_tokens = 32 if mode == "full" else 8
    t0 = time.perf_counter()
    train_method(cfg, "mva")
    trained = time.perf_counter() - t0
    ev = evaluator(cfg, "mva")
    values = [v.name for v in cfg.values]
    cands = ev.plan.source.run(lambda cs: ev.points(cs, "val"))
    t0 = time.perf_counter()
    full = ev.points(cands, "val", progress=True)
    full_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    raced = ev.race(cands)
    race_seconds = time.perf_counter() - t0
    # the authors' loop (reload, PEFT merge with scaled alpha, batch-1 generation, scoring) on a few of the same
    # points and prompts: its cost per point does not depend on the point, so the whole grid's is n × that
    from sweep_cost import reference_responses

    from mvalign.models import resolve_model_source

    folder = Path(resolve_model_source(cfg.model.name)[0])
    adapters = {n: ev.combined.adapters[i].path for i, n in enumerate(ev.combined.names)}
    ref_times = []
    for cand in cands[: args.reference_points]:
        t0 = time.perf_counter()
        resp = reference_responses(folder, adapters, [cand.adapters[n] for n in adapters], ev.prompts["val"],
                                   cfg.sweep.max_new_tokens)
        for rm in ev.common["rewards"].values():
            rm.score(ev.prompts["val"], resp)
        ref_times.append(time.perf_counter() - t0)
    reference_seconds = len(cands) * sum(ref_times) / len(ref_times)
    survivors = {tuple(sorted(c.label.items())) for c in raced.survivors}
    matrix = [[p.rewards[v] for v in values] for p in full]
    nd = non_dominated(matrix)
    keys = [tuple(sorted(c.label.items())) for c in cands]
    front = {k for k, m in zip(keys, nd) if m}
    ref = default_reference_point(matrix)
    kept = [row for k, row in zip(keys, matrix) if k in survivors]
    out = {"token_fraction": raced.token_fraction, "front_recall": len(front & survivors) / len(front),
           "hv_ratio": hypervolume(kept, ref) / hypervolume(matrix, ref), "candidates": len(cands),
           "survivors": len(raced.survivors), "reference_front": len(front), "rounds": raced.rounds,
           "seconds": {"full_evaluation": full_seconds, "race": race_seconds, "training": trained,
                       "reference_loop_estimate": reference_seconds, "reference_loop_points_timed": ref_times},
           "speedup_vs_reference_loop": reference_seconds / race_seconds,
           "racing_speedup_vs_full": full_seconds / race_seconds,
           "setting": {"mode": mode, "data": "TruthfulQA (honest vs helpful), quality-benchmark seed 0 vectors (mva)",
                       "grid": cfg.sweep.grid, "val_prompts": len(ev.prompts["val"]), "tokens": cfg.sweep.max_new_tokens,
                       "racing_first": cfg.sweep.racing_first, "racing_z": cfg.sweep.racing_z,
                       "rows_per_pass": cfg.sweep.rows_per_pass, "points_per_pass": cfg.sweep.points_per_pass,
                       "versions": package_versions()}}
    path = ROOT / "bench" / "results" / ("perf.json" if mode == "full" else "perf-quick.json")
    perf = json.loads(path.read_text()) if path.is_file() else {}
    perf["racing"] = out
    path.write_text(json.dumps(perf, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "setting"}, indent=2))


if __name__ == "__main__":
    main()
