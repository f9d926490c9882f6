"""Front search from a fraction of the points (issue 34): BoTorch's batch qLogNEHVI (`sweep.strategy: bo`) vs the
adaptive search and random sampling, replayed on stored dense evaluations — no generation in the replay.

    .venv/bin/python -m bench.perf.bo_replay dense --setting builtin   # a cell: train + the 10x10 grid on val and test
    .venv/bin/python -m bench.perf.bo_replay dense --setting tqa       #   (resumable through the run's store)
    .venv/bin/python -m bench.perf.bo_replay dense --setting builtin --prompts 128   # builtin-p128: the same vectors
                                                                       #   on more prompts, reported beside the median
    .venv/bin/python -m bench.perf.bo_replay replay                    # every finished setting -> bench/results/search.json
    .venv/bin/python -m bench.perf.bo_replay timing --setting builtin  # alone: a real bo search vs the authors' loop
    .venv/bin/python -m bench.perf.bo_replay dense --setting builtin --quick   # smoke run (4x4 grid, 4 prompts)

Dense cell: the quality benchmark v2's recipe for the setting (SmolLM2, BT judges on MiniLM, mva vectors: 60 DPO
steps each, seed 0) under runs/bench-bo/<setting>, then every ω of the lattice {0.2, 0.4, ..., 2.0}² (100 points)
on --prompts val prompts and the val-non-dominated ones on --prompts test prompts (all the recall below reads),
greedy, --tokens new tokens, mixed-ω batching.
Replay: each strategy proposes ω from the same lattice and is answered from the stored val records (mean and
standard error of the mean per value from the per-prompt scores): `bo` (q = 4 per round, seeds 0-2), `adaptive`
(`mvalign.search`; deterministic, one order), `random` (seeds 0-2). At 10, 15, 20 and 25 points: the fraction of the
dense grid's val hypervolume (reference point: the per-value minimum over the 100 points) and the recall of the
dense test front (the dense sweep's selection — val-non-dominated, then non-dominated on test — that the strategy's
own val-non-dominated points contain). Noise floor: the dense grid's val HV on 200 bootstrap resamples of the val
prompts, as a fraction of its HV on all of them (2.5 and 97.5 percentiles).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from bench.quality.run import BUDGET, make_config
from mvalign.evaluate import evaluator
from mvalign.methods import train_method
from mvalign.pareto import hypervolume, non_dominated
from mvalign.rundir import package_versions

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "results" / "search.json"
AXIS = {"full": [round(0.2 * i, 1) for i in range(1, 11)], "quick": [0.5, 1.0, 1.5, 2.0]}
AT = (10, 15, 20, 25)
PROMPTS = {False: 32, True: 4}  # the headline cells' val / test prompts (full, quick); other cells are reported beside them


def cell_name(setting: str, quick: bool, prompts: int) -> str:
    """The dense cell's folder: the setting, with `-p<N>` when it is not evaluated on the mode's default prompts."""
    return setting if prompts == PROMPTS[quick] else f"{setting}-p{prompts}"


def config(setting: str, quick: bool, prompts: int, tokens: int):
    mode = "quick" if quick else "v2"
    cfg = make_config(setting, 0, BUDGET[mode], ROOT / "runs" / ("bench-bo-quick" if quick else "bench-bo"), mode)
    cfg.run_dir = str(Path(cfg.run_dir).parent.parent / cell_name(setting, quick, prompts) / "seed0")
    s = cfg.sweep
    s.grid, s.strategy, s.racing = AXIS["quick" if quick else "full"], "grid", "off"
    s.val_prompts = s.test_prompts = prompts
    s.max_new_tokens, s.points_per_pass = tokens, 4
    return cfg


def dense(setting: str, quick: bool, prompts: int, tokens: int) -> dict:
    """Train (once) and evaluate every lattice point on val and test; returns the records as plain data."""
    cfg = config(setting, quick, prompts, tokens)
    first = Path(config(setting, quick, PROMPTS[quick], tokens).run_dir)
    if prompts != PROMPTS[quick] and not Path(cfg.run_dir).exists() and (first / "dense.json").is_file():
        copy_without_points(first, Path(cfg.run_dir))  # the same trained vectors and judges, evaluated on more prompts
    t0 = time.perf_counter()
    train_method(cfg, "mva")
    trained = time.perf_counter() - t0
    with evaluator(cfg, "mva") as ev:
        cands = ev.plan.source.run(lambda cs: ev.points(cs, "val"))
        t0 = time.perf_counter()
        val = ev.points(cands, "val", progress=True)
        names = [v.name for v in cfg.values]
        front = non_dominated([[r.rewards[v] for v in names] for r in val])
        test = ev.points([c for c, keep in zip(cands, front) if keep], "test", progress=True)  # all recall needs

        def rows(recs):
            return [{"weights": r.label, "rewards": r.rewards, "scores": {v: r.scores[v] for v in names}} for r in recs]
        out = {"val": rows(val), "test": rows(test),
               "seconds": {"training": trained, "this_invocation": time.perf_counter() - t0}}
    out["values"] = [v.name for v in cfg.values]
    out["settings"] = {"run_dir": cfg.run_dir, "grid": cfg.sweep.grid, "prompts": prompts, "tokens": tokens,
                       "budget": "quick" if quick else "v2"}
    path = Path(cfg.run_dir) / "dense.json"
    path.write_text(json.dumps(out))
    return out


def copy_without_points(src: Path, dst: Path) -> None:
    """A copy of a finished cell's run (trained vectors, judges, base records) with no evaluated points."""
    import shutil
    import sqlite3
    from contextlib import closing

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("front*.json", "dense.json"))
    with closing(sqlite3.connect(dst / "store.sqlite")) as con, con:
        con.execute("DELETE FROM points")


