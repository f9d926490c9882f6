"""Racing's rule replayed on a stored full evaluation (issue 14) → bench/results/racing-sim.json.

    .venv/bin/python -m bench.perf.racing_sim                      # the mva grid of bench/perf/racing.py
    .venv/bin/python -m bench.perf.racing_sim --method mva-nohsic  # its dpo-vector grid (held out from the tuning)
    .venv/bin/python -m bench.perf.racing_sim --pool runs/bench-quality-v2/builtin/seed0   # a run's pooled val points
    .venv/bin/python -m bench.perf.racing_sim --setting hh --method mva-nohsic --val-prompts 512   # racing.py's HH grid
    .venv/bin/python -m bench.perf.racing_sim --setting hh --method mva-nohsic --val-prompts 512 --stored-only
        # the same on the grid points stored so far (a full evaluation still under way); result "hh:mva-nohsic:partial"

Needs bench/perf/racing.py's full evaluation in its store (`racing.py --full-only` makes it; nothing is generated
here). Rules: the earlier one (doubling shares, no finite-population correction), the shipped one over z, and a
successive-halving cut on top of it (not shipped). For every rule `mvalign.race.race` itself runs, its `evaluate`
answering from the stored full records and its `scores` slicing their per-prompt scores, on the prompts in their
order and on `--orders` random orders of the same val prompts (a race's outcome depends on which prompts come
first; the orders show how much). Per rule: the token fraction, the front recall and the HV ratio (as racing.py
defines them), for the stored order and over the random orders (mean, minimum, share of orders with recall ≥ 0.95).

`--populations N …` asks what more val prompts would buy: for each N, `--resamples` populations of N prompts drawn
with replacement from the stored ones (the same draw for every candidate, so pairing is kept), every candidate's
means recomputed over its population (the "full evaluation" there), and the shipped rule (z 2.5 and 3) raced on it.
A model of N prompts from the same distribution, not a measurement on new prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from bench.perf.racing import front_kept, setup
from mvalign.candidates import Candidate
from mvalign.pareto import non_dominated
from mvalign.race import dominance, race, shares
from mvalign.store import RunStore

ROOT = Path(__file__).resolve().parents[2]

# the earlier rule (doubling shares, no finite-population correction), the shipped one (equal shares, corrected)
# over z, and a successive-halving cut on top of the shipped rule (keep < 1, not shipped: see mvalign.race)
RULES = [*[{"first": 8, "z": z, "double": True, "finite": False, "keep": 1.0} for z in (2.0, 2.5, 3.0)],
         *[{"first": 8, "z": z, "double": False, "finite": True, "keep": 1.0} for z in (2.0, 2.25, 2.5, 2.75, 3.0)],
         *[{"first": 8, "z": 2.5, "double": False, "finite": True, "keep": k} for k in (0.75, 0.5)]]


def with_cut(keep: float):
    """`dominated` plus a cut: while more than ⌈keep · C⌉ remain, drop the one most confidently beaten in mean
    (largest t_c > 0); never a candidate no other one beats in mean (t_c ≤ 0)."""
    def rule(scores, z, total=None):
        t = dominance(scores, total)
        drop = t > z
        room = max(int(np.ceil(keep * len(t))), int((t <= 0).sum()))
        order = [i for i in np.argsort(-t, kind="stable") if not drop[i] and t[i] > 0]
        for i in order[: max(0, int((~drop).sum()) - room)]:
            drop[i] = True
        return [bool(x) for x in drop]
    return rule


def replay(cands, full, values, scores, order, rule) -> dict:
    """One race under `rule` on the prompts in `order`; `scores[i]`: full[i]'s values × prompts (stored order)."""
    by_cand = {id(c): r for c, r in zip(cands, full)}
    per = {id(r): m[:, order] for r, m in zip(full, scores)}
    res = race(cands, list(order), lambda cs, a, b: [by_cand[id(c)] for c in cs],
               lambda r, a, b: per[id(r)][:, a:b], rule["first"], rule["z"], double=rule["double"],
               finite=rule["finite"], rule=with_cut(rule["keep"]) if rule["keep"] < 1 else None)
    recall, hv, _ = front_kept(full, {tuple(sorted(c.label.items())) for c in res.survivors}, values)
    return {"token_fraction": res.token_fraction, "front_recall": recall, "hv_ratio": hv, "survivors": len(res.survivors)}


