"""Racing on a 10×10 grid of trained value vectors (issue 14): how much generation it saves and what it loses.

    .venv/bin/python -m bench.perf.racing                 # ~45 min on 2 cores: perf.json "racing" (dpo vectors)
    .venv/bin/python -m bench.perf.racing --method mva    # the grid racing_z was chosen on (racing_sim.py)
    .venv/bin/python -m bench.perf.racing --method mva --full-only   # only its full evaluation, for racing_sim.py
    .venv/bin/python -m bench.perf.racing --quick               # smoke run
    .venv/bin/python -m bench.perf.racing --setting hh --val-prompts 512 --full-only   # HH grid, 512 val prompts
                                                                # (hours on 2 cores; resumes through the store)

Setting: the quality benchmark v2's TruthfulQA cell, seed 0 (honest vs helpful, SmolLM2, BT judges on MiniLM, 60
DPO steps per vector): its run is copied to runs/bench-racing/tqa/seed0 (trained there if the quality run is
missing) and its judges are read in place. `--method` picks whose vectors span the grid: mva-nohsic (the per-value
dpo vectors; the default, because racing's z was chosen by replaying races on the mva grid) or mva. Grid
ω ∈ {0.2, 0.4, …, 2.0}² (100 points), 64 val prompts, 32 new tokens, greedy, mixed-ω batching on in both runs.
First every point is evaluated on every val prompt (racing off: the reference), then the same grid is raced with
the configured rule (`mvalign.race`). Both runs use one store: the race's chunks are separate records
(`val[a:b]`), and its survivors' joined val records are those of the reference by construction
(tests/test_race.py). `--setting hh`: HH-RLHF single-turn helpful vs harmless with a split of 40% val prompts
(556), so racing can be measured with --val-prompts 512 (what racing_sim.py's populations say half the rows needs);
its judges and dpo vectors are trained under runs/bench-racing/hh (v2 budget, seed 0) and its result is perf.json
"racing_hh". If the reference is already in the store (an earlier `--full-only`), its cost is the sum of
its records' generation + scoring seconds ("full_evaluation_in_store").

The authors' loop (bench/perf/sweep_cost.py's reference: reload, PEFT merge with ω-scaled alpha, batch-1
generation, scoring) is timed on the first --reference-points points of the same grid and prompts; its cost per
point does not depend on ω, so the grid's is the number of points × the mean.

Recorded: speedup_vs_reference_loop (the reference loop's estimate for the grid / the race's wall time),
racing_speedup_vs_full (the reference's stored seconds / the race's wall time), token_fraction (generated rows of
the race / of the reference), front_recall (share of the reference's non-dominated val points that survive),
hv_ratio (val hypervolume of the survivors' front / of the reference front, one reference point), survivors,
rounds, and the wall seconds of each part (timed with nothing else running).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

from bench.quality.run import BUDGET, make_config
from mvalign.data import eval_prompts
from mvalign.evaluate import evaluator
from mvalign.methods import train_method
from mvalign.pareto import default_reference_point, hypervolume, non_dominated
from mvalign.race import race_val
from mvalign.rundir import package_versions

ROOT = Path(__file__).resolve().parents[2]

QUALITY = ROOT / "runs" / "bench-quality-v2"
GRIDS = {"full": [round(0.2 * i, 1) for i in range(1, 11)], "quick": [0.5, 1.0, 1.5, 2.0]}
PROMPTS = {"full": 64, "quick": 16}
# HH (helpful vs harmless, single-turn): 700 + 662 prompts; 40% val gives 556 (>= 512), 45% train leaves the 240
# pairs per value that 60 steps of batch 4 read
HH_SPLIT = {"train": 0.45, "val": 0.4, "test": 0.15}
DATA_NAMES = {"tqa": "TruthfulQA (honest vs helpful), quality-benchmark v2 seed 0 vectors",
              "hh": f"HH-RLHF single-turn (helpful vs harmless), split {HH_SPLIT}, v2 budget, seed 0 vectors"}


def reuse_quality_run(root: Path) -> None:
    """The full mode races the quality benchmark v2's TruthfulQA seed 0 mva vectors: copy that run (trained vectors
    and their store records) when it exists and this root does not, so nothing is trained twice and the quality
    run's own store is not touched (its judges are read in place)."""
    src = QUALITY / "tqa" / "seed0"
    if (root / "tqa").exists() or not (src / "adapters" / "mva").is_dir():
        return
    shutil.copytree(src, root / "tqa" / "seed0", ignore=shutil.ignore_patterns("front-*.json"))


