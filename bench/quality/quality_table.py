"""Tables of the quality benchmark from bench/results/quality.json (means over seeds with Student-t 95% intervals).

    .venv/bin/python -m bench.quality.quality_table [--quick]   # rewrites bench/results/quality.md (quality-quick.md)

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

from mvalign.compare import mean_interval
from mvalign.front import Front
from mvalign.hvstats import shared_reference
from mvalign.methods import method_names
from mvalign.pareto import hypervolume, non_dominated

BASELINES = [m for m in method_names() if m != "mva"]  # every registered method MVA is compared with


def setting_tables(cells: dict[str, dict]) -> dict:
    """{setting: {"reference_point", "per_cell": {(seed, method): numbers}}} with the shared reference point."""
    out: dict = {}
    for key, cell in cells.items():
        setting, seed, method = key.split("/")
        out.setdefault(setting, {"cells": {}})["cells"][(int(seed), method)] = cell
    for t in out.values():
        cs = list(t["cells"].values())
        values = cs[0]["values"]
        ref = shared_reference([cell_front(c) for c in cs])  # a cell holds its front's values, points and base
        t["values"], t["reference_point"] = values, ref
        t["per_cell"] = {}
        for (seed, method), c in t["cells"].items():
            m = cell_front(c).matrix("test")
            base = np.array([c["base"]["rewards"][v] for v in values])
            t["per_cell"][(seed, method)] = {
                "hv": hypervolume(m[non_dominated(m)], ref) if len(m) else 0.0,
                "beats_base": int(sum(all(row > base) for row in m)),
                "best": m.max(axis=0).tolist() if len(m) else [float("nan")] * len(values),
                "training": c["training"], "interference": c.get("interference"), "vectors": c["vectors"]}
    return out


def cell_front(cell: dict) -> Front:
    """The front a cell was recorded from (`run.cell_record`: the front's fields, its hypervolume and reference point
    under other names)."""
    return Front.from_json({**cell, "reference_point": cell["own_reference_point"],
                            "hypervolume": cell["hypervolume_own_reference"]}, cell["method"])


def paired(t: dict, a: str, b: str, key=lambda x: x["hv"]) -> dict | None:
    seeds = sorted(s for s, m in t["per_cell"] if m == a and (s, b) in t["per_cell"])
    if not seeds:
        return None
    diffs = [key(t["per_cell"][(s, a)]) - key(t["per_cell"][(s, b)]) for s in seeds]
    return {**mean_interval(diffs), "seeds": seeds, "positive": sum(d > 0 for d in diffs)}


def verdict(ci: dict | None, want: str = "positive") -> str:
    """'held' when the 95% interval lies on the claimed side of 0, 'reversed' when on the other side, else
    'not shown' (the interval contains 0, or fewer than 2 seeds). want='not-negative' (a "does not hurt" claim):
    'hurt' when the interval lies below 0, else 'no loss detected'."""
    if ci is None or ci["n"] < 2:
        return "not shown"
    lo, hi = ci["ci95"]
    if want == "not-negative":
        return "hurt" if hi < 0 else "no loss detected"
    if want == "negative":
        lo, hi = -hi, -lo
    return "held" if lo > 0 else "reversed" if hi < 0 else "not shown"


def _row(claim: str, ci: dict | None, meaning: str, want: str = "positive", digits: int = 3) -> str:
    return f"| {claim} | {_fmt(ci, digits)} | {_wins(ci)} | {verdict(ci, want)} | {meaning} |"


def _wins(ci: dict | None) -> str:
    """Seeds whose paired difference is positive, out of the seeds compared."""
    return "—" if ci is None else f"{ci['positive']}/{ci['n']}"


def _fmt(ci: dict | None, digits: int = 3) -> str:
    if ci is None:
        return "—"
    lo, hi = ci["ci95"]
    interval = "" if ci["n"] < 2 else f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return f"{ci['mean']:+.{digits}f}{interval} (n={ci['n']})"


def claims(t: dict) -> list[tuple]:
    """The paper's claims as (label, paired interval, what positive means, claimed side, digits) rows."""
    rows = [(f"HV(mva) − HV({b})", paired(t, "mva", b), "MVA's front larger", "positive", 3) for b in BASELINES]
    rows += [
        ("extrapolation, HSIC vectors: HV(mva) − HV(mva-convex)", paired(t, "mva", "mva-convex"), "box beats simplex",
         "positive", 3),
        ("extrapolation, plain vectors: HV(mva-nohsic) − HV(soup)", paired(t, "mva-nohsic", "soup"), "box beats simplex",
         "positive", 3),
        ("decorrelation: HV(mva) − HV(mva-nohsic)", paired(t, "mva", "mva-nohsic"), "HSIC helps the combination",
         "positive", 3),
        ("VC filtering: HV(vcsoup) − HV(soup)", paired(t, "vcsoup", "soup"), "filtered soups better", "positive", 3),
        ("interference: CKA(mva vectors) − CKA(dpo vectors)",
         paired(t, "mva", "dpo", key=lambda c: c["interference"]["cka"] if c["interference"] else float("nan")),
         "more interference (claim: negative)", "negative", 4),
        ("single value: held-out pair acc. of the later vector, mva − dpo",
         paired(t, "mva", "dpo", key=lambda c: c["vectors"][t["values"][1]]["val_accuracy"]),
         f"decorrelation helps the {t['values'][1]} vector (claim: not hurt)", "not-negative", 3),
    ]
    return rows


