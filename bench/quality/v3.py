"""Quality benchmark v3 (issue 36): every registered method (mva-paper and the decode-time fusions mod / mod-mva
included), each claim answered under every measure of a value; resumable cells.

    .venv/bin/python -m bench.quality.v3 run --settings tqa builtin hh --seeds 0 1 2 [--max-minutes 100]
    .venv/bin/python -m bench.quality.v3 run --quick --settings builtin --seeds 0        # smoke run, minutes
    .venv/bin/python -m bench.quality.quality_v3                                          # tables from the json

Budget and settings: v2's (`bench.quality.run`: 60 steps per vector, LoRA r16/α32, 64 val / 128 test prompts, 48 new
tokens, grid {0, 0.5, 1}², the v2 splits), plus a second, judge-free measure of one value per setting:
  tqa      honest: the BT head (primary) and TruthfulQA multiple choice MC2 of the (combined / fused) model on 128
           questions per split (the CSV form, `mvalign.likelihood`; no judge, no generation);
  builtin  harmless: the BT head (primary) and the refusal rate on the harmful eval prompts (XSTest's string rule;
           the built-in data labels its prompts);
  hh       harmless: the BT head (primary) and the refusal rate by the string rule on the harmless-base eval prompts,
           every one of which is labelled harmful (HH's red-team prompts: an approximation, since some are benign
           openers; the labels file is written under runs/, never committed), helpful-base prompts benign.
Every measure scores the same responses. Selection on val is re-done under each measure: each cell also scores on
test every candidate that is non-dominated on val under some measure (`test_all`), so a claim's front under a
second measure is selected by that measure, not borrowed from the first. Cells: bench/results/quality-v3.json.
The judges are the instrument, one per setting for every seed: the BT heads are fit with seed JUDGE_SEED whichever
policy seed runs first (run dirs, heads included, do not outlive a session's machine, so heads are refit on a new
one); a head found fit with another seed stops the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.quality.run import (
    BUDGET,
    DATA,
    JUDGE_SEED,
    ROOT,
    cell_record,
    make_config,
    open_results,
    save,
    seeded_judges,
    todo_cells,
)
from mvalign.config import RunConfig
from mvalign.data import value_splits
from mvalign.evaluate import evaluate_method, evaluator
from mvalign.front import Front
from mvalign.methods import method_names, train_method
from mvalign.pareto import non_dominated
from mvalign.rewards import audit_key
from mvalign.rewards.base import prompt_text
from mvalign.stats import json_key

RESULTS = ROOT / "bench" / "results"
MODES = {"v3": {**BUDGET["v2"], "mc_questions": 128}, "quick": {**BUDGET["quick"], "mc_questions": 4}}
SETTINGS = ["tqa", "builtin", "hh"]


def paths(mode: str):
    tag = "" if mode == "v3" else "-quick"
    return RESULTS / f"quality-v3{tag}.json", ROOT / "runs" / f"bench-quality-v3{tag}"


def hh_labels(cfg: RunConfig, path) -> str:
    """A labels file for HH's eval prompts: harmless-base prompts harmful, helpful-base prompts benign (atomic)."""
    if not path.is_file():
        rows = {}
        for value, label in (("helpful", "benign"), ("harmless", "harmful")):
            for split in ("val", "test"):
                for pair in value_splits(cfg, value)[split]:
                    rows.setdefault(prompt_text(pair.prompt), label)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["prompt", "label"])
            w.writerows(rows.items())
        os.replace(tmp, path)
    return str(path)


def v3_config(setting: str, seed: int, mode: str) -> RunConfig:
    """v2's cell config (split and budget) with the second measure of one value as an audit."""
    b = MODES[mode]
    _, runs = paths(mode)
    cfg = make_config(setting, seed, b, runs, "v2")
    data = cfg.model_dump(mode="json")
    for v in data["values"]:
        if setting == "tqa" and v["name"] == "honest":
            v["audits"] = [{"kind": "truthfulqa-mc", "metric": "mc2", "questions": b["mc_questions"],
                            "path": str(DATA / "truthfulqa")}]
        elif setting in ("builtin", "hh") and v["name"] == "harmless":
            labels = {"labels": hh_labels(cfg, runs / "hh" / "labels.csv")} if setting == "hh" else {}
            v["audits"] = [{"kind": "rate", "on": "harmful", "detector": "string", **labels}]
    # the contract probes are off, as in v2 (whose judges these are): TruthfulQA's honest BT head fails one of its three
    # probes (it prefers the false answer to the Great Wall question), which is why honest has a judge-free measure here
    data["audit"]["probes"] = False
    return RunConfig.model_validate(data)


