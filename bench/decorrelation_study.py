"""Decorrelation study (issue 36): does MVA's decorrelation help the combined front, and at what α, under which penalty?

    .venv/bin/python -m bench.decorrelation_study run --settings tqa --seeds 0 [--max-minutes 150]   # resumable cells
    .venv/bin/python -m bench.decorrelation_study report   # decorrelation-study.json -> .md + .png

Cells, per (setting, seed), at quality v2's budget (`bench.quality.run`: 60 steps per vector, LoRA r16/α32, 64 val /
128 test prompts, 48 new tokens, grid {0, 0.5, 1}², one BT head per value as the judge, fit with seed
`bench.quality.run.JUDGE_SEED` for every policy seed):
  none                 the two plain DPO vectors (`mva-nohsic`): the reference every variant is compared with;
  <kind>-a<α>          the first value's DPO vector (the same adapter, copied) and the second value's vector trained
                       with α · penalty against it (`mva` with methods.mva set to the kind), α ∈ {0.01, 0.1, 1, 10}:
    hsic-lora_A        raw HSIC on the lora_A rows paired by rank index, σ = 1 (the authors' released code; at α = 10
                       this is `mva-paper`, up to HSIC's (n−1)² vs n² denominator);
    cka-delta_w        CKA on rows of ΔW, median σ (mvalign's default, α = 0.1);
    orth-delta_w       ‖ΔW_kᵀ ΔW_j‖_F² normalised by the vectors' own (the orthogonality ablation, scale-free).
A variant's run dir starts as a copy of the seed's `none` run dir (its DPO vectors, store and checkpoints), so the
first vector is byte-identical across variants and only the second differs.

Reported per variant (pooled over seeds as `mvalign.hvstats.pooled_differences`: paired over prompts within a seed,
one reference point per setting): HV(variant) − HV(none) on test, re-selected on val in each replicate; and the
single-value change on generations: the second value's judge score at ω = e_2 (the decorrelated vector alone) minus
the plain DPO vector's, paired over the val prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from bench.quality.loops import store_index
from bench.quality.quality_table import cell_front
from bench.quality.quality_v2 import single_value_generations
from bench.quality.run import (
    BUDGET,
    DATA,
    JUDGE_SEED,
    ROOT,
    cell_record,
    locked,
    make_config,
    open_results,
    save,
    seeded_judges,
    todo_cells,
    write_results,
)
from mvalign.config import RunConfig
from mvalign.data import eval_prompts, value_splits
from mvalign.devices import resolve_device, resolve_precision
from mvalign.evaluate import evaluate_method
from mvalign.hvstats import pooled_differences, shared_reference
from mvalign.methods import train_method
from mvalign.rewards.base import prompt_text
from mvalign.rewards.detectors import StringDetector
from mvalign.rewards.rate import data_labels

OUT = ROOT / "bench" / "results" / "decorrelation-study.json"
RUNS = ROOT / "runs" / "bench-decorrelation"
MODE = "v2"  # --quick: the smoke budget, its own runs and results
KINDS = {"hsic-lora_A": {"penalty": "hsic", "target": "lora_A", "sigma": 1.0},
         "cka-delta_w": {"penalty": "cka", "target": "delta_w", "sigma": "median"},
         "orth-delta_w": {"penalty": "orth-normalised", "target": "delta_w", "sigma": "median"}}
ALPHAS = [0.01, 0.1, 1.0, 10.0]
# the order cells run in: the paper's and the default settings first, then the rest of the α grid
ORDER = [("hsic-lora_A", 10.0), ("cka-delta_w", 0.1), ("orth-delta_w", 0.1), ("hsic-lora_A", 0.1),
         ("cka-delta_w", 10.0), ("orth-delta_w", 10.0), ("cka-delta_w", 1.0), ("hsic-lora_A", 1.0),
         ("orth-delta_w", 1.0), ("cka-delta_w", 0.01), ("hsic-lora_A", 0.01), ("orth-delta_w", 0.01)]


def variant_name(kind: str, alpha: float) -> str:
    return f"{kind}-a{alpha:g}"


VARIANTS = ["none"] + [variant_name(k, a) for k, a in ORDER]


def variant_config(setting: str, seed: int, variant: str) -> RunConfig:
    base = make_config(setting, seed, BUDGET[MODE], RUNS, "v2")
    data = base.model_dump(mode="json")
    data["run_dir"] = str(RUNS / setting / f"seed{seed}" / variant)
    # bf16 autocast where this machine computes it natively (the TruthfulQA seed-0 cells: an AVX-512 CPU), fp32 where
    # it would be emulated (33x slower per step on an AVX2-only CPU: bench/perf/cpu_precision.py); the cell records it
    data["training"]["precision"] = resolve_precision("auto", resolve_device(base.model.device))
    # v2's judges (these BT heads) predate the contract probes, and TruthfulQA's honest head fails one of its three
    # (it prefers the false answer to the Great Wall question): kept as in v2, and said so in the results
    data["audit"]["probes"] = False
    if variant != "none":
        kind, alpha = variant.rsplit("-a", 1)
        data["methods"]["mva"] = {**KINDS[kind], "alpha": float(alpha)}
    return RunConfig.model_validate(data)


def start_from_none(setting: str, seed: int, variant: str) -> None:
    """The variant's run dir as a copy of the seed's `none` run (made once, atomically; locks not copied)."""
    src, dst = RUNS / setting / f"seed{seed}" / "none", RUNS / setting / f"seed{seed}" / variant
    if dst.is_dir():
        return
    tmp = dst.with_name(dst.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".locks", "front*.json", "report*", "explorer*"))
    os.replace(tmp, dst)


def run(settings: list[str], seeds: list[int], max_minutes: float | None, variants: list[str]) -> None:
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark needs ../shared/data beside the repository")
    results = open_results(OUT, {**BUDGET[MODE], "grid": [0.0, 0.5, 1.0], "kinds": KINDS, "alphas": ALPHAS,
                                 "model": "smollm2-135m-instruct (embedded)"})
    judges = {}
    keys = [f"{setting}/{seed}/{variant}" for setting in settings for seed in seeds for variant in variants]
    for key in todo_cells(results, keys, max_minutes):
        setting, seed, variant = key.split("/")
        t = time.perf_counter()
        cfg = variant_config(setting, int(seed), variant)
        one_precision(results, setting, cfg.training.precision)
        if variant != "none":
            start_from_none(setting, int(seed), variant)
        judges[setting] = judges.get(setting) or seeded_judges(variant_config(setting, JUDGE_SEED, "none"))
        method = "mva-nohsic" if variant == "none" else "mva"
        train_method(cfg, method)
        front = evaluate_method(cfg, method, primary=False, rewards=judges[setting])
        results["cells"][key] = {**cell_record(cfg, method, front, time.perf_counter() - t), "variant": variant}
        results = save(results, OUT, key)
        print(json.dumps({"cell": key, "hv_test_own_ref": front.hypervolume.test,
                          "seconds": round(time.perf_counter() - t, 1)}), flush=True)


UNRECORDED_CPU = "an earlier session's CPU, not recorded"


def one_precision(results: dict, setting: str, precision: str) -> None:
    """Stop before training a cell in another precision than the setting's stored cells (cells stored before
    precision was recorded were all bf16): the variants of one table are compared with one training precision."""
    stored = {c.get("precision", "bf16") for k, c in results["cells"].items() if k.startswith(f"{setting}/")}
    if stored and stored != {precision}:
        sys.exit(f"{OUT}: {setting}'s cells trained in {', '.join(sorted(stored))}, this machine resolves "
                 f"training.precision auto to {precision} (bench/perf/cpu_precision.py); run {setting}'s cells where "
                 "they resolve alike")


def penalty_log(key: str, cell: dict) -> dict | None:
    """The later vector's training log at its first and last step: DPO loss and α · penalty (from the run dir while
    it exists; kept in the cell once read)."""
    if "penalty_log" in cell or cell.get("variant", "none") == "none":
        return cell.get("penalty_log")
    setting, seed, variant = key.split("/")
    kind, alpha = variant.rsplit("-a", 1)
    path = RUNS / setting / f"seed{seed}" / variant / "train" / "mva" / cell["values"][1] / "log.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    total = f"{KINDS[kind]['penalty']}_total"
    return {f"step{r['step']}": {"dpo_loss": r["dpo_loss"], "alpha_penalty": float(alpha) * r[total]}
            for r in (rows[0], rows[-1])}


def refusals(key: str, cell: dict) -> dict | None:
    """Where the second value is harmless on the built-in data: the later vector alone (ω = e₂) on the val prompts,
    responses refused by the string rule (`mvalign.judges.refusal`) on the harmful and on the benign prompts (labels:
    the data's categories), [refused, prompts] each, and (`none` only) the base model's; read from the run dir's
    store while it exists, kept in the cell. Judge-free: shows whether a harmless-judge gain is refusing harmful
    requests or refusing everything."""
    if "refusals" in cell:
        return cell["refusals"]
    setting, seed, variant = key.split("/")
    store = RUNS / setting / f"seed{seed}" / variant / "store.sqlite"
    if setting != "builtin" or cell["values"][1] != "harmless" or not store.is_file():
        return None
    index = store_index(store)
    cfg = variant_config(setting, int(seed), variant)
    prompts = eval_prompts(cfg, "val", cfg.sweep.val_prompts)
    known = {k: v for value in cell["values"] for k, v in data_labels(value_splits(cfg, value)["val"]).items()}
    labels = [known.get(prompt_text(p)) for p in prompts]

    def count(method: str, weights: tuple[float, float]) -> dict | None:
        w = json.dumps(dict(zip(cell["values"], weights)), sort_keys=True)
        hits = [r for (m, ww, split, _), r in index.items() if split == "val" and ww == w and m == method]
        if len(hits) != 1:
            return None
        refused = StringDetector().refused(prompts, hits[0])
        return {label: [int(sum(r for r, lb in zip(refused, labels) if lb == label)), labels.count(label)]
                for label in ("harmful", "benign")}

    alone = count("dpo" if variant == "none" else "mva", (0.0, 1.0))
    base = count("base", (0.0, 0.0)) if variant == "none" else None
    return None if alone is None else {**alone, **({"base": base} if base else {})}


def analyse(results: dict, n_boot: int = 1000) -> dict:
    """Per setting and variant: pooled HV(variant) − HV(none) and the single-value change, over the seeds that have
    both cells."""
    by: dict = {}
    for key, cell in results["cells"].items():
        logged = penalty_log(key, cell)
        if logged is not None:
            cell["penalty_log"] = logged
        counted = refusals(key, cell)
        if counted is not None:
            cell["refusals"] = counted
        setting, seed, variant = key.split("/")
        by.setdefault(setting, {}).setdefault(int(seed), {})[variant] = cell
    out = {}
    for setting, seeds in by.items():
        fronts = {s: {v: cell_front(c) for v, c in cells.items()} for s, cells in seeds.items()}
        ref = shared_reference([f for per in fronts.values() for f in per.values()])
        rows = {}
        for variant in VARIANTS[1:]:
            have = [s for s in sorted(seeds) if variant in seeds[s] and "none" in seeds[s]]
            if not have:
                continue
            hv = pooled_differences([{variant: fronts[s][variant], "none": fronts[s]["none"]} for s in have],
                                    ref, n_boot)[variant, "none"]
            rows[variant] = {"seeds": have, "hv_diff": hv, "single_value": single_value(seeds, have, variant, n_boot),
                             "hv_test": {s: fronts[s][variant].hv_with(ref) for s in have},
                             "cka": {s: (seeds[s][variant].get("interference") or {}).get("cka") for s in have},
                             "later_val_accuracy": {s: later_accuracy(seeds[s][variant]) for s in have},
                             "penalty_log": {s: seeds[s][variant].get("penalty_log") for s in have},
                             "refusals": {s: seeds[s][variant].get("refusals") for s in have}}
        none = {s: {"hv_test": fronts[s]["none"].hv_with(ref), "later_val_accuracy": later_accuracy(seeds[s]["none"]),
                    "cka": (seeds[s]["none"].get("interference") or {}).get("cka"),
                    "refusals": seeds[s]["none"].get("refusals")} for s in seeds if "none" in seeds[s]}
        out[setting] = {"reference_point": ref, "none": none, "variants": rows}
    return out


def later_accuracy(cell: dict) -> float | None:
    """Held-out pair accuracy of the second value's vector (its DPO val pairs)."""
    return cell["vectors"].get(cell["values"][1], {}).get("val_accuracy")


def single_value(seeds: dict, have: list[int], variant: str, n_boot: int) -> dict | None:
    """The second value's own score at ω = e_2, variant − plain DPO vector, paired over val prompts, pooled (v2's
    single-value claim with the variant as mva and `none` as dpo)."""
    return single_value_generations({s: {"mva": seeds[s][variant], "dpo": seeds[s]["none"]} for s in have}, n_boot)


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def _refused(counts: dict | None) -> str:
    if not counts:
        return "—"
    return " / ".join(f"{counts[k][0]} of {counts[k][1]} {k}" for k in ("harmful", "benign"))


def _iv(d: dict | None, digits: int = 3) -> str:
    if d is None:
        return "—"
    lo, hi = d["ci95"]
    return f"{d['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def markdown(results: dict, analysis: dict) -> str:
    lines = ["# Decorrelation study (issue 36)", "",
             f"Settings: `{json.dumps(results['budget'])}`; written by `bench/decorrelation_study.py` (its docstring "
             "says how each number is estimated).", ""]
    for setting, a in analysis.items():
        plain = "; ".join(f"seed {s}: HV test {v['hv_test']:.4f}, CKA {_num(v['cka'])}, later vector's held-out pair "
                          f"accuracy {_num(v['later_val_accuracy'])}"
                          + (f", later vector alone refuses {_refused(v['refusals'])}" if v.get("refusals") else "")
                          + (f" (base model: {_refused(v['refusals']['base'])})" if (v.get("refusals") or {}).get("base")
                             else "")
                          for s, v in a["none"].items())
        ran = sorted({f"{c.get('precision', 'bf16')} on {c.get('cpu', UNRECORDED_CPU)}"
                      for k, c in results["cells"].items() if k.startswith(f"{setting}/")})
        lines += [f"## {setting}", "", f"One reference point: {[round(x, 4) for x in a['reference_point']]}. "
                  f"No decorrelation (`none`): {plain}. Training precision and machine: {'; '.join(ran)}.", "",
                  "| penalty | α | seeds | HV(variant) − HV(none) [95%] | detectable | verdict | "
                  "single value: own score at ω = e₂, − plain DPO [95%] | CKA(ΔW₁, ΔW₂) | later vector's pair acc. | "
                  "step 1 → last: α·penalty / DPO loss | later vector alone refuses (val, string rule) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for kind in KINDS:
            for alpha in ALPHAS:
                r = a["variants"].get(variant_name(kind, alpha))
                if r is None:
                    lines.append(f"| {kind} | {alpha:g} | 0 | not run | | | | | | | |")
                    continue
                hv = r["hv_diff"]
                verdict = hv["verdict"] if len(r["seeds"]) > 1 else f"{hv['verdict']} (1 seed: prompts only)"
                cka = ", ".join(_num(c) for c in r["cka"].values())
                acc = ", ".join(_num(c) for c in r["later_val_accuracy"].values())
                logs = ", ".join(" → ".join(f"{x['alpha_penalty']:.3g} / {x['dpo_loss']:.3f}" for x in lg.values())
                                 if lg else "—" for lg in r["penalty_log"].values())
                lines.append(f"| {kind} | {alpha:g} | {len(r['seeds'])} | {_iv(hv, 4)} | {hv['detectable']:.4f} | "
                             f"{verdict} | {_iv(r['single_value'])} | {cka} | {acc} | {logs} | "
                             f"{', '.join(_refused(c) for c in r.get('refusals', {}).values())} |")
        lines.append("")
    return "\n".join(lines)


def figure(analysis: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (("hv_diff", "HV(variant) − HV(no decorrelation), test"),
            ("single_value", "later vector alone: own score − plain DPO's"))
    fig, axes = plt.subplots(len(rows), len(analysis), figsize=(5.5 * len(analysis), 7.5), squeeze=False)
    for col, (setting, a) in enumerate(analysis.items()):
        for (field, ylabel), ax in zip(rows, axes[:, col]):
            for i, kind in enumerate(KINDS):
                pts = [(alpha * 1.12 ** (i - 1), a["variants"][variant_name(kind, alpha)][field]) for alpha in ALPHAS
                       if variant_name(kind, alpha) in a["variants"] and a["variants"][variant_name(kind, alpha)][field]]
                if pts:
                    ax.errorbar([x for x, _ in pts], [d["mean"] for _, d in pts], capsize=3, marker="o", label=kind,
                                yerr=[[d["mean"] - d["ci95"][0] for _, d in pts], [d["ci95"][1] - d["mean"] for _, d in pts]])
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("α")
            ax.set_ylabel(ylabel, fontsize=9)
            ax.set_title(setting)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report() -> str:
    """The md and figure from the json, the analysis and the cells' read-backs (penalty logs, refusals) written back
    atomically under the writers' lock, so a `run` storing cells meanwhile loses nothing."""
    with locked(OUT):
        results = json.loads(OUT.read_text())
        analysis = analyse(results)
        results["analysis"] = analysis
        write_results(OUT, results, default=str)
    md = markdown(results, analysis)
    OUT.with_suffix(".md").write_text(md)
    figure(analysis, OUT.with_suffix(".png"))
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--settings", nargs="+", default=["tqa", "builtin"], choices=["tqa", "builtin", "hh"])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--max-minutes", type=float, default=None, help="start no new cell after this long")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS, help="default: all, none first")
    r.add_argument("--quick", action="store_true", help="smoke run: 1 step, 3 prompts (decorrelation-study-quick.json)")
    sub.add_parser("report").add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        global OUT, RUNS, MODE
        OUT, RUNS, MODE = OUT.with_name("decorrelation-study-quick.json"), RUNS.with_name("bench-decorrelation-quick"), "quick"
    if args.cmd == "run":
        if args.threads:
            torch.set_num_threads(args.threads)
        run(args.settings, args.seeds, args.max_minutes, [v for v in VARIANTS if v in args.variants])
    else:
        print(report())


if __name__ == "__main__":
    main()
