"""Quality benchmark v2 tables (issue 17): bench/results/quality-v2.json → quality-v2.md.

    .venv/bin/python -m bench.quality.quality_v2      # rewrites bench/results/quality-v2.md

Every claim is a difference between two methods evaluated on the SAME prompts within a seed, so it is estimated
paired over prompts (mvalign.stats): for hypervolume claims, each replicate resamples the val and the test prompt
indices (shared by all methods and the base), re-selects every method's front on val and recomputes test HV with ONE
reference point per setting (the per-value minimum over every cell's base and test points); across seeds the pooled
estimate is the mean of the per-seed differences and its replicates the mean of the seeds' replicates
(`stats.pooled_differences`). The single-value claim on generations compares the two methods' later vector alone
(ω = e_k, k = the second value) on the val prompts: d_i = s_mva(i) − s_dpo(i) of the k-th judge (the base model's
score cancels from both gains), pooled the same way. Interference (CKA) and held-out pair accuracy have one number
per seed: t-interval over seeds, as in v1.

Verdicts: held / reversed when the 95% interval excludes 0 (on the claimed / other side), else not shown; but
'seeds disagree' (not an answer) when some seed's own difference has the other sign: the pooled interval resamples
prompts within the seeds, not the seeds, so it does not cover training-seed variation by itself;
'detectable' = 2.80 × bootstrap se: the smallest true difference these settings detect with 80% power; for a claim
not shown, 'prompts ×' = (detectable / |estimate|)²: how many times the prompts (per seed) it would take to detect a
difference of the size estimated (se shrinks as 1/√prompts). For the claims with one number per seed (interference,
held-out accuracy) 'detectable' is t_power(n) · sd / √n over the n seeds (the exact noncentral-t value for 80% power
of a two-sided 5% t-test), and the column gives the seeds it would take instead; an accuracy that both vectors reach
at its maximum (1.0) in every seed reads 'at ceiling' (saturated, not an answer).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import optimize, stats

from bench.quality.quality_table import cell_front, judges_line
from mvalign.compare import mean_interval
from mvalign.hvstats import pooled_differences, shared_reference
from mvalign.stats import difference_from_replicates

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
ANSWERED = {"held", "reversed", "hurt"}


V2_METHODS = ("dpo", "soup", "mva-nohsic", "mva", "mva-orth", "mva-convex", "vcsoup", "seqt", "lw", "modpo", "ric")
"""The methods v2 compared (the 15 claims): methods registered later (mva-paper, mod, ...) are v3's own rows."""


def hv_claims() -> list[tuple[str, str, str, str]]:
    """(label, a, b, what a positive difference means): HV(a) − HV(b)."""
    rows = [(f"HV(mva) − HV({b})", "mva", b, "MVA's front larger") for b in V2_METHODS
            if b not in ("mva", "mva-convex", "mva-nohsic")]  # those two: the ablation rows below
    rows += [("extrapolation, HSIC vectors: HV(mva) − HV(mva-convex)", "mva", "mva-convex", "box beats simplex"),
             ("extrapolation, plain vectors: HV(mva-nohsic) − HV(soup)", "mva-nohsic", "soup", "box beats simplex"),
             ("decorrelation: HV(mva) − HV(mva-nohsic)", "mva", "mva-nohsic", "HSIC helps the combination"),
             ("VC filtering: HV(vcsoup) − HV(soup)", "vcsoup", "soup", "filtered soups better")]
    return rows


def by_setting(cells: dict[str, dict]) -> dict[str, dict[int, dict[str, dict]]]:
    out: dict = {}
    for key, cell in cells.items():
        setting, seed, method = key.split("/")
        out.setdefault(setting, {}).setdefault(int(seed), {})[method] = cell
    return out


def pooled_hv(seeds: dict[int, dict[str, dict]], ref, n_boot: int = 1000) -> dict[tuple[str, str], dict]:
    """Pooled paired HV differences over the seeds that have both methods, for every claim pair."""
    out = {}
    for _, a, b, _ in hv_claims():
        per_seed = [{m: cell_front(fronts[m]) for m in (a, b)} for _, fronts in sorted(seeds.items())
                    if a in fronts and b in fronts]
        if per_seed:
            out[a, b] = pooled_differences(per_seed, ref, n_boot)[a, b]
    return out


def unit_point(cell: dict, value: str) -> dict | None:
    """The cell's val point with ω = 1 on `value` and 0 on every other value."""
    for p in cell["points"]:
        w = p["weights"]
        if p["split"] == "val" and not p.get("flag") and p.get("scores") and all(
                abs(w.get(v, 0.0) - (1.0 if v == value else 0.0)) < 1e-9 for v in cell["values"]):
            return p
    return None


