"""Quality benchmark: every method, matched budgets, two real settings, several seeds; resumable cell by cell.

    .venv/bin/python -m bench.quality.run                      # full: hh + tqa, seeds 0 1 2 (see bench/README.md)
    .venv/bin/python -m bench.quality.run --max-minutes 100    # stop starting new cells after 100 minutes
    .venv/bin/python -m bench.quality.run --quick              # smoke run (1 seed, 1 step, 3 prompts), a few minutes
    .venv/bin/python -m bench.quality.run --budget v2 --settings builtin tqa --seeds 0 --max-minutes 100
                                                               # v2 (issue 17): 60 steps, 64 val / 128 test prompts,
                                                               # 48 tokens → bench/results/quality-v2.json
    .venv/bin/python -m bench.quality.quality_table            # rebuild bench/results/quality.md from quality.json

Settings (../shared/data): `hh` = HH-RLHF helpful vs harmless; `tqa` = TruthfulQA honest vs helpful. Base model:
the embedded SmolLM2-135M-Instruct. Judges: Bradley-Terry heads on frozen all-MiniLM-L6-v2 (one per value,
trained once per setting, shared by every seed and method):
  hh   helpful judge on single-turn helpful-online + helpful-rejection-sampled (other dialogues than DPO's),
       harmless judge on the single-turn harmless-base pairs of the train split (the evaluation prompts are
       single-turn too; with all dialogues both judges fell to 0.53 held-out accuracy); DPO on single-turn
       helpful-base / harmless-base train pairs;
  tqa  judges and DPO on the TruthfulQA pairs of the train split (questions).
  builtin  (v2) the built-in helpful / harmless data: judges on its `reward` prompts, DPO and evaluation on its
       disjoint `policy` prompts (the judges are near-exact there: a setting where the measurement is not the limit).
  Splits hash (seed, prompt), so evaluation prompts (val / test split) are unseen by judges and DPO alike; the
  harmless and tqa judges share train prompts with DPO, as a reward model and its policy do in RLHF.
Budgets: every value vector gets S optimizer steps (batch 4); lw and modpo train one model per weight w ∈ {0.25,
0.5, 0.75} with n·S/3 steps each (the same total as n value vectors); seqt trains S steps per stage. Candidates:
extrapolation box ω ∈ {0, 0.5, 1}² \\ 0 (mva, mva-nohsic, mva-orth), simplex step 0.25 (soup, vcsoup, mva-convex),
each vector alone (dpo), stages (seqt), per-weight models (lw, modpo). Selection on val prompts, report on test
prompts, greedy decoding. Seeds change the training seed (LoRA init, data order, dropout); data splits, prompts and
judges are fixed. A cell = (setting, seed, method): stored in bench/results/quality.json as soon as it finishes and
skipped when re-run; run directories live under runs/bench-quality-full/ (--quick: runs/bench-quality-quick/; not committed).
Each cell records `cell_wall_seconds`: its whole wall time (training included) on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from bench.quality.quality_table import write_table
from bench.quality.quality_v2 import write as write_v2
from mvalign.combine import load_lora_adapter
from mvalign.config import RunConfig
from mvalign.devices import native_bf16
from mvalign.diagnose import interference_report
from mvalign.errors import write_atomic
from mvalign.evaluate import evaluate_method
from mvalign.front import Front
from mvalign.methods import get_method, method_names, train_method
from mvalign.rewards import load_reward_models
from mvalign.rundir import RunDir, package_versions
from mvalign.store import AdapterRef, RunStore

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"

METHODS = method_names()  # every registered method
BUDGET = {
    "full": {"steps": 24, "limit": 320, "eval_pairs": 48, "prompts": 24, "tokens": 32, "rm_epochs": 30,
             "rm_limit": None, "max_length": 160, "max_prompt_length": 96},
    "quick": {"steps": 1, "limit": 8, "eval_pairs": 4, "prompts": 3, "tokens": 4, "rm_epochs": 2,
              "rm_limit": 48, "max_length": 96, "max_prompt_length": 64},
    # issue 17's v2 budget: >= 60 steps per vector, >= 64 val / 128 test prompts, >= 48 new tokens
    "v2": {"steps": 60, "limit": None, "eval_pairs": 64, "val_prompts": 64, "test_prompts": 128, "tokens": 48,
           "rm_epochs": 30, "rm_limit": None, "max_length": 192, "max_prompt_length": 96},
}
SPLITS = {
    "v2": {
        # TruthfulQA: 817 questions; 60/15/25% gives ~120 val and ~200 test questions (>= 64 / 128)
        "tqa": {"train": 0.6, "val": 0.15, "test": 0.25},
        # the built-in data has 180 policy prompts in all: 30/30/40% gives 57 val and 62 test prompts (the split hashes
        # prompts), keeping train pairs for 60 steps (fewer than v2 asks: stated in the table)
        "builtin": {"train": 0.3, "val": 0.3, "test": 0.4},
    },
}
SETTINGS = ["hh", "tqa", "builtin"]
WEIGHTS = [0.25, 0.5, 0.75]


def values_for(setting: str, b: dict, root: Path) -> list[dict]:
    def judge(name):
        return {"kind": "bt-head", "path": str(root / setting / "rewards" / name), "epochs": b["rm_epochs"]}
    if setting == "hh":
        hh = DATA / "hh-rlhf"
        def src(*folders, **extra):
            return {"format": "hh-rlhf", "path": [str(hh / f / "test.jsonl.gz") for f in folders], "on_invalid": "skip", **extra}
        return [
            {"name": "helpful", "data": src("helpful-base", single_turn_only=True, limit=b["limit"]),
             "reward": {**judge("helpful"), "data": src("helpful-online", "helpful-rejection-sampled", single_turn_only=True,
                                                      limit=b["rm_limit"])}},
            {"name": "harmless", "data": src("harmless-base", single_turn_only=True, limit=b["limit"]),
             "reward": {**judge("harmless"), "data": src("harmless-base", single_turn_only=True, limit=b["rm_limit"])}},
        ]
    if setting == "builtin":
        return [{"name": v, "data": {"format": "builtin", "part": "policy"},
                 "reward": {**judge(v), "data": {"format": "builtin", "part": "reward"}}} for v in ("helpful", "harmless")]
    tqa = {"format": "truthfulqa", "path": [str(DATA / "truthfulqa")], "on_invalid": "skip"}
    return [{"name": v, "data": {**tqa, "value": v, "limit": b["limit"]},
             "reward": {**judge(v), "data": {**tqa, "value": v, "limit": b["rm_limit"]}}} for v in ("honest", "helpful")]


JUDGE_SEED = 0
"""The BT heads of a setting are fit with this seed whichever policy seed runs first: one instrument for every seed
(run dirs, heads included, do not outlive a session's machine, so heads are refit on a new one)."""


def seeded_judges(cfg: RunConfig) -> dict:
    """The judges of `cfg` (a config of training seed JUDGE_SEED), fit when missing; stops on a head fit with another
    seed, whose cells would have been scored by another instrument."""
    if cfg.training.seed != JUDGE_SEED:
        raise ValueError(f"judges are fit with seed {JUDGE_SEED}; got a config of seed {cfg.training.seed}")
    for v in cfg.values:
        head = Path(v.reward.path) / "head.json"
        seed = json.loads(head.read_text())["settings"]["seed"] if head.is_file() else JUDGE_SEED
        if seed != JUDGE_SEED:
            sys.exit(f"{head}: fit with seed {seed}, the benchmark's judges with seed {JUDGE_SEED}: move {head.parent} "
                     "aside and re-run (the cells it scored were judged by another instrument)")
    return load_reward_models(cfg)


def make_config(setting: str, seed: int, b: dict, root: Path, mode: str = "full", split: dict | None = None) -> RunConfig:
    """The cell's config; `split` (fractions) overrides the mode's split (bench/perf/racing.py's HH grid)."""
    values = values_for(setting, b, root)
    split = split or SPLITS.get(mode, {}).get(setting)
    names = [v["name"] for v in values]
    per_weight = {"weights": [{names[0]: w, names[1]: round(1 - w, 10)} for w in WEIGHTS], "steps_per_model": lw_steps(b)}
    return RunConfig.model_validate({
        "values": values,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {"beta": 0.1, "lr": 5e-4, "max_steps": b["steps"], "batch_size": 4, "max_length": b["max_length"],
                     "max_prompt_length": b["max_prompt_length"], "precision": "bf16", "seed": seed, "save_every": 8,
                     "eval_pairs": b["eval_pairs"]},
        "sweep": {"strategy": "grid", "grid": [0.0, 0.5, 1.0], "simplex_step": 0.25,
                  "val_prompts": b.get("val_prompts", b.get("prompts")), "test_prompts": b.get("test_prompts", b.get("prompts")),
                  "max_new_tokens": b["tokens"], "batch_size": 12, "bootstrap": 1000},
        "methods": {"mva": {"alpha": 0.1, "penalty": "cka", "target": "delta_w"},
                    "vcsoup": {"mode": "threshold", "tau": 0.0, "text": "response"},
                    "lw": per_weight, "modpo": {**per_weight, "margin": "implicit"}},
        "run_dir": str(root / setting / f"seed{seed}"),
        **({"split": split} if split else {}),
    })


def lw_steps(b: dict) -> int:
    """Steps of each lw / modpo model: the budget of two value vectors split over the weights."""
    return max(1, round(2 * b["steps"] / len(WEIGHTS)))


def interference(cfg: RunConfig, source: str) -> dict | None:
    """Similarity of a method's value vectors (None for methods that train no per-value vectors)."""
    if get_method(source).kind != "value-vectors":
        return None
    run = RunDir.of(cfg)
    adapters = [load_lora_adapter(run.adapter(AdapterRef(source, v.name)), v.name) for v in cfg.values]
    overall = interference_report(adapters)["pairs"][0]["overall"]
    return {k: overall[k] for k in ("cos", "mean_abs_cos", "cka")}


def cpu_model() -> str:
    """The CPU a cell ran on, e.g. 'AMD EPYC' (Linux: /proc/cpuinfo's model name), with whether bf16 is native."""
    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (info.read_text().splitlines() if info.is_file() else [])
             if line.startswith("model name")]
    native = "native" if native_bf16(torch.device("cpu")) else "emulated"
    return f"{names[0] if names else platform.processor() or platform.machine()} (bf16 {native})"


