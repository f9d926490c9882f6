"""The run's report: `report.md` and its PNGs, from the run's fronts (`mvalign.front`), with `explorer.html` beside it
(`mvalign.explorer`)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .config import ConfigError
from .errors import write_atomic
from .explorer import find_record, write_explorer
from .front import Front
from .hvstats import hv_differences, shared_reference
from .judges import repetition
from .judging import judges_section
from .methods import run_fronts
from .rewards import run_judges
from .rundir import RunDir

LOOP_REPETITION, LOOP_SHARE = 0.5, 0.1
"""A response loops when more than LOOP_REPETITION of its word trigrams repeat; the report lists the selected test
points where at least LOOP_SHARE of the responses loop."""


def md(text: object) -> str:
    """`text` as literal Markdown (a method is named by its front-<name>.json file: anything can be in it)."""
    return re.sub(r"([\\`*_\[\]<>|#!])", r"\\\1", str(text))


def _fmt_w(w: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in w.items())


def plot_front(front: Front, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = front.values
    pairs = [(0, 1)] if len(values) == 2 else [(i, j) for i in range(len(values)) for j in range(i + 1, len(values))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.5 * len(pairs), 5.5), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        x, y = values[i], values[j]
        for split, style in (("val", dict(c="0.7", s=18, label="val: all candidates")),
                             ("test", dict(c="tab:blue", marker="s", s=30, label="test: selected"))):
            pts = front.on(split, usable=False)
            ax.scatter([p.rewards[x] for p in pts], [p.rewards[y] for p in pts], **style)
        front_val = sorted((p for p in front.on("val", usable=False) if p.pareto), key=lambda p: p.rewards[x])
        ax.plot([p.rewards[x] for p in front_val], [p.rewards[y] for p in front_val], "o-", c="tab:red", ms=5,
                label="val: non-dominated")
        for p in front_val:
            ax.annotate(_fmt_w(p.weights), (p.rewards[x], p.rewards[y]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        b = front.base
        ax.scatter([b.val.rewards[x]], [b.val.rewards[y]], marker="*", s=180, c="k", label="base (val)")
        ax.scatter([b.test.rewards[x]], [b.test.rewards[y]], marker="*", s=180, c="tab:green", label="base (test)")
        ax.set_xlabel(f"{x} reward (mean)")
        ax.set_ylabel(f"{y} reward (mean)")
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"trade-off front — HV val {front.hypervolume.val:.4g}, test {front.hypervolume.test:.4g} "
                 f"(ref {np.round(front.reference_point, 3).tolist()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_heatmaps(front: Front, path: Path) -> Path | None:
    """Reward of each value against (ω_1, ω_2) over the val grid (two values only)."""
    values = front.values
    pts = front.on("val", usable=False)
    if len(values) != 2 or len(pts) < 4:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted({p.weights[values[0]] for p in pts})
    ys = sorted({p.weights[values[1]] for p in pts})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, v in zip(axes, values):
        grid = np.full((len(ys), len(xs)), np.nan)
        for p in pts:
            grid[ys.index(p.weights[values[1]]), xs.index(p.weights[values[0]])] = p.rewards[v]
        im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs], fontsize=7)
        ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys], fontsize=7)
        ax.set_xlabel(f"ω {values[0]}")
        ax.set_ylabel(f"ω {values[1]}")
        ax.set_title(f"{v} reward (val)", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(run: RunDir, fronts: dict[str, Front], settings: dict, out: Path | None = None) -> Path:
    """report.md with one section per method, and the PNGs beside it: in the run dir, or in `out`."""
    dest = RunDir(out) if out is not None else run
    dest.root.mkdir(parents=True, exist_ok=True)
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    lines = ["# mvalign report", "", f"Run: `{run.root}`", "", "Settings: " + shown, "",
             "Interactive explorer: [explorer.html](explorer.html) — every evaluated point, the paired change from the "
             "base model, and what each model answered (rebuild with `mvalign view RUN`).", ""]
    lines += measures_section(run, fronts)
    lines += judges_section(run_judges(run, next(iter(fronts.values())).values))
    ref = shared_reference(list(fronts.values()))
    lines += [f"One reference point for every hypervolume below: {np.round(ref, 4).tolist()} (per-value minimum over "
              "every method's base and test points).", "",
              "| method | HV test | non-dominated (val) | test points dominating base |", "|---|---|---|---|"]
    for method, front in fronts.items():
        nd = sum(p.pareto for p in front.on("val", usable=False))
        lines.append(f"| {md(method)} | {front.hv_with(ref):.4g} | {nd} | {len(front.dominates_base())} |")
    lines += [""] + method_differences(fronts, ref)
    for method, front in fronts.items():
        png = plot_front(front, dest.plot("front", method))
        heat = plot_heatmaps(front, dest.plot("heatmap", method))
        values = front.values
        base = front.base.test
        lines += [f"## {md(method)}", "", f"![front]({quote(png.name)})", ""]
        if heat:
            lines += [f"![reward vs weights]({quote(heat.name)})", ""]
        lines += ["Selected (non-dominated on val) points, scored on test: mean and bootstrap 95% interval, then the "
                  "paired change from the base model on the same prompts (Δ and its paired bootstrap 95% interval):", "",
                  "| weights | " + " | ".join(values) + " | " + " | ".join(f"Δ {v} vs base" for v in values)
                  + " | dominates base |", "|---|" + "---|" * (2 * len(values) + 1)]
        lines.append("| base (ω = 0) | " + " | ".join(f"{base.rewards[v]:.3f} [{base.ci95[v][0]:.3f}, "
                                                      f"{base.ci95[v][1]:.3f}]" for v in values)
                     + " |" * (len(values) + 1) + " |")
        for p in front.on("test", usable=False):
            beats = all(p.rewards[v] > base.rewards[v] for v in values)
            delta = [f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if (d := p.vs_base.get(v))
                     else "—" for v in values]
            lines.append(f"| {_fmt_w(p.weights)} | " + " | ".join(
                f"{p.rewards[v]:.3f} [{p.ci95[v][0]:.3f}, {p.ci95[v][1]:.3f}]" for v in values)
                + " | " + " | ".join(delta) + f" | {'yes' if beats else ''} |")
        lines.append("")
    write_atomic(dest.report_path, "the report", lambda tmp: tmp.write_text("\n".join(lines)),
                 "the fronts it is made from are kept")
    return dest.report_path


def measures_section(run: RunDir, fronts: dict[str, Front]) -> list[str]:
    """Markdown: every measure of every value, its score against human labels (RUN/audit.json, `mvalign.audit`), its
    rank agreement with the value's primary over the evaluated points, and the points its measures dispute."""
    from .audit import anchor_text, read_audit
    from .labels import people_text

    audit = read_audit(run)
    values = next(iter(fronts.values())).values
    lines = ["## Measures", "", "Each value's primary measure defines its axis; audit measures score the same points. "
             "Anchor: the measure against human labels (accuracy of a rate, AUC of a judge; 95% interval). Agreement: "
             "Spearman ρ between the audit's and the primary's point means over the val points and the base (bootstrap "
             "95% interval over prompts), per method. Labels: Cohen's κ and accuracy of the measure's better / same / worse "
             "per-prompt verdict against a person's (`mvalign.labels`; shown from 20 labels).", "",
             "| value | measure | role | kind | anchor (human labels) | agreement with primary | vs this run's labels |",
             "|---|---|---|---|---|---|---|"]
    entries = (audit or {}).get("measures") or {v: {"value": v, "role": "primary", "measure": v, "kind": "?",
                                                     "anchors": {}, "note": "not audited: `mvalign judges audit RUN`"}
                                                 for v in values}
    for key, e in entries.items():
        agree = []
        for method, f in fronts.items():
            a = (f.agreement.get(e["value"]) or {}).get(key)
            if a is not None:
                rho = "undefined (a measure is constant)" if a["spearman"] is None else f"{a['spearman']:+.2f}" + (
                    f" [{a['ci95'][0]:+.2f}, {a['ci95'][1]:+.2f}]" if a["ci95"] else "")
                agree.append(f"{md(method)}: {rho}")
        lines.append(f"| {e['value']} | {e['measure']} | {e['role']} | {e['kind']} | {anchor_text(e)} | "
                     f"{'; '.join(agree) or '—'} | {people_text(e.get('people'))} |")
    try:
        from .rewards import judges_coincide

        same = judges_coincide(run.load_config())
        lines += ["", "Judges inside training (VC-soup consistency, MODPO margins, RiC tags): " + "; ".join(
            f"{v}: {'the same judge as the front' if s else 'its own train_judge, not the front'}"
            for v, s in same.items()) + "."]
    except Exception:  # noqa: BLE001 - a report from fronts alone cannot say
        pass
    disputes = [(m, p) for m, f in fronts.items() for p in f.points if p.disputed]
    lines += ["", "Disputed points (the primary and an audit of the same value moved in opposite directions from the "
              "base model, each with paired 95% confidence; their change is not a gain, and `pick` does not count it):"
              if disputes else "No point is disputed by its measures.", ""]
    for m, p in disputes:
        deltas = ", ".join(f"{k} {d['mean']:+.3f}" for k, d in p.vs_base.items()
                           if any(k == v or k.startswith(f"{v}:") for v in p.disputed))
        lines.append(f"- {md(m)} {md(_fmt_w(p.weights))} ({p.split}): disputed in {', '.join(p.disputed)} — Δ vs base "
                     f"{deltas}")
    return lines + ([""] if disputes else []) + loops_section(run, fronts)