def single_value_generations(seeds: dict[int, dict[str, dict]], n_boot: int = 1000) -> dict | None:
    """mva − dpo: own-value score of the later vector alone on the val prompts, paired, pooled over seeds."""
    diffs, reps = [], []
    for seed, fronts in sorted(seeds.items()):
        if "mva" not in fronts or "dpo" not in fronts:
            continue
        value = fronts["mva"]["values"][1]
        a, b = unit_point(fronts["mva"], value), unit_point(fronts["dpo"], value)
        if a is None or b is None:
            continue
        d = np.asarray(a["scores"][value]) - np.asarray(b["scores"][value])
        idx = np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))
        diffs.append(float(d.mean()))
        reps.append(d[idx].mean(axis=1))
    if not diffs:
        return None
    return {**difference_from_replicates(float(np.mean(diffs)), np.mean(reps, axis=0)), "seeds": len(diffs),
            "per_seed": diffs}


def per_seed_t(seeds: dict[int, dict[str, dict]], key, ceiling: float | None = None) -> dict | None:
    """mva − dpo of a per-seed number, t-interval over seeds (as v1). `ceiling`: the number's maximum (an accuracy's
    1.0); when mva and dpo both reach it in every seed the difference is 0 by saturation, not by measurement, and
    the result says so ("ceiling": a harder held-out set would be needed to see a loss)."""
    pairs = [(key(f["mva"]), key(f["dpo"])) for _, f in sorted(seeds.items()) if "mva" in f and "dpo" in f]
    pairs = [(a, b) for a, b in pairs if np.isfinite(a - b)]
    diffs = [a - b for a, b in pairs]
    if not diffs:
        return None
    if ceiling is not None and all(a >= ceiling and b >= ceiling for a, b in pairs):
        return {"mean": 0.0, "ci95": None, "per_seed": diffs, "seeds": len(diffs), "ceiling": ceiling}
    m = mean_interval(diffs)
    if m["n"] < 2:
        return {**m, "ci95": None, "per_seed": diffs, "seeds": 1}
    sd, n = float(np.std(diffs, ddof=1)), m["n"]
    return {**m, "detectable": t_power(n) * sd / np.sqrt(n), "per_seed": diffs, "seeds": n,
            "seeds_needed": next((k for k in range(2, 1001) if t_power(k) * sd / np.sqrt(k) <= abs(m["mean"])), None)}


def t_power(n: int) -> float:
    """The noncentrality δ√n/sd at which a two-sided 5% t-test over n seeds rejects with 80% power (noncentral t,
    solved exactly): the smallest true difference it detects is t_power(n) · sd / √n (2.80 for many seeds)."""
    df, crit = n - 1, stats.t.ppf(0.975, n - 1)

    def short(nc: float) -> float:
        lower = np.nan_to_num(stats.nct.cdf(-crit, df, nc))  # ~0 here; scipy returns NaN far out in the tail
        return float(stats.nct.sf(crit, df, nc) + lower) - 0.80
    return float(optimize.brentq(short, 0.0, 50.0))


def _agree(d: dict) -> str:
    per = d.get("per_seed", [])
    return f"{sum(np.sign(x) == np.sign(d['mean']) for x in per)}/{len(per)}"


def _budget(d: dict, v: str) -> str:
    if v not in ("not shown", "no loss detected") or "detectable" not in d or not d["mean"]:
        return ""
    if "seeds_needed" in d:  # a number per seed: more seeds, not more prompts, answer it
        return f"{d['seeds_needed']} seeds" if d["seeds_needed"] else "> 1000 seeds"
    k = (d["detectable"] / abs(d["mean"])) ** 2
    return f"{k:.1f}×" if k <= 100 else "> 100×"


def _verdict(d: dict, want: str) -> str:
    ci = d.get("ci95")
    if not ci or not all(np.isfinite(ci)):
        return "not shown"
    lo, hi = ci
    if want == "negative":
        lo, hi = -hi, -lo
    if want == "not-negative":
        return "hurt" if hi < 0 else "held" if lo > 0 else "no loss detected"
    return "held" if lo > 0 else "reversed" if hi < 0 else "not shown"


def _row(label: str, d: dict | None, meaning: str, digits: int = 3, want: str = "positive") -> tuple[str, str]:
    if d is None:
        return f"| {label} | — | — | — | — | — | {meaning} |", "—"
    if "ceiling" in d:  # saturated: no interval, not an answer
        return (f"| {label} | both {d['ceiling']:.{digits}f} in all {d['seeds']} seeds | — | — | at ceiling | harder "
                f"held-out pairs | {meaning} |", "at ceiling")
    v = _verdict(d, want)
    if v in ANSWERED and any(np.sign(x) != np.sign(d["mean"]) for x in d.get("per_seed", [])):
        v = "seeds disagree"
    det = f"{d['detectable']:.{digits}f}" if "detectable" in d else "—"
    ci = f"[{d['ci95'][0]:+.{digits}f}, {d['ci95'][1]:+.{digits}f}]" if d.get("ci95") else "[—]"
    return (f"| {label} | {d['mean']:+.{digits}f} {ci} | {_agree(d)} | {det} | {v} | {_budget(d, v)} | {meaning} |", v)


