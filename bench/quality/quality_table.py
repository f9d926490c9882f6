"""Tables of the quality benchmark from bench/results/quality.json (means over seeds with Student-t 95% intervals).

    .venv/bin/python bench/quality/quality_table.py [--quick]   # rewrites bench/results/quality.md (quality-quick.md)

Per setting, ONE reference point for every method and seed: the per-value minimum over every cell's base and test
points. HV = hypervolume (moocore) of a cell's non-dominated test points. Claims are paired by seed: the difference
is taken within a seed (same judges, prompts, data order), then averaged with a t-interval over the seeds both
methods have.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mvalign.compare import mean_interval, shared_reference, test_matrix
from mvalign.pareto import hypervolume, non_dominated

BASELINES = ["dpo", "soup", "seqt", "lw", "modpo", "vcsoup", "mva-nohsic", "mva-convex", "mva-orth"]


def setting_tables(cells: dict[str, dict]) -> dict:
    """{setting: {"reference_point", "per_cell": {(seed, method): numbers}}} with the shared reference point."""
    out: dict = {}
    for key, cell in cells.items():
        setting, seed, method = key.split("/")
        out.setdefault(setting, {"cells": {}})["cells"][(int(seed), method)] = cell
    for setting, t in out.items():
        cs = list(t["cells"].values())
        values = cs[0]["values"]
        ref = shared_reference([{"front": c} for c in cs])  # a cell holds its front's values, points and base
        t["values"], t["reference_point"] = values, ref
        t["per_cell"] = {}
        for (seed, method), c in t["cells"].items():
            m = test_matrix(c)
            base = np.array([c["base"]["rewards"][v] for v in values])
            t["per_cell"][(seed, method)] = {
                "hv": hypervolume(m[non_dominated(m)], ref) if len(m) else 0.0,
                "beats_base": int(sum(all(row > base) for row in m)),
                "best": m.max(axis=0).tolist() if len(m) else [float("nan")] * len(values),
                "training": c["training"], "interference": c.get("interference"), "vectors": c["vectors"]}
    return out


def paired(t: dict, a: str, b: str, key=lambda x: x["hv"]) -> dict | None:
    seeds = sorted(s for s, m in t["per_cell"] if m == a and (s, b) in t["per_cell"])
    if not seeds:
        return None
    return {**mean_interval([key(t["per_cell"][(s, a)]) - key(t["per_cell"][(s, b)]) for s in seeds]), "seeds": seeds}


def _fmt(ci: dict | None, digits: int = 3) -> str:
    if ci is None:
        return "—"
    lo, hi = ci["ci95"]
    interval = "" if ci["n"] < 2 else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{ci['mean']:+.{digits}f}{interval} (n={ci['n']})"


def markdown(results: dict) -> str:
    tables = setting_tables(results.get("cells", {}))
    lines = ["# Quality benchmark", "", f"Budget and settings: `{json.dumps(results.get('budget', {}))}`", ""]
    for setting, t in tables.items():
        values = t["values"]
        ref = ", ".join(f"{x:.3f}" for x in t["reference_point"])
        judges = results.get("judges", {}).get(setting, {})
        lines += [f"## {setting}: {' vs '.join(values)}", "",
                  "Judges (BT heads, held-out pair accuracy): " + ", ".join(
                      f"{v} {j['val_accuracy']:.3f} on {j['val_pairs']} pairs" for v, j in judges.items()), "",
                  f"Reference point ({ref}) = per-value minimum over every base and test point of this setting.", "",
                  "| method | seeds | HV test: mean [95% t-interval] | points beating base | "
                  + " | ".join(f"best {v}" for v in values) + " | steps | tokens | train s |",
                  "|---" * (7 + len(values)) + "|"]
        methods = list(dict.fromkeys(m for _, m in sorted(t["per_cell"], key=lambda k: (BASELINES + ["mva"]).index(k[1])
                                                                  if k[1] in BASELINES + ["mva"] else 99)))
        for m in methods:
            cells = [c for (s, mm), c in sorted(t["per_cell"].items()) if mm == m]
            hv = mean_interval([c["hv"] for c in cells])
            ci = "" if hv["n"] < 2 else f" [{hv['ci95'][0]:.3f}, {hv['ci95'][1]:.3f}]"
            best = [np.mean([c["best"][i] for c in cells]) for i in range(len(values))]
            tr = {k: np.mean([c["training"].get(k, 0) for c in cells]) for k in ("steps", "tokens", "seconds")}
            lines.append(f"| {m} | {len(cells)} | {hv['mean']:.3f}{ci} | {np.mean([c['beats_base'] for c in cells]):.1f} | "
                         + " | ".join(f"{x:.3f}" for x in best)
                         + f" | {tr['steps']:.0f} | {tr['tokens']:.0f} | {tr['seconds']:.0f} |")
        lines += ["", "Paired differences (same seed), mean [95% t-interval]:", "",
                  "| claim | difference | positive means |", "|---|---|---|"]
        for b in BASELINES:
            lines.append(f"| HV(mva) − HV({b}) | {_fmt(paired(t, 'mva', b))} | MVA's front larger |")
        lines.append(f"| extrapolation, HSIC vectors: HV(mva) − HV(mva-convex) | {_fmt(paired(t, 'mva', 'mva-convex'))} | box beats simplex |")
        lines.append(f"| extrapolation, plain vectors: HV(mva-nohsic) − HV(soup) | {_fmt(paired(t, 'mva-nohsic', 'soup'))} | box beats simplex |")
        lines.append(f"| decorrelation: HV(mva) − HV(mva-nohsic) | {_fmt(paired(t, 'mva', 'mva-nohsic'))} | HSIC helps the combination |")
        lines.append(f"| VC filtering: HV(vcsoup) − HV(soup) | {_fmt(paired(t, 'vcsoup', 'soup'))} | filtered soups better |")
        second = values[1]
        cka = paired(t, "mva", "dpo", key=lambda c: c["interference"]["cka"] if c["interference"] else float("nan"))
        acc = paired(t, "mva", "dpo", key=lambda c: c["vectors"][second]["val_accuracy"])
        lines.append(f"| interference: CKA(mva vectors) − CKA(dpo vectors) | {_fmt(cka, 4)} | (negative = less interference) |")
        lines.append(f"| single value: held-out pair acc. of the {second} vector, mva − dpo | {_fmt(acc)} | decorrelation does not hurt if ≈ 0 |")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_table(results: dict, path: Path) -> str:
    text = markdown(results)
    path.write_text(text)
    return text


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    root = Path(__file__).resolve().parents[2] / "bench" / "results"
    src = root / ("quality-quick.json" if quick else "quality.json")
    print(write_table(json.loads(src.read_text()), src.with_suffix(".md")))
