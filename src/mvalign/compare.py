"""`mvalign compare RUN...`: one table over methods (and runs) from their front-<method>.json files.

Per (run, method): hypervolume on test with ONE reference point for the whole table (the per-value minimum over
every base model's and every listed test point's mean reward, unless given), non-dominated test points, best mean
reward per value, test points that beat the base in every value, and training compute (optimizer steps, tokens,
wall seconds summed over the adapters the method's candidates use). Per method over runs (e.g. seeds): mean
hypervolume with a Student-t 95% interval, mean ± t·sd/√n.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from .config import ConfigError
from .hvstats import pooled_differences, shared_reference
from .methods import run_fronts
from .pareto import hypervolume, non_dominated
from .rundir import RunDir


def load_fronts(runs: Sequence[str | Path], methods: Sequence[str] = ()) -> list[dict]:
    """[{run, method, front (`Front`)}] for every front-<method>.json in `runs` (only `methods` when given)."""
    out = []
    for run in runs:
        files = run_fronts(RunDir(run))
        if not files:
            raise ConfigError(f"{run}: no front-<method>.json; evaluate a method first (`mvalign run CONFIG --method ...`)")
        for method in files:
            if not methods or method in methods:
                out.append({"run": str(run), "method": method, "front": RunDir(run).read_front(method)})
    if not out:
        raise ConfigError(f"none of the runs has a front for the methods {list(methods)}")
    values = {tuple(e["front"].values) for e in out}
    if len(values) > 1:
        raise ConfigError(f"the fronts measure different values {sorted(values)}: compare runs of one setting only")
    return out


def mean_interval(xs: Sequence[float]) -> dict:
    """Mean with a Student-t 95% interval (NaN half-width for a single run)."""
    x = np.asarray(xs, float)
    n = len(x)
    half = float(stats.t.ppf(0.975, n - 1) * x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": [float(x.mean() - half), float(x.mean() + half)], "n": n}


def compare(entries: Sequence[dict], reference: Sequence[float] | None = None) -> dict:
    values = entries[0]["front"].values
    ref = list(reference) if reference is not None else shared_reference([e["front"] for e in entries])
    rows = []
    for e in entries:
        f = e["front"]
        m = f.matrix("test")
        mask = non_dominated(m) if len(m) else np.zeros(0, bool)
        rows.append({
            "run": e["run"], "method": e["method"],
            "hypervolume_test": hypervolume(m[mask], ref) if len(m) else 0.0,
            "non_dominated": int(mask.sum()),
            "best": {v: float(m[:, i].max()) if len(m) else float("nan") for i, v in enumerate(values)},
            "beats_base": len(f.dominates_base("test")),
            "base": f.base.test.rewards,
            "training": vars(f.training) if f.training else {},
            "front": [p.to_json() for p, keep in zip(f.on("test"), mask) if keep],
        })
    methods = list(dict.fromkeys(r["method"] for r in rows))
    summary = {m: {"hypervolume_test": mean_interval([r["hypervolume_test"] for r in rows if r["method"] == m]),
                   "beats_base": mean_interval([r["beats_base"] for r in rows if r["method"] == m])} for m in methods}
    return {"values": values, "reference_point": ref,
            "reference_point_rule": "given" if reference is not None else
            "per-value minimum over every base and test point in the table", "rows": rows, "methods": summary,
            "paired": paired_over_runs(entries, ref)}


def paired_over_runs(entries: Sequence[dict], ref: Sequence[float]) -> dict:
    """Test-HV differences between methods, paired over prompts within each run and pooled over runs (seeds) as
    `stats.pooled_differences` documents; {"unavailable": why} when fronts lack per-prompt scores."""
    runs: dict[str, dict] = {}
    for e in entries:
        runs.setdefault(e["run"], {})[e["method"]] = e["front"]
    per_run = list(runs.values())
    if len(set.intersection(*(set(r) for r in per_run))) < 2:
        return {"unavailable": "fewer than two methods evaluated in every run"}
    try:
        diffs = pooled_differences(per_run, ref)
    except (ValueError, KeyError) as e:
        return {"unavailable": str(e).splitlines()[0]}
    return {"differences": [{"a": a, "b": b, **d} for (a, b), d in diffs.items()]}


def markdown(table: dict) -> str:
    values = table["values"]
    ref = ", ".join(f"{x:.3f}" for x in table["reference_point"])
    lines = [f"Hypervolume on test, reference point ({ref}) = {table['reference_point_rule']}.", "",
             "| method | HV test: mean [95% t-interval] | runs |", "|---|---|---|"]
    for m, s in table["methods"].items():
        h = s["hypervolume_test"]
        lines.append(f"| {m} | {h['mean']:.3f} [{h['ci95'][0]:.3f}, {h['ci95'][1]:.3f}] | {h['n']} |")
    paired = table.get("paired", {})
    if paired.get("differences"):
        lines += ["", "Differences paired over prompts within each run, pooled over runs (mvalign.stats); 'detectable' "
                  "= smallest difference these settings detect with 80% power:", "",
                  "| A − B | difference | 95% interval | detectable | verdict | runs |", "|---|---|---|---|---|---|"]
        for d in paired["differences"]:
            lines.append(f"| {d['a']} − {d['b']} | {d['mean']:+.4g} | [{d['ci95'][0]:+.4g}, {d['ci95'][1]:+.4g}] | "
                         f"{d['detectable']:.3g} | {d['verdict']} | {d['seeds']} |")
    elif paired:
        lines += ["", f"Paired differences: not available ({paired['unavailable']})."]
    lines += ["", "| run | method | HV test | non-dominated | " + " | ".join(f"best {v}" for v in values)
              + " | beat base | steps | tokens | train s |", "|---" * (8 + len(values)) + "|"]
    for r in table["rows"]:
        t = r["training"]
        lines.append(f"| {Path(r['run']).name} | {r['method']} | {r['hypervolume_test']:.3f} | {r['non_dominated']} | "
                     + " | ".join(f"{r['best'][v]:.3f}" for v in values)
                     + f" | {r['beats_base']} | {t.get('steps', '')} | {t.get('tokens', 0):.0f} | {t.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> Path:
    """Every method's non-dominated test points (one colour per method, one marker per run) and each run's base."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = table["values"][:2]
    runs = list(dict.fromkeys(r["run"] for r in table["rows"]))
    markers = "os^Dv<>pPX*h"
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(table["methods"])}
    fig, ax = plt.subplots(figsize=(7.5, 6))
    for r in table["rows"]:
        pts = sorted(r["front"], key=lambda p: p["rewards"][x])
        mk = markers[runs.index(r["run"]) % len(markers)]
        ax.plot([p["rewards"][x] for p in pts], [p["rewards"][y] for p in pts], marker=mk, c=colours[r["method"]],
                ms=5, lw=1, alpha=0.8, label=r["method"] if r["run"] == runs[0] else None)
    for i, run in enumerate(runs):
        base = next(r["base"] for r in table["rows"] if r["run"] == run)
        ax.scatter([base[x]], [base[y]], marker="*", s=160, c="k", label="base" if i == 0 else None)
    ax.set_xlabel(f"{x} reward (mean, test)")
    ax.set_ylabel(f"{y} reward (mean, test)")
    ax.set_title(f"non-dominated test points per method ({len(runs)} run(s); marker = run)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_comparison(table: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compare.json", "md": out / "compare.md", "png": out / "compare.png"}
    paths["json"].write_text(json.dumps(table, indent=2))
    paths["md"].write_text(f"# Method comparison\n\n{markdown(table)}\n![fronts](compare.png)\n")
    plot(table, paths["png"])
    return paths


def compare_runs(runs: Sequence[str | Path], methods: Sequence[str] = (), out: str | Path | None = None,
                 reference: str | Sequence[float] | None = None) -> tuple[dict, dict[str, Path]]:
    """`mvalign compare`: the table over `runs` (only `methods` when given), written to `out` (default: the first
    run). `reference`: one number per value, or comma-separated text."""
    entries = load_fronts(runs, methods)
    if isinstance(reference, str):
        try:
            reference = [float(x) for x in reference.split(",")]
        except ValueError:
            raise ConfigError(f"--reference {reference!r}: give one number per value, comma-separated") from None
    values = entries[0]["front"].values
    if reference is not None and len(reference) != len(values):
        raise ConfigError(f"--reference has {len(reference)} numbers; the fronts measure {values}")
    table = compare(entries, reference)
    return table, write_comparison(table, Path(out or runs[0]))