def _key(w: dict) -> tuple:
    return tuple(sorted((k, round(float(x), 6)) for k, x in w.items()))


def replay_setting(data: dict) -> dict:
    from mvalign.bo import bo_search
    from mvalign.search import adaptive_search

    values = data["values"]
    val = {_key(r["weights"]): r for r in data["val"]}
    test = {_key(r["weights"]): r for r in data["test"]}
    keys = list(val)
    Y = np.array([[val[k]["rewards"][v] for v in values] for k in keys])
    ref = Y.min(0)
    hv_dense = hypervolume(Y[non_dominated(Y)], ref)
    front_val = [k for k, m in zip(keys, non_dominated(Y)) if m]
    T = np.array([[test[k]["rewards"][v] for v in values] for k in front_val])
    dense_test_front = {k for k, m in zip(front_val, non_dominated(T)) if m}

    def se(r):
        return {v: float(np.std(r["scores"][v], ddof=1) / np.sqrt(len(r["scores"][v]))) for v in values}

    def observe(ws):
        return [(val[_key(w)]["rewards"], se(val[_key(w)])) for w in ws]

    def curve(order: list[tuple]) -> dict:
        out = {}
        for k in AT:
            sub = order[:k]
            M = np.array([[val[p]["rewards"][v] for v in values] for p in sub])
            mine = {p for p, m in zip(sub, non_dominated(M)) if m}
            out[k] = {"hv_fraction": hypervolume(M[non_dominated(M)], ref) / hv_dense,
                      "test_front_recall": len(mine & dense_test_front) / len(dense_test_front)}
        return out

    grid = data["settings"]["grid"]
    runs = {"bo": [], "adaptive": [], "random": []}
    for seed in range(3):
        found = bo_search(observe, values, max(AT), grid, q=4, seed=seed)
        stopped = bo_search(observe, values, max(AT), grid, q=4, seed=seed, stop_at_noise=True)
        runs["bo"].append({"seed": seed, "curve": curve([_key(w) for w, _ in found]),
                           "points_when_noise_stops": len(stopped)})
        order = keys[:]
        random.Random(seed).shuffle(order)
        runs["random"].append({"seed": seed, "curve": curve(order)})
    found = adaptive_search(lambda ws: [val[_key(w)]["rewards"] for w in ws], values, max(AT), grid)
    runs["adaptive"].append({"seed": None, "curve": curve([_key(w) for w, _ in found])})
    rng = np.random.default_rng(0)
    n = len(next(iter(val.values()))["scores"][values[0]])
    S = np.array([[val[k]["scores"][v] for v in values] for k in keys])  # points × values × prompts
    boot = []
    for _ in range(200):
        idx = rng.integers(0, n, n)
        B = S[:, :, idx].mean(-1)
        boot.append(hypervolume(B[non_dominated(B)], ref) / hv_dense)
    summary = {name: {str(k): {m: float(np.median([r["curve"][k][m] for r in rs])) for m in
                               ("hv_fraction", "test_front_recall")} for k in AT} for name, rs in runs.items()}
    return {"runs": runs, "median": summary, "dense": {"points": len(keys), "hv_val": hv_dense,
            "val_front": len(front_val), "test_front": len(dense_test_front), "reference_point": ref.tolist(),
            "hv_bootstrap_fraction_2.5_97.5": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]},
            "settings": data["settings"]}