def summarize(runs: list[dict]) -> dict:
    """Mean and minimum of each race measure over `runs` (replays), and the share of runs with recall ≥ 0.95."""
    out = {k: {"mean": float(np.mean([r[k] for r in runs])), "min": float(np.min([r[k] for r in runs]))}
           for k in ("token_fraction", "front_recall", "hv_ratio")}
    out["recall_at_least_0.95"] = float(np.mean([r["front_recall"] >= 0.95 for r in runs]))
    return out


def populations(cands, full, values, scores, sizes, resamples) -> list[dict]:
    """The shipped rule on populations of `sizes` prompts resampled (with replacement, paired) from the stored ones."""
    stacked = np.stack(scores)  # candidates × values × prompts
    rng = np.random.default_rng(1)
    out = []
    for size in sizes:
        for z in (2.5, 3.0):
            rule = {"first": 8, "z": z, "double": False, "finite": True, "keep": 1.0}
            runs = []
            for _ in range(resamples):
                s = stacked[:, :, rng.integers(0, stacked.shape[2], size)]
                recs = [dataclasses.replace(r, rewards={v: float(s[i, j].mean()) for j, v in enumerate(values)})
                        for i, r in enumerate(full)]
                runs.append(replay(cands, recs, values, list(s), np.arange(size), rule))
            row = summarize(runs)
            out.append({"prompts": size, "resamples": resamples, "rule": rule, **row})
            print(f"population {size:>4} z {z:.2f} | tokens {row['token_fraction']['mean']:.3f} recall "
                  f"{row['front_recall']['mean']:.3f} (min {row['front_recall']['min']:.2f}, ≥0.95 in "
                  f"{row['recall_at_least_0.95']:.2f})", flush=True)
    return out


def pooled(run_dir: Path):
    """(candidates, records, values): every usable val record of `run_dir`'s store with the base model's val
    settings key, each relabelled {"candidate": i} (methods share weight vectors)."""
    store = RunStore(run_dir)
    base = store.points("base", "val")
    if not base:
        sys.exit(f"{run_dir}: no base val record in its store.sqlite")
    recs = [r for r in store.points(split="val", settings_key=base[0].settings_key) if not r.flag and r.scores]
    full = [dataclasses.replace(r, weights={"candidate": float(i)}) for i, r in enumerate(recs)]
    return [Candidate({"candidate": float(i)}, {}) for i in range(len(full))], full, list(base[0].rewards)


def separation(full, values, scores, first: int = 8, z: float = 2.5) -> dict:
    """How far apart the grid's points are, against the noise racing must see through: the front's size; per
    dominated point, t (`mvalign.race.dominance`: how confidently its best dominator beats it in every value) on all
    N prompts without the finite-population correction, and how many the shipped rule could drop at its last
    dropping round; the per-prompt sd and the sd of the point means per value; the median paired standard error over
    all pairs on N prompts; and the rows of an oracle race that drops every dominated point after the first share."""
    s = np.stack(scores)  # candidates × values × prompts
    c, n = s.shape[0], s.shape[2]
    front = np.array(non_dominated([[p.rewards[v] for v in values] for p in full]))
    if front.all():
        return {"front": int(front.sum()), "dominated": 0}
    cuts = shares(n, first)
    t_all = dominance(list(s))[~front]
    t_last = dominance(list(s[:, :, : cuts[-2]]), n)[~front] if len(cuts) > 1 else np.full((~front).sum(), -np.inf)
    iu = np.triu_indices(c, 1)
    se = np.stack([(s[iu[0], j] - s[iu[1], j]).std(axis=1, ddof=1) / np.sqrt(n) for j in range(len(values))])
    return {"front": int(front.sum()), "dominated": int((~front).sum()),
            "dominated_t_all_prompts": {q: float(np.quantile(t_all, x)) for q, x in
                                        (("min", 0), ("q25", .25), ("median", .5), ("q75", .75), ("max", 1))},
            f"dominated_t_above_{z}_all_prompts": int((t_all > z).sum()),
            f"dominated_dropped_at_{cuts[-2] if len(cuts) > 1 else n}_prompts_z_{z}": int((t_last > z).sum()),
            "per_prompt_sd": {v: float(s[:, j].std(axis=1, ddof=1).mean()) for j, v in enumerate(values)},
            "sd_of_point_means": {v: float(s[:, j].mean(axis=1).std(ddof=1)) for j, v in enumerate(values)},
            "median_paired_se": {v: float(np.median(se[j])) for j, v in enumerate(values)},
            "oracle_token_fraction": float((front.sum() + (~front).sum() * cuts[0] / n) / c)}