def setup(mode: str, method: str, setting: str = "tqa", val_prompts: int | None = None,
          points_per_pass: int | None = None):
    """(config, evaluator, candidates, training seconds) of the raced grid."""
    b = BUDGET["quick" if mode == "quick" else "v2"]
    root = ROOT / "runs" / ("bench-racing" if mode == "full" else "bench-racing-quick")
    split = HH_SPLIT if setting == "hh" else None
    if mode == "full" and setting == "tqa":  # the quality run's judges (read only) and a copy of its seed-0 run
        reuse_quality_run(root)
        cfg = make_config("tqa", 0, b, QUALITY, "v2")
        cfg.run_dir = str(root / "tqa" / "seed0")
    else:  # hh: judges and vectors trained under this root (the quality benchmark's HH split has too few val prompts)
        cfg = make_config(setting, 0, b, root, "v2" if mode == "full" else mode, split)
    cfg.sweep.grid = GRIDS[mode]
    cfg.sweep.val_prompts = val_prompts or PROMPTS[mode]
    cfg.sweep.max_new_tokens = 32 if mode == "full" else 8
    cfg.sweep.points_per_pass = points_per_pass if points_per_pass is not None else cfg.sweep.points_per_pass
    held_out = len(eval_prompts(cfg, "val", cfg.sweep.val_prompts))  # checked before the training it would waste
    if held_out < cfg.sweep.val_prompts:
        sys.exit(f"{setting}: {held_out} val prompts in the split, fewer than --val-prompts {cfg.sweep.val_prompts}")
    t0 = time.perf_counter()
    train_method(cfg, method)
    trained = time.perf_counter() - t0
    ev = evaluator(cfg, method)
    return cfg, ev, ev.plan.source.run(lambda cs: ev.points(cs, "val")), trained


def front_kept(full, kept_keys, values) -> tuple[float, float, int]:
    """(front recall, HV ratio, front size): the full evaluation's non-dominated val points that are among
    `kept_keys` (candidate labels as sorted tuples), and the HV of the kept points / of all (one reference point)."""
    matrix = [[p.rewards[v] for v in values] for p in full]
    keys = [tuple(sorted(p.label.items())) for p in full]
    front = {k for k, m in zip(keys, non_dominated(matrix)) if m}
    ref = default_reference_point(matrix)
    kept = [row for k, row in zip(keys, matrix) if k in kept_keys]
    return len(front & kept_keys) / len(front), hypervolume(kept, ref) / hypervolume(matrix, ref), len(front)