def replay(quick: bool) -> dict:
    root = ROOT / "runs" / ("bench-bo-quick" if quick else "bench-bo")
    cells = {p.parent.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/seed0/dense.json"))}
    if not cells:
        sys.exit(f"no finished dense cell under {root}: run `bench.perf.bo_replay dense --setting ...` first")
    per = {name: replay_setting(d) for name, d in cells.items()}
    out = json.loads(OUT.read_text()) if OUT.is_file() and not quick else {}
    out["settings"] = per
    headline = sorted(n for n in per if per[n]["settings"]["prompts"] == PROMPTS[quick])  # one cell per setting
    allk = {}
    for k in AT:
        for m in ("hv_fraction", "test_front_recall"):
            allk[f"{m}_at_{k}"] = float(np.median([r["curve"][k][m] for n in headline for r in per[n]["runs"]["bo"]]))
    bo = out.get("bo", {})
    bo.update({"hv_fraction_at_20": allk["hv_fraction_at_20"], "test_front_recall_at_20": allk["test_front_recall_at_20"],
               "curve_median_over_settings_and_seeds": allk, "settings": headline,
               "more_prompts": {n: {"median_at_20": per[n]["median"]["bo"]["20"], "prompts": per[n]["settings"]["prompts"],
                                    "hv_bootstrap_fraction_2.5_97.5": per[n]["dense"]["hv_bootstrap_fraction_2.5_97.5"]}
                                for n in sorted(per) if n not in headline}})
    out["bo"] = bo
    out["versions"] = package_versions()
    out["date"] = time.strftime("%Y-%m-%d")
    if not quick:
        OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in bo.items()}, indent=1))
    return out


def timing(setting: str, quick: bool, prompts: int, tokens: int, reference_points: int = 2) -> dict:
    """A real `sweep.strategy: bo` search (20 points, generation through the sweep, on a copy of the dense cell's
    run without its points) timed against the authors' loop on `reference_points` points of the same prompts; the
    loop's cost per point does not depend on ω, so the dense grid's is 100 × its mean. Run it alone on the machine."""
    from bench.perf.sweep_cost import reference_responses
    from mvalign.models import resolve_model_source

    cfg = config(setting, quick, prompts, tokens)
    src = Path(cfg.run_dir)
    if not (src / "dense.json").is_file():
        sys.exit(f"{src}: run the dense cell first (the timing reuses its trained vectors and judges)")
    copy = src.parent / "timing"
    copy_without_points(src, copy)
    cfg.run_dir = str(copy)
    s = cfg.sweep
    s.strategy, s.budget, s.bo_batch, s.bo_stop_at_noise = "bo", 20, 4, False
    with evaluator(cfg, "mva", progress=False) as ev:
        t0 = time.perf_counter()
        cands = ev.plan.source.run(lambda cs: ev.points(cs, "val"))
        bo_seconds = time.perf_counter() - t0
        folder = Path(resolve_model_source(cfg.model.name)[0])
        adapters = {n: ev.combined.adapters[i].path for i, n in enumerate(ev.combined.names)}
        ref = []
        for cand in cands[:reference_points]:
            t0 = time.perf_counter()
            resp = reference_responses(folder, adapters, [cand.adapters[n] for n in adapters], ev.prompts.val, tokens)
            for rm in ev.ctx.rewards.values():
                rm.score(ev.prompts.val, resp)
            ref.append(time.perf_counter() - t0)
    grid_points = len(cfg.sweep.grid) ** len(cfg.values)
    return {"bo_points": len(cands), "bo_seconds": bo_seconds, "reference_seconds_per_point": ref,
            "reference_loop_estimate_for_the_grid": grid_points * sum(ref) / len(ref),
            "speedup_vs_reference_loop": grid_points * sum(ref) / len(ref) / bo_seconds,
            "settings": {"setting": setting, "prompts": prompts, "tokens": tokens, "grid_points": grid_points,
                         "bo_batch": 4, "budget": 20}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cell", choices=["dense", "replay", "timing"])
    ap.add_argument("--setting", choices=["builtin", "tqa", "hh"], default="builtin")
    ap.add_argument("--prompts", type=int, default=32, help="val and test prompts of the dense cell")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.tokens = (PROMPTS[True] if args.prompts == PROMPTS[False] else args.prompts), 4
    if args.cell == "dense":
        d = dense(args.setting, args.quick, args.prompts, args.tokens)
        print(json.dumps({"points": len(d["val"]), "seconds": d["seconds"]}))
    elif args.cell == "timing":
        t = timing(args.setting, args.quick, args.prompts, args.tokens)
        print(json.dumps(t, indent=1))
        if not args.quick:
            out = json.loads(OUT.read_text()) if OUT.is_file() else {}
            out.setdefault("bo", {}).update(speedup_vs_reference_loop=t["speedup_vs_reference_loop"], timing=t)
            OUT.write_text(json.dumps(out, indent=1))
    else:
        replay(args.quick)


if __name__ == "__main__":
    main()