def judges_line(judges: dict) -> str:
    return "Judges (BT heads, held-out pair accuracy): " + ", ".join(
        f"{v} {j['val_accuracy']:.3f} on {j['val_pairs']} pairs" for v, j in judges.items())


def markdown(results: dict) -> str:
    tables = setting_tables(results.get("cells", {}))
    summary: list[tuple[str, list[tuple]]] = []
    header = ["# Quality benchmark", "", f"Budget and settings: `{json.dumps(results.get('budget', {}))}`", ""]
    lines: list[str] = []
    for setting, t in tables.items():
        values = t["values"]
        ref = ", ".join(f"{x:.3f}" for x in t["reference_point"])
        judges = results.get("judges", {}).get(setting, {})
        lines += [f"## {setting}: {' vs '.join(values)}", "",
                  judges_line(judges), "",
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
        lines += ["", "Paired differences (same seed), mean [95% t-interval]; seeds > 0 = seeds whose difference is "
                  "positive; verdict: held / reversed when the interval excludes 0, else not shown:", "",
                  "| claim | difference | seeds > 0 | verdict | positive means |", "|---|---|---|---|---|"]
        rows = claims(t)
        summary.append((setting, rows))
        lines += [_row(*r) for r in rows]
        lines.append("")
    if summary:
        head = ["## The paper's claims across settings", "",
                "Verdict per setting (seeds whose paired difference is positive / seeds); details in the sections below.",
                "", "| claim | " + " | ".join(s for s, _ in summary) + " |", "|---" * (1 + len(summary)) + "|"]
        for i, r in enumerate(summary[0][1]):
            cells = ["—" if rows[i][1] is None else f"{verdict(rows[i][1], rows[i][3])} ({_wins(rows[i][1])})"
                     for _, rows in summary]
            head.append(f"| {r[0]} | " + " | ".join(cells) + " |")
        header += head + [""]
    return "\n".join(header + lines) + "\n"


def write_table(results: dict, path: Path) -> str:
    text = markdown(results)
    path.write_text(text)
    return text


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    root = Path(__file__).resolve().parents[2] / "bench" / "results"
    src = root / ("quality-quick.json" if quick else "quality.json")
    print(write_table(json.loads(src.read_text()), src.with_suffix(".md")))