def measure_maps(cfg: RunConfig) -> list[dict[str, str]]:
    """{value: score key} per measure: the primaries, then each audit in place of its value's primary."""
    names = [v.name for v in cfg.values]
    maps = [{n: n for n in names}]
    for v in cfg.values:
        for r in v.audits:
            maps.append({n: (audit_key(v.name, r) if n == v.name else n) for n in names})
    return maps


def test_all(cfg: RunConfig, method: str, judges) -> list[dict]:
    """Score on test every usable candidate that is non-dominated on val under some measure; the test points (front
    point JSON) of all of them."""
    values = [v.name for v in cfg.values]
    with evaluator(cfg, method, progress=False, rewards=judges) as ev:
        cands = ev.plan.source.run(lambda cs: ev.points(cs, "val"))
        val = ev.points(cands, "val")
        usable = [(c, p) for c, p in zip(cands, val) if not p.flag]
        chosen = {}
        for mp in measure_maps(cfg):
            mask = non_dominated([[float(np.mean(p.scores[mp[v]])) for v in values] for _, p in usable])
            chosen |= {json_key(p.label): c for (c, p), keep in zip(usable, mask) if keep}
        test = ev.points(list(chosen.values()), "test")
        front = Front.build(values, method, val, test, ev.base("val"), ev.base("test"))
        ev.reset()
    return [p.to_json() for p in front.points if p.split == "test"]


def fixed_judges(setting: str, mode: str) -> dict:
    """The setting's BT heads, fit with JUDGE_SEED when missing; stops on a head fit with another seed."""
    return seeded_judges(v3_config(setting, JUDGE_SEED, mode))


def run(settings: list[str], seeds: list[int], methods: list[str], mode: str, max_minutes: float | None) -> None:
    from bench.quality.loops import keep  # here: loops imports this module's configs

    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data beside the repository")
    out, runs = paths(mode)
    results = open_results(out, {**MODES[mode], "mode": mode, "grid": [0.0, 0.5, 1.0], "simplex_step": 0.25,
                                 "model": "smollm2-135m-instruct (embedded)"})
    judges = {}
    keys = [f"{setting}/{seed}/{method}" for setting in settings for seed in seeds for method in methods]
    for key in todo_cells(results, keys, max_minutes):
        setting, seed, method = key.split("/")
        t = time.perf_counter()
        cfg = v3_config(setting, int(seed), mode)
        judges[setting] = judges.get(setting) or fixed_judges(setting, mode)
        results.setdefault("judges", {})[setting] = {
            v.name: {k: json.loads((Path(v.reward.path) / "head.json").read_text()).get(k)
                     for k in ("val_accuracy", "val_pairs", "train_pairs")} for v in cfg.values}
        train_method(cfg, method)
        front = evaluate_method(cfg, method, primary=False, rewards=judges[setting])
        cell = cell_record(cfg, method, front, 0.0)
        cell |= {"test_all": test_all(cfg, method, judges[setting]), "measures": measure_maps(cfg),
                 "cell_wall_seconds": time.perf_counter() - t}
        results["cells"][key] = cell
        results = save(results, out, key)
        # the loops audit's per-prompt scores, kept while the store exists (run dirs do not outlive a session)
        keep(key, results["cells"][key], runs, mode, out.with_name(out.stem + "-loops-scores.json"))
        print(json.dumps({"cell": key, "hv_own_ref": front.hypervolume.test,
                          "seconds": round(time.perf_counter() - t, 1)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS)
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--methods", nargs="+", default=method_names(), choices=method_names())
    r.add_argument("--quick", action="store_true")
    r.add_argument("--max-minutes", type=float, default=None, help="start no new cell after this long")
    r.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args.settings, args.seeds, args.methods, "quick" if args.quick else "v3", args.max_minutes)


if __name__ == "__main__":
    main()