def in_store(ev, cands) -> tuple[list, list]:
    """(candidates, records) of the grid points whose full val evaluation is already in the store."""
    got = [(c, ev.stored(c, "val")) for c in cands]
    got = [(c, r) for c, r in got if r is not None]
    if len(got) < 2:
        sys.exit(f"{len(got)} of {len(cands)} grid points are in the store; run racing.py --full-only first")
    print(f"{len(got)} of {len(cands)} grid points stored", flush=True)
    return [c for c, _ in got], [r for _, r in got]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="mva")
    ap.add_argument("--orders", type=int, default=100)
    ap.add_argument("--populations", type=int, nargs="*", default=[], help="Instead of the rules: the shipped rule "
                    "on resampled populations of these many val prompts (e.g. 64 128 256 512).")
    ap.add_argument("--resamples", type=int, default=20)
    ap.add_argument("--setting", choices=["tqa", "hh"], default="tqa", help="Whose grid (bench/perf/racing.py).")
    ap.add_argument("--val-prompts", type=int, help="As given to racing.py (default 64).")
    ap.add_argument("--stored-only", action="store_true", help="Replay on the grid points already in the store "
                    "(a full evaluation still running or killed; nothing is generated); stored as '<name>:partial'.")
    ap.add_argument("--separation-only", action="store_true", help="Only the grid's separation (see `separation`), "
                    "stored beside the rules, which stay as they are (every rules run also stores it).")
    ap.add_argument("--pool", type=Path, help="Instead: every val point of this run directory evaluated with the "
                    "base model's val settings (all its methods' candidates and the base, one pool).")
    args = ap.parse_args()
    if args.pool:
        cands, full, values = pooled(args.pool)
        name, n, grid, tokens = f"pool:{args.pool.relative_to(ROOT) if args.pool.is_absolute() else args.pool}", \
            len(full[0].responses), None, full[0].generation.get("max_new_tokens")
    else:
        cfg, ev, cands, _ = setup("full", args.method, args.setting, args.val_prompts)
        values = [v.name for v in cfg.values]
        name = args.method if args.setting == "tqa" else f"{args.setting}:{args.method}"
        if args.stored_only:
            cands, full = in_store(ev, cands)
            name += ":partial"
        else:
            full = ev.points(cands, "val")
        n, grid, tokens = len(ev.prompts["val"]), cfg.sweep.grid, cfg.sweep.max_new_tokens
    scores = [np.array([r.scores[v] for v in values]) for r in full]  # stacked once, sliced per order
    rng = np.random.default_rng(0)
    orders = [rng.permutation(n) for _ in range(args.orders)]
    path = ROOT / "bench" / "results" / "racing-sim.json"
    out = json.loads(path.read_text()) if path.is_file() else {}
    sep = separation(full, values, scores)
    print(json.dumps(sep), flush=True)
    if args.separation_only:
        out.setdefault(name, {})["separation"] = sep
        path.write_text(json.dumps(out, indent=2))
        return
    if args.populations:  # stored beside the rules of the same candidate set, which stay as they are
        out.setdefault(name, {})["populations"] = populations(cands, full, values, scores, args.populations,
                                                              args.resamples)
        path.write_text(json.dumps(out, indent=2))
        return
    rows = []
    for rule in RULES:
        stored = replay(cands, full, values, scores, np.arange(n), rule)
        shuffled = [replay(cands, full, values, scores, o, rule) for o in orders]
        summary = summarize(shuffled)
        rows.append({"rule": rule, "stored_order": stored, "random_orders": summary})
        print(f"first {rule['first']:>2} z {rule['z']:.2f} keep {rule['keep']:.2f} double {rule['double']:d} "
              f"finite {rule['finite']:d} | stored: tokens "
              f"{stored['token_fraction']:.3f} recall {stored['front_recall']:.2f} | orders: tokens "
              f"{summary['token_fraction']['mean']:.3f} recall {summary['front_recall']['mean']:.3f} "
              f"(min {summary['front_recall']['min']:.2f}, ≥0.95 in {summary['recall_at_least_0.95']:.2f}) "
              f"hv {summary['hv_ratio']['mean']:.4f} (min {summary['hv_ratio']['min']:.4f})", flush=True)
    kept = {k: v for k, v in out.get(name, {}).items() if k == "populations"}
    out[name] = {**kept, "candidates": len(cands), "val_prompts": n, "orders": args.orders, "grid": grid, "tokens": tokens,
                 "front": sep["front"], "separation": sep, "rules": rows}
    path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