def cell_record(cfg: RunConfig, method: str, front: Front, seconds: float) -> dict:
    store = RunStore(cfg.run_dir)
    source = get_method(method).source
    vectors = {r.name: {k: r.metrics.get(k) for k in r.metrics if k.startswith("val_") or k in ("penalty", "reused")}
               | {"steps": r.steps, "train_pairs": r.train_pairs, "seconds_per_step": r.seconds_per_step}
               for r in store.vectors(source)}
    data = front.to_json()
    return {
        "method": method,
        "torch_threads": torch.get_num_threads(),
        "values": data["values"],
        "base": data["base"],
        "points": data["points"],
        "hypervolume_own_reference": data["hypervolume"],
        "own_reference_point": data["reference_point"],
        "training": data["training"],
        "settings": data["settings"],
        "vectors": vectors,
        "interference": interference(cfg, source),
        "cell_wall_seconds": seconds,
        "precision": cfg.training.precision,
        "cpu": cpu_model(),
    }


def migrate(results: dict) -> dict:
    """Rename fields of cells stored by earlier versions: `evaluation_seconds` held the whole cell's wall time
    (training + evaluation), so it is now `cell_wall_seconds`."""
    for c in results.get("cells", {}).values():
        if "evaluation_seconds" in c:
            c["cell_wall_seconds"] = c.pop("evaluation_seconds")
    return results


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the writers' lock of a results file (every process that rewrites it takes it first)."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def write_results(path: Path, results: dict, default=None) -> None:
    """Replace a results file atomically (`mvalign.errors.write_atomic`); call it holding `locked(path)`."""
    write_atomic(path, "the benchmark results", lambda tmp: tmp.write_text(json.dumps(results, indent=1, default=default)))


