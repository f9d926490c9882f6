"""Quality benchmark v3 tables (issue 36): bench/results/quality-v3.json → quality-v3.md.

    .venv/bin/python -m bench.quality.quality_v3      # rewrites bench/results/quality-v3.md

Every claim of v2 (the same 15, estimated the same way: `bench.quality.quality_v2`) is computed once per measure of
the values: under the primaries (one BT head per value), and with each value's second measure in place of its
primary (tqa: honest by TruthfulQA MC2; builtin and hh: harmless by the string-rule refusal rate on harmful prompts).
Under each measure the fronts are re-selected on val by that measure (among every candidate, `v3.test_all` scored
the ones any measure selects on test), the reference point is recomputed (per-value minimum over every cell's base
and test points), and the pooled paired interval and per-seed signs decide the verdict as in v2. Combined:
  answered            every measure gives the same answer (held, reversed or hurt);
  measure-dependent   some measure answers and another does not agree: opposite answers (held under one, reversed
                      under another), or an answer under one measure only; listed separately, with each verdict;
  not answered        no measure answers.
Claims on a measure-free quantity (interference CKA, held-out pair accuracy) have one verdict under every measure.
v3's own rows (mva-paper, the decode-time fusions) follow in a second table, judged the same way, outside the 15.
Every cell of a setting must carry the same base settings key (prompts, generation settings and the judges' weight
digests): a cell judged by another instrument (a head refit with another seed on a new machine) stops the tables.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from bench.quality.quality_table import cell_front, judges_line
from bench.quality.quality_v2 import ANSWERED, _row, by_setting
from bench.quality.quality_v2 import claim_rows as claim_rows_v2
from mvalign.hvstats import pooled_differences, shared_reference
from mvalign.pareto import hypervolume, non_dominated
from mvalign.stats import json_key

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
NEW_CLAIMS = [
    ("as published: HV(mva-paper) − HV(mva-nohsic)", "mva-paper", "mva-nohsic", "the authors' decorrelation helps"),
    ("as published vs default: HV(mva-paper) − HV(mva)", "mva-paper", "mva", "the authors' variant's front larger"),
    ("decode-time vs weights, dpo vectors: HV(mod) − HV(mva-nohsic)", "mod", "mva-nohsic", "fusion's front larger"),
    ("decode-time vs weights, mva vectors: HV(mod-mva) − HV(mva)", "mod-mva", "mva", "fusion's front larger"),
    # greedy fusion depends only on ω's direction (argmax(c·z) = argmax(z)), so mod's box grid generates only
    # five policies (ω ∝ e₁, e₂, (1, 1), (1, ½), (½, 1)), all interpolations: the like-for-like weight-space comparison
    # is the soup on the simplex (the MOD paper's own baseline)
    ("decode-time vs weights on the simplex, dpo vectors: HV(mod) − HV(soup)", "mod", "soup", "fusion's front larger"),
    ("decode-time vs prompt: HV(mod) − HV(ric)", "mod", "ric", "fusion's front larger"),
]


def remeasure(cell: dict, mapping: dict[str, str]) -> dict:
    """The cell as if each value v were measured by the score key mapping[v]: every point's scores and means
    replaced, the val front re-selected by them and its test points taken from `test_all`."""
    values = cell["values"]

    def point(p: dict) -> dict | None:
        s = p.get("scores") or {}
        if p.get("flag") or not all(mapping[v] in s for v in values):
            return None
        scores = {v: s[mapping[v]] for v in values}
        return {**p, "scores": scores, "rewards": {v: float(np.mean(scores[v])) for v in values}, "vs_base": {},
                "disputed": []}

    val = [q for q in (point(p) for p in cell["points"] if p["split"] == "val") if q is not None]
    pool = {json_key(q["weights"]): q for q in (point(p) for p in cell.get("test_all") or cell["points"]
                                               if p["split"] == "test") if q is not None}
    mask = non_dominated([[q["rewards"][v] for v in values] for q in val]) if val else []
    test = [pool[json_key(q["weights"])] for q, keep in zip(val, mask) if keep and json_key(q["weights"]) in pool]
    b = cell["base"]
    base = {**b, "scores": {v: b["scores"][mapping[v]] for v in values},
            "scores_val": {v: b["scores_val"][mapping[v]] for v in values}}
    base["rewards"] = {v: float(np.mean(base["scores"][v])) for v in values}
    base["rewards_val"] = {v: float(np.mean(base["scores_val"][v])) for v in values}
    rows = [[q["rewards"][v] for v in values] for q in val + test]
    rows += [[base[k][v] for v in values] for k in ("rewards", "rewards_val")]
    ref = np.min(np.asarray(rows, float), axis=0)

    def hv(points):
        m = np.asarray([[q["rewards"][v] for v in values] for q in points], float).reshape(-1, len(values))
        return hypervolume(m[non_dominated(m)], ref) if len(m) else 0.0

    return {**cell, "points": [{**q, "split": "val"} for q in val] + [{**q, "split": "test"} for q in test],
            "base": base, "measured_by": dict(mapping), "own_reference_point": ref.tolist(),
            "hypervolume_own_reference": {"val": hv(val), "test": hv(test)}}


def measure_label(mapping: dict[str, str]) -> str:
    alt = [k for v, k in mapping.items() if k != v]
    return alt[0] if alt else "primaries (BT heads)"


def claim_rows(seeds: dict, new: bool = False) -> list[tuple[str, dict | None, str, int, str]]:
    """(label, estimate, meaning, digits, want) of every claim on `seeds` ({seed: {method: cell}})."""
    fronts = [cell_front(c) for f in seeds.values() for c in f.values()]
    ref = shared_reference(fronts)
    if new:
        out = []
        for label, a, b, meaning in NEW_CLAIMS:
            per = [{m: cell_front(f[m]) for m in (a, b)} for _, f in sorted(seeds.items()) if a in f and b in f]
            out.append((label, pooled_differences(per, ref)[a, b] if per else None, meaning, 4, "positive"))
        return out
    return claim_rows_v2(seeds, ref)


def remeasure_all(seeds: dict, maps: list[dict[str, str]]) -> list[dict]:
    """`seeds` ({seed: {method: cell}}) re-read under each measure of `maps`, in that order."""
    return [{s: {m: remeasure(c, mp) for m, c in f.items()} for s, f in seeds.items()} for mp in maps]


def claim_verdicts(remeasured: list[dict], new: bool = False) -> list[tuple[str, list[tuple[str, str]]]]:
    """(label, [(table row, verdict) under each measure]) of every claim (v3's own when `new`), from
    `remeasure_all`'s list."""
    per_measure = [claim_rows(r, new) for r in remeasured]
    return [(label, [_row(label, *rows[i][1:]) for rows in per_measure])
            for i, (label, *_rest) in enumerate(per_measure[0])]


def combine(verdicts: list[str]) -> str:
    answers = {v for v in verdicts if v in ANSWERED}
    if not answers:
        return "not answered"
    if len(answers) == 1 and all(v in ANSWERED for v in verdicts):
        return f"answered: {answers.pop()}"
    return "measure-dependent: " + ("opposite answers" if len(answers) > 1 else "answered under one measure only")


def setting_section(setting: str, seeds: dict, judges: dict) -> tuple[list[str], int, int, list[str]]:
    cells = next(iter(seeds.values()))
    maps = next(iter(cells.values())).get("measures") or [{v: v for v in next(iter(cells.values()))["values"]}]
    lines = [f"## {setting}: {' vs '.join(maps[0])} — seeds {sorted(seeds)}", "", judges_line(judges), ""]
    lines += ["| method | seeds | HV test under each measure (mean over seeds; own reference point) | cell wall s |",
              "|---|---|---|---|"]
    remeasured = remeasure_all(seeds, maps)
    for m in dict.fromkeys(m for f in seeds.values() for m in f):
        hv = " / ".join(f"{np.mean([f[m]['hypervolume_own_reference']['test'] for f in r.values() if m in f]):.4f}"
                        for r in remeasured)
        lines.append(f"| {m} | {sum(m in f for f in seeds.values())} | {hv} | "
                     f"{np.mean([f[m]['cell_wall_seconds'] for f in seeds.values() if m in f]):.0f} |")
    lines += ["", "Measures, in the order above: " + "; ".join(measure_label(mp) for mp in maps) + ".", ""]
    combined, dependent, answered = [], [], 0
    for new in (False, True):
        lines += ["### " + ("v3's own claims (outside the 15)" if new else "The 15 claims of v2") + ", per measure", "",
                  "| claim | measure | estimate [95%] | seeds agreeing | detectable | verdict | prompts × to answer | "
                  "positive means |", "|---|---|---|---|---|---|---|---|"]
        for label, judged in claim_verdicts(remeasured, new):
            verdicts = []
            for mp, (row, v) in zip(maps, judged):
                cols = row.split(" | ")
                lines.append(" | ".join([cols[0], measure_label(mp)] + cols[1:]))
                verdicts.append(v)
            c = combine(verdicts)
            combined.append(f"| {label} | {' / '.join(verdicts)} | {c} |")
            if not new:
                answered += c.startswith("answered")
            if c.startswith("measure-dependent"):
                dependent.append(f"- {setting}: {label} — {' / '.join(verdicts)} ({c.split(': ')[1]})")
        lines.append("")
    lines += ["### Combined verdicts", "", "| claim | verdict per measure | combined |", "|---|---|---|", *combined, ""]
    return lines, answered, 15, dependent


def v2_tally() -> dict[str, str]:
    path = RESULTS / "quality-v2.md"
    text = path.read_text() if path.is_file() else ""
    return {m.group(1): m.group(2) for m in re.finditer(r"^- (\w+): (\d+) of 15 answered", text, re.M)}


def one_instrument(cells: dict[str, dict]) -> None:
    """Stop when a setting's cells were not all scored on the same prompts by the same judges (`settings_key`)."""
    seen: dict[str, dict[tuple, list[str]]] = {}
    for name, cell in cells.items():
        b = cell["base"]
        seen.setdefault(name.split("/")[0], {}).setdefault((b["settings_key"], b["settings_key_val"]), []).append(name)
    for setting, groups in seen.items():
        if len(groups) > 1:
            raise SystemExit(f"{setting}: cells were scored under {len(groups)} different settings keys (judges or "
                             "prompts differ): " + "; ".join(f"{k[0]}: {', '.join(sorted(v)[:4])}"
                                                             + (" …" if len(v) > 4 else "") for k, v in groups.items())
                             + "; re-evaluate the odd cells with the setting's judges")


def markdown(results: dict) -> str:
    one_instrument(results.get("cells", {}))
    settings = by_setting(results.get("cells", {}))
    body, tally, dependent = [], {}, []
    for setting, seeds in settings.items():
        lines, answered, n, dep = setting_section(setting, seeds, results.get("judges", {}).get(setting, {}))
        body += lines
        tally[setting] = (answered, n, len(seeds))
        dependent += dep
    v2 = v2_tally()
    head = ["# Quality benchmark v3", "", f"Budget and settings: `{json.dumps(results.get('budget', {}))}`", "",
            "How each claim is estimated and combined over measures: `bench/quality/quality_v3.py`.", "",
            "## Claims answered", "", "A claim is answered when every measure of its values gives the same answer "
            "(held, reversed or hurt); v2's count (one measure per value) beside it.", ""]
    head += [f"- {s}: {a} of {n} answered (v2: {v2.get(s, '—')} of 15; seeds here: {k})" for s, (a, n, k) in tally.items()]
    head += ["", "## Measure-dependent claims", ""] + (dependent or ["- none"]) + [""]
    return "\n".join(head + body) + "\n"


def write(results: dict, path: Path) -> str:
    text = markdown(results)
    path.write_text(text)
    return text


if __name__ == "__main__":
    import sys

    src = RESULTS / ("quality-v3-quick.json" if "--quick" in sys.argv else "quality-v3.json")
    print(write(json.loads(src.read_text()), src.with_suffix(".md")))