def loops_section(run: RunDir, fronts: dict[str, Front]) -> list[str]:
    """Markdown: the selected test points whose responses loop (judge-free, `mvalign.judges.repetition`), with the
    base model's share; a looping apology can score as a refusal and a loop can fool a learned judge."""
    if not run.store_path.is_file():
        return []
    store = run.store()

    def share(records, weights, settings_key, rewards) -> tuple[int, int] | None:
        rec = find_record(records, weights, settings_key, rewards)
        if rec is None or not rec.responses:
            return None
        return sum(repetition("", r) > LOOP_REPETITION for r in rec.responses), len(rec.responses)

    front = next(iter(fronts.values()))
    b = front.base.test
    base = share(store.points("base", "test"), {v: 0.0 for v in front.values}, b.settings_key, b.rewards)
    if base is None:
        return []
    found = []
    for method, f in fronts.items():
        records = store.points(f.store_method, "test")
        for p in f.on("test"):
            s = share(records, p.weights, p.settings_key, p.rewards)
            if s is not None and s[0] >= LOOP_SHARE * s[1]:
                found.append(f"- {md(method)} {md(_fmt_w(p.weights))}: {s[0]} of {s[1]}")
    head = (f"Looping responses (judge-free: more than {LOOP_REPETITION:g} of the word trigrams repeat, "
            f"`mvalign.judges.repetition`): the base model's test responses loop {base[0]} of {base[1]} times. ")
    if not found:
        return [head + f"No selected test point loops on {LOOP_SHARE:.0%} or more of its responses.", ""]
    return [head + f"Selected test points looping on {LOOP_SHARE:.0%} or more of their responses (a measure may "
            "score a looping apology as a refusal, or a loop as a gain: read them in the explorer; a rate's "
            "`max_repetition` counts loops as no refusal):", "", *found, ""]