def save(results: dict, path: Path, new_cell: str | None = None) -> dict:
    """Write results, merging cells that other processes (e.g. another setting run in parallel) stored meanwhile;
    returns the merged results. A file lock serialises writers."""
    with locked(path):
        on_disk = migrate(json.loads(path.read_text())) if path.is_file() else {"cells": {}}
        merged = {**on_disk, **{k: v for k, v in results.items() if k not in ("cells", "judges")}}
        merged["cells"] = {**on_disk.get("cells", {}), **({new_cell: results["cells"][new_cell]} if new_cell else {})}
        merged["judges"] = {**on_disk.get("judges", {}), **results.get("judges", {})}
        write_results(path, merged)
    return merged


def open_results(path: Path, budget: dict) -> dict:
    """The results file's cells (empty when new) with this run's budget, machine and versions recorded."""
    results = json.loads(path.read_text()) if path.is_file() else {"cells": {}}
    return results | {"budget": budget, "versions": package_versions(),
                      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                  "torch_threads": torch.get_num_threads()}}


def todo_cells(results: dict, keys, max_minutes: float | None):
    """The keys without a stored cell, in order; stops (saying so) once `max_minutes` have passed since the call."""
    t0 = time.perf_counter()
    for key in keys:
        if key in results["cells"]:
            continue
        if max_minutes is not None and (time.perf_counter() - t0) / 60 > max_minutes:
            print(f"stopping: {max_minutes} minutes reached; re-run to continue", flush=True)
            return
        yield key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", choices=["full", "v2"], default="full", help="full: the v1 budget (quality.json); v2: "
                    "issue 17's budget (quality-v2.json)")
    ap.add_argument("--settings", nargs="+", default=None, choices=SETTINGS,
                    help="default: hh tqa (full), builtin tqa hh (v2)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--max-minutes", type=float, default=None, help="start no new (setting, seed) after this long")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (two runs side by side: 1 each)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data beside the repository")
    mode = "quick" if args.quick else args.budget
    b = BUDGET[mode]
    settings = args.settings or (["builtin", "tqa", "hh"] if mode == "v2" else ["hh", "tqa"])
    writer = write_v2 if mode == "v2" else write_table
    root = ROOT / "runs" / f"bench-quality-{mode}"
    out = ROOT / "bench" / "results" / {"full": "quality.json", "quick": "quality-quick.json", "v2": "quality-v2.json"}[mode]
    out.parent.mkdir(parents=True, exist_ok=True)
    results = migrate(json.loads(out.read_text())) if out.is_file() else {"cells": {}}
    results.pop("wall_seconds_total", None)
    results.update({
        "budget": {**b, "mode": mode, "weights_lw_modpo": WEIGHTS, "steps_per_lw_modpo_model": lw_steps(b),
                   "lora": "r16 alpha32 q,k,v,o dropout 0.05", "dpo": "beta 0.1 lr 5e-4 batch 4 bf16",
                   "grid": [0.0, 0.5, 1.0], "simplex_step": 0.25, "decorrelation": "CKA on delta_w, alpha 0.1",
                   "consistency": "threshold tau 0", "model": "smollm2-135m-instruct (embedded)",
                   "splits": SPLITS.get(mode, {})},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": package_versions(),
    })
    t0 = time.perf_counter()
    for setting in settings:
        judges = None
        for seed in args.seeds:
            todo = [m for m in args.methods if f"{setting}/{seed}/{m}" not in results["cells"]]
            if not todo:
                continue
            if args.max_minutes is not None and (time.perf_counter() - t0) / 60 > args.max_minutes:
                print(f"stopping: {args.max_minutes} minutes reached; re-run to continue", flush=True)
                writer(results, out.with_suffix(".md"))
                return
            cfg = make_config(setting, seed, b, root, mode)
            judges = judges or load_reward_models(cfg)
            results.setdefault("judges", {})[setting] = {
                v.name: {k: json.loads((Path(v.reward.path) / "head.json").read_text()).get(k)
                         for k in ("val_accuracy", "val_pairs", "train_pairs")} for v in cfg.values}
            for method in todo:
                t = time.perf_counter()
                train_method(cfg, method)
                front = evaluate_method(cfg, method, primary=False, rewards=judges)
                results["cells"][f"{setting}/{seed}/{method}"] = cell_record(cfg, method, front, time.perf_counter() - t)
                results = save(results, out, f"{setting}/{seed}/{method}")
                hv = {"val": front.hypervolume.val, "test": front.hypervolume.test}
                print(json.dumps({"cell": f"{setting}/{seed}/{method}", "hv_own_ref": hv,
                                  "seconds": round(time.perf_counter() - t, 1)}), flush=True)
    results = save(results, out)
    print(writer(results, out.with_suffix(".md")))


if __name__ == "__main__":
    main()