def claim_rows(seeds: dict[int, dict[str, dict]], ref) -> list[tuple[str, dict | None, str, int, str]]:
    """(label, estimate, what a positive value means, digits, the claimed direction) of each of the 15 claims."""
    hv = pooled_hv(seeds, ref)
    rows = [(label, hv.get((a, b)), meaning, 4, "positive") for label, a, b, meaning in hv_claims()]
    later = next(iter(next(iter(seeds.values())).values()))["values"][1]
    return rows + [
        ("interference: CKA(mva vectors) − CKA(dpo vectors)",
         per_seed_t(seeds, lambda c: c["interference"]["cka"] if c.get("interference") else float("nan")),
         "more interference (claim: negative)", 4, "negative"),
        ("single value, held-out pairs: accuracy of the later vector, mva − dpo",
         per_seed_t(seeds, lambda c, k=later: c["vectors"].get(k, {}).get("val_accuracy", float("nan")), 1.0),
         f"the {later} vector's pair accuracy (claim: not hurt)", 3, "not-negative"),
        ("single value, generations: own-value score at ω = e_k, mva − dpo", single_value_generations(seeds),
         f"the {later} vector alone raises {later} more (claim: not hurt)", 3, "not-negative")]


def markdown(results: dict) -> str:
    settings = by_setting(results.get("cells", {}))
    lines = ["# Quality benchmark v2", "", f"Budget and settings: `{json.dumps(results.get('budget', {}))}`", "",
             "How each claim is estimated: `bench/quality/quality_v2.py` (paired over prompts within a seed, pooled "
             "over seeds). Columns: estimate [95% interval]; seeds whose own difference has the estimate's sign; "
             "detectable (80% power); verdict ('seeds disagree': the pooled interval excludes 0 but a seed's own "
             "difference has the other sign); for claims not shown, how many times the prompts it would take to detect "
             "the estimated difference (for the two claims with one number per seed: how many seeds).", ""]
    tally = {}
    for setting, seeds in settings.items():
        cells = [c for fronts in seeds.values() for c in fronts.values()]
        ref = shared_reference([cell_front(c) for c in cells])
        values = cells[0]["values"]
        judges = results.get("judges", {}).get(setting, {})
        lines += [f"## {setting}: {' vs '.join(values)} — seeds {sorted(seeds)}", "",
                  judges_line(judges), "",
                  f"One reference point: {np.round(ref, 4).tolist()}.", "",
                  "'cell wall s': the cell's whole wall time here, training included, sometimes beside other jobs: a "
                  "record, not a timing.", "",
                  "| method | seeds | HV test (mean over seeds) | val / test prompts | steps per cell | cell wall s |",
                  "|---|---|---|---|---|---|"]
        for m in dict.fromkeys(m for fronts in seeds.values() for m in fronts):
            cs = [f[m] for f in seeds.values() if m in f]
            s = cs[0]["settings"]
            lines.append(f"| {m} | {len(cs)} | {np.mean([cell_front(c).hv_with(ref) for c in cs]):.4f} | "
                         f"{s.get('val_prompts')} / {s.get('test_prompts')} | "
                         f"{np.mean([c['training']['steps'] for c in cs]):.0f} | "
                         f"{np.mean([c['cell_wall_seconds'] for c in cs]):.0f} |")
        budget = results.get("budget", {})
        short = [m for m in seeds[min(seeds)].values() if m["settings"].get("val_prompts", 0) < budget.get("val_prompts", 0)
                 or m["settings"].get("test_prompts", 0) < budget.get("test_prompts", 0)]
        if short:
            s = short[0]["settings"]
            lines += ["", f"Fewer prompts than the budget asks ({budget.get('val_prompts')} val / "
                      f"{budget.get('test_prompts')} test): this setting's data has {s['val_prompts']} val and "
                      f"{s['test_prompts']} test prompts in its split (see SPLITS in run.py)."]
        lines += ["", "| claim | estimate [95%] | seeds agreeing | detectable | verdict | prompts × to answer | positive "
                  "means |", "|---|---|---|---|---|---|---|"]
        verdicts = []
        for label, d, meaning, digits, want in claim_rows(seeds, ref):
            row, v = _row(label, d, meaning, digits, want)
            lines.append(row)
            verdicts.append(v)
        tally[setting] = (sum(v in ANSWERED for v in verdicts), len(verdicts))
        lines.append("")
    head = ["## Claims answered", "", "A claim is answered when its verdict is held, reversed or hurt ('no loss "
            "detected', 'at ceiling' and 'not shown' are not answers). v1 (bench/results/quality.md): 2 of 15 per setting.", ""]
    head += [f"- {s}: {a} of {n} answered" for s, (a, n) in tally.items()] + [""]
    return "\n".join(lines[:6] + head + lines[6:]) + "\n"


def write(results: dict, path: Path) -> str:
    text = markdown(results)
    path.write_text(text)
    return text


if __name__ == "__main__":
    src = RESULTS / "quality-v2.json"
    print(write(json.loads(src.read_text()), src.with_suffix(".md")))