def method_differences(fronts: dict[str, Front], ref) -> list[str]:
    """Markdown: test-HV differences between every two methods, paired over prompts (mvalign.hvstats)."""
    if len(fronts) < 2:
        return []
    try:
        diffs = hv_differences(fronts, ref)
    except (ValueError, KeyError) as e:
        return [f"Paired hypervolume differences: not available ({str(e).splitlines()[0]}).", ""]
    lines = ["Test-hypervolume differences between methods, paired over prompts (val and test prompts resampled "
             "together, selection redone on val in each of 1000 replicates; mvalign.stats). 'detectable': the smallest "
             "difference these settings detect with 80% power.", "",
             "| A − B | difference | 95% interval | detectable | verdict |", "|---|---|---|---|---|"]
    for (a, b), d in diffs.items():
        lines.append(f"| {md(a)} − {md(b)} | {d['mean']:+.4g} | [{d['ci95'][0]:+.4g}, {d['ci95'][1]:+.4g}] | "
                     f"{d['detectable']:.3g} | {d['verdict']} |")
    return lines + [""]


def report_run(run: RunDir, out: Path | None = None) -> Path:
    """Rewrite report.md, its PNGs and explorer.html from the run's front-<method>.json files and store (into `out`
    when given, e.g. for a read-only run)."""
    fronts = {m: run.read_front(m) for m in run_fronts(run)}
    if not fronts:
        raise ConfigError(f"{run.root}: no front-<method>.json; run `mvalign run` first")
    path = write_report(run, fronts, {"run": str(run.root)}, out)
    write_run_explorer(run, path.parent)
    return path


def write_run_explorer(run: RunDir, folder: Path) -> Path:
    """explorer.html for this run, into `folder` (beside its report.md)."""
    return write_explorer([run], folder / "explorer.html")