def race_chunks(ev, delete: bool = False) -> int:
    """The race chunk records (split `val[a:b]`) of the grid's method in this bench's own run store; `delete`: remove
    them (a timed race must generate its chunks; the store has no delete, so this bench-owned copy is edited here)."""
    store = ev.ctx.store
    if not delete:
        return sum(p.split.startswith("val[") for p in store.points(ev.key))
    with closing(sqlite3.connect(store.path)) as con, con:
        return con.execute("DELETE FROM points WHERE method = ? AND split LIKE 'val[%'", (ev.key,)).rowcount


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--method", default="mva-nohsic", help="Whose vectors span the grid (mva-nohsic: the dpo vectors).")
    ap.add_argument("--reference-points", type=int, default=2, help="Points timed with the authors' loop.")
    ap.add_argument("--full-only", action="store_true", help="Stop after the full evaluation (it is stored).")
    ap.add_argument("--setting", choices=["tqa", "hh"], default="tqa", help="tqa: the quality run's TruthfulQA seed-0 "
                    "vectors; hh: HH-RLHF helpful vs harmless, judges and vectors trained here (enough val prompts "
                    "for --val-prompts 512).")
    ap.add_argument("--val-prompts", type=int, help="Val prompts (default 64; --quick 16).")
    ap.add_argument("--fresh-race", action="store_true", help="Delete an earlier race's chunk records first (a race "
                    "that finds them only reads the store, so its time would mean nothing); the full evaluation stays.")
    ap.add_argument("--points-per-pass", type=int, help="Points generated (and stored) together; fewer loses less "
                    "work when a long evaluation is killed (default: the config's).")
    args = ap.parse_args()
    if args.points_per_pass is not None and args.points_per_pass < 1:
        ap.error(f"--points-per-pass must be at least 1, got {args.points_per_pass}")
    mode = "quick" if args.quick else "full"
    cfg, ev, cands, trained = setup(mode, args.method, args.setting, args.val_prompts, args.points_per_pass)
    values = [v.name for v in cfg.values]
    t0 = time.perf_counter()
    full = ev.points(cands, "val", progress=True)
    full_seconds = time.perf_counter() - t0
    stored = sum(p.seconds_generate + p.seconds_score for p in full)
    if args.full_only:
        print(json.dumps({"full_evaluation_seconds": full_seconds, "points": len(full)}))
        return
    chunks = race_chunks(ev)
    if chunks and not args.fresh_race:
        sys.exit(f"{ev.ctx.store.path}: {chunks} race chunk records of {ev.key} from an earlier race are stored; "
                 "a race would read them instead of generating, so its timing would mean nothing. Re-run with "
                 "--fresh-race to delete them first (the full evaluation's records are kept).")
    if chunks:
        print(f"deleted {race_chunks(ev, delete=True)} race chunk records of {ev.key}", flush=True)
    t0 = time.perf_counter()
    raced = race_val(ev, cands)
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
        resp = reference_responses(folder, adapters, [cand.adapters[n] for n in adapters], ev.prompts.val,
                                   cfg.sweep.max_new_tokens)
        for rm in ev.ctx.rewards.values():
            rm.score(ev.prompts.val, resp)
        ref_times.append(time.perf_counter() - t0)
    reference_seconds = len(cands) * sum(ref_times) / len(ref_times)
    recall, hv_ratio, front = front_kept(full, {tuple(sorted(c.label.items())) for c in raced.survivors}, values)
    out = {"token_fraction": raced.token_fraction, "front_recall": recall, "hv_ratio": hv_ratio,
           "candidates": len(cands), "survivors": len(raced.survivors), "reference_front": front, "rounds": raced.rounds,
           "seconds": {"full_evaluation": full_seconds, "full_evaluation_in_store": stored, "race": race_seconds,
                       "training": trained, "reference_loop_estimate": reference_seconds,
                       "reference_loop_points_timed": ref_times},
           "speedup_vs_reference_loop": reference_seconds / race_seconds,
           "racing_speedup_vs_full": stored / race_seconds,
           "setting": {"mode": mode, "data": DATA_NAMES[args.setting] + f" ({args.method})", "grid": cfg.sweep.grid,
                       "val_prompts": len(ev.prompts.val),
                       "tokens": cfg.sweep.max_new_tokens, "racing_first": cfg.sweep.racing_first,
                       "racing_z": cfg.sweep.racing_z,
                       "rows_per_pass": cfg.sweep.rows_per_pass, "points_per_pass": cfg.sweep.points_per_pass,
                       "versions": package_versions()}}
    path = ROOT / "bench" / "results" / ("perf.json" if mode == "full" else "perf-quick.json")
    perf = json.loads(path.read_text()) if path.is_file() else {}
    perf["racing" if args.setting == "tqa" else f"racing_{args.setting}"] = out
    path.write_text(json.dumps(perf, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "setting"}, indent=2))


if __name__ == "__main__":
    main()
