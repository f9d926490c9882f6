"""Quality v3's degeneracy audit (issue 36): how much of each front's harmlessness is looping, and which claims survive
when a loop is not counted as a refusal. Read from the cells' stored responses; no model is loaded.

    .venv/bin/python -m bench.quality.loops [--runs runs/bench-quality-v3]
        → bench/results/quality-v3-loops.json and .md, and quality-v3-loops-scores.json (per-prompt scores)

For every v3 cell (setting/seed/method) in bench/results/quality-v3.json, each point's responses are read from its run
dir's store.sqlite (key: store method, ω, split, settings key). Two checks come first, so a wrong match cannot pass
silently: the stored responses rescored by the string rule must give the cell's own `harmless:refusal-string` scores,
and the store must hold every point. Then, per point,
  repetition   per response, the share of repeated word trigrams (`mvalign.judges.repetition`); reported per front
               point as its mean and the share of responses above 0.5 ("loops");
  loop-free    on builtin and hh, the harmless refusal rate with `max_repetition: 0.5` (`mvalign.rewards.rate`: a
               response with more than half its trigrams repeated is no refusal), as a third measure of harmless.
Every claim of `bench.quality.quality_v3` is then re-judged with the loop-free rate in place of the refusal rate (the
fronts re-selected on val by it, as for any measure); the table puts its verdict beside the BT head's and the
refusal rate's. The combined verdicts of quality-v3.md (two measures, as the issue asks) are not changed here.

Run dirs do not outlive a session's machine, so each cell's per-prompt scores (repetition, loop-free rate) are kept in
quality-v3-loops-scores.json once judged from its store; a later audit re-judges a cell whose store is present and
reads the kept scores of one whose store is gone. A cell with neither (its store was lost before its scores were kept)
keeps its per-point summary from the previous audit, marked as such, and is left out of the claims; a claims block of
an earlier audit whose seeds cannot all be re-judged is kept beside the new ones, with its seeds.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import numpy as np

from bench.quality.quality_v2 import by_setting
from bench.quality.quality_v3 import claim_verdicts, combine, remeasure, remeasure_all
from bench.quality.v3 import RESULTS, v3_config
from mvalign.data import eval_prompts
from mvalign.errors import write_atomic
from mvalign.front import store_key
from mvalign.judges import repetition
from mvalign.report import LOOP_REPETITION as LOOP
from mvalign.rewards import build_measure
from mvalign.rewards.rate import measure_scores

REFUSAL, LOOPFREE = "harmless:refusal-string", "harmless:refusal-string-loopfree"
OUT, SCORES = RESULTS / "quality-v3-loops.json", RESULTS / "quality-v3-loops-scores.json"


def store_index(path: Path) -> dict[tuple, list[str]]:
    """(store method, ω as sorted JSON, split, settings key) → responses, from a run dir's store (read-only)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT method, weights, split, settings_key, responses FROM points").fetchall()
    finally:
        con.close()
    return {(m, json.dumps(json.loads(w), sort_keys=True), s, k): json.loads(r) for m, w, s, k, r in rows}


def key(cell: dict, point: dict, split: str, skey: str) -> tuple:
    vec = cell["settings"]
    method = "base" if point is cell["base"] else store_key(vec["vectors"], vec["combination"])
    w = {v: 0.0 for v in cell["values"]} if point is cell["base"] else point["weights"]
    return method, json.dumps(w, sort_keys=True), split, skey


def judge(cell: dict, index: dict, prompts: dict, plain, loopfree) -> dict[str, dict[str, list[float]]]:
    """Per point of the cell (its store key as JSON): the per-prompt repetition of its stored responses and, when the
    cell measures harmless by the refusal rate, their loop-free rate; checks the stored responses against the cell's
    own refusal scores."""
    out = {}

    def one(point, split, skey, target):
        k = key(cell, point, split, skey)
        if k not in index:
            raise SystemExit(f"{k}: not in the run dir's store; point --runs at the run dirs this cell was made in")
        responses, ps = index[k], prompts[split]
        got = {"repetition": [round(repetition("", r), 6) for r in responses]}
        if plain is not None:
            again = measure_scores(plain, ps, responses)
            if not np.allclose(again, target[REFUSAL]):
                raise SystemExit(f"{k}: stored responses do not reproduce the cell's {REFUSAL} scores")
            got[LOOPFREE] = measure_scores(loopfree, ps, responses).tolist()
        out[json.dumps(k)] = got

    for p in cell["points"]:
        if not p.get("flag"):
            one(p, p["split"], p["settings_key"], p["scores"])
    for p in cell.get("test_all") or []:
        if not p.get("flag"):
            one(p, "test", p["settings_key"], p["scores"])
    b = cell["base"]
    one(b, "test", b["settings_key"], b["scores"])
    one(b, "val", b["settings_key_val"], b["scores_val"])
    return out


def apply(cell: dict, judged: dict[str, dict[str, list[float]]]) -> dict:
    """The cell with `judge`'s scores added to each point's `scores` and, with a loop-free rate, its measure map."""
    def scored(point, split, skey, target):
        k = json.dumps(key(cell, point, split, skey))
        if k not in judged:
            raise SystemExit(f"{k}: no kept loop scores for this point (the cell was re-run?); re-run the audit with "
                             "--runs at the run dir it was made in")
        return {**target, **judged[k]}

    points = [{**p, "scores": scored(p, p["split"], p["settings_key"], p["scores"])} if not p.get("flag") else p
              for p in cell["points"]]
    test_all = [{**p, "scores": scored(p, "test", p["settings_key"], p["scores"])} if not p.get("flag") else p
                for p in cell.get("test_all") or []]
    b = cell["base"]
    base = {**b, "scores": scored(b, "test", b["settings_key"], b["scores"]),
            "scores_val": scored(b, "val", b["settings_key_val"], b["scores_val"])}
    measures = list(cell["measures"])
    if any(LOOPFREE in v for v in judged.values()):
        measures.append({v: (LOOPFREE if v == "harmless" else v) for v in cell["values"]})
    return {**cell, "points": points, "test_all": test_all, "base": base, "measures": measures}


def annotate(cell: dict, index: dict, prompts: dict, plain, loopfree) -> dict:
    """`apply(cell, judge(...))`: the cell with each point's per-prompt repetition (`scores['repetition']`) and, when
    the cell measures harmless by the refusal rate, its loop-free rate."""
    return apply(cell, judge(cell, index, prompts, plain, loopfree))


def point_stats(cell: dict) -> list[dict]:
    """Per test front point of the cell as selected under each measure: ω, mean repetition, share of loops, and on
    harmless settings the refusal rate with and without loops."""
    def label(p: dict) -> str:
        return json.dumps(p["weights"], sort_keys=True)

    scores = {label(p): p["scores"] for p in cell["points"] + cell["test_all"] if p["split"] == "test"}
    out, seen = [], set()
    for mp in cell["measures"]:
        for p in remeasure(cell, mp)["points"]:
            if p["split"] != "test" or label(p) in seen:
                continue
            seen.add(label(p))
            s = scores[label(p)]
            rep = np.asarray(s["repetition"])
            row = {"weights": p["weights"], "repetition": float(rep.mean()), "loops": float((rep > LOOP).mean())}
            if LOOPFREE in s:
                row |= {"refusal": float(np.mean(s[REFUSAL])), "refusal_loopfree": float(np.mean(s[LOOPFREE]))}
            out.append(row)
    return out


def loaded_setting(runs: Path, setting: str, seed: str, mode: str = "v3") -> tuple | None:
    """(store index, prompts, refusal rate, loop-free rate) of a setting-seed, or None when its store is gone."""
    store = runs / setting / f"seed{seed}" / "store.sqlite"
    if not store.is_file():
        return None
    cfg = v3_config(setting, int(seed), mode)
    prompts = {s: eval_prompts(cfg, s, getattr(cfg.sweep, f"{s}_prompts")) for s in ("val", "test")}
    plain = loopfree = None
    if setting in ("builtin", "hh"):
        audit = cfg.value("harmless").audits[0]
        plain = build_measure(cfg, "harmless", audit, "audit")
        loopfree = build_measure(cfg, "harmless", audit.model_copy(update={"max_repetition": LOOP}), "audit")
    return store_index(store), prompts, plain, loopfree


def keep(name: str, cell: dict, runs: Path, mode: str = "v3", scores: Path | None = None) -> None:
    """Judge one just-run cell (`setting/seed/method`) from its store and add its per-prompt scores to the kept file
    (`scores`, default SCORES); v3's runner calls this after each cell, so the audit does not depend on a run dir
    outliving its session."""
    setting, seed, _ = name.split("/")
    scores = scores or SCORES
    kept = json.loads(scores.read_text()) if scores.is_file() else {}
    kept[name] = judge(json.loads(json.dumps(cell)), *loaded_setting(runs, setting, seed, mode))  # as stored
    write_kept(scores, kept)


def write_kept(path: Path, kept: dict) -> None:
    write_atomic(path, "the loops audit's kept scores", lambda tmp: tmp.write_text(json.dumps(kept, separators=(",", ":"))))


def claims_block(seeds: dict) -> dict:
    """Every claim re-judged with the loop-free rate as a third harmless measure, on `seeds` ({seed: {method: cell}})."""
    maps = next(iter(next(iter(seeds.values())).values()))["measures"]
    remeasured = remeasure_all(seeds, maps)
    rows = []
    for new in (False, True):
        for label, judged in claim_verdicts(remeasured, new):
            verdicts = [v for _, v in judged]
            estimates = [row.split(" | ")[1] for row, _ in judged]
            rows.append({"claim": label, "v3_claim": new, "verdicts": verdicts, "estimates": estimates,
                         "combined_two": combine(verdicts[:2]), "combined_three": combine(verdicts)})
    return {"measures": ["BT head", "refusal rate", "loop-free refusal rate"], "rows": rows, "seeds": sorted(seeds)}


def run(runs: Path) -> tuple[dict, dict]:
    """(the audit, every cell's kept per-prompt scores)."""
    results = json.loads((RESULTS / "quality-v3.json").read_text())
    kept = json.loads(SCORES.read_text()) if SCORES.is_file() else {}
    previous = json.loads(OUT.read_text()) if OUT.is_file() else {}
    out = {"loop_threshold": LOOP, "runs": str(runs.resolve()), "cells": {}, "claims": {}, "earlier_claims": [],
           "not_rejudged": []}
    annotated: dict[str, dict] = {}
    loaded: dict[tuple[str, str], tuple | None] = {}
    for name, cell in sorted(results["cells"].items()):
        setting, seed, method = name.split("/")
        if (setting, seed) not in loaded:  # the setting-seed's prompts, measures and stored responses, once
            loaded[setting, seed] = loaded_setting(runs, setting, seed)
        if loaded[setting, seed] is not None:
            kept[name] = judge(cell, *loaded[setting, seed])
        elif name not in kept:
            out["not_rejudged"].append(name)
            if name in previous.get("cells", {}):
                out["cells"][name] = {**previous["cells"][name], "earlier_audit": True}
            print(name, "not re-judged: its store is gone and its scores were not kept", flush=True)
            continue
        annotated[name] = apply(cell, kept[name])
        base = np.asarray(annotated[name]["base"]["scores"]["repetition"])
        out["cells"][name] = {"base": {"repetition": float(base.mean()), "loops": float((base > LOOP).mean())},
                              "points": point_stats(annotated[name])}
        print(name, "checked" if loaded[setting, seed] is not None else "from kept scores", flush=True)
    for setting, seeds in by_setting(annotated).items():
        if len(next(iter(next(iter(seeds.values())).values()))["measures"]) >= 3:
            out["claims"][setting] = claims_block(seeds)
    earlier = [{"setting": k, **v} for k, v in previous.get("claims", {}).items()] + previous.get("earlier_claims", [])
    for block in earlier:  # kept unless this audit re-judged all of its seeds
        now = out["claims"].get(block["setting"], {}).get("seeds", [])
        if not set(block["seeds"]) <= set(now) and block not in out["earlier_claims"]:
            out["earlier_claims"].append(block)
    return out, kept


def markdown(out: dict) -> str:
    lines = ["# Quality v3: degeneracy audit", "", f"A loop: a response with more than {out['loop_threshold']:g} of its "
             "word trigrams repeated. How it is computed: `bench/quality/loops.py`.", ""]

    def block(title: str, c: dict) -> list[str]:
        changed = [r["claim"] for r in c["rows"] if r["combined_two"] != r["combined_three"]]
        return [title, "", "| claim | BT head | refusal rate | loop-free refusal rate | two measures (as quality-v3.md) | "
                "three measures |", "|---|---|---|---|---|---|"] + [
            f"| {r['claim']} | " + " | ".join(f"{v}: {e}" for v, e in zip(r["verdicts"], r["estimates"]))
            + f" | {r['combined_two']} | {r['combined_three']} |" for r in c["rows"]] + [
            "", f"Combined verdicts the loop-free rate changes: {len(changed)} of {len(c['rows'])}.", ""]

    for setting, c in out["claims"].items():
        lines += block(f"## {setting}: claims with harmless measured three ways (seeds {c['seeds']})", c)
    for c in out.get("earlier_claims", []):
        lines += block(f"## {c['setting']}, seeds {c['seeds']}: kept from an earlier audit (their stores are gone and "
                       "their per-prompt scores were not kept, so this audit cannot re-judge them)", c)
    if out.get("not_rejudged"):
        groups: dict[str, int] = {}
        for name in out["not_rejudged"]:
            setting, seed, _ = name.split("/")
            groups[f"{setting} seed {seed}"] = groups.get(f"{setting} seed {seed}", 0) + 1
        lines += ["Cells not re-judged (store gone, scores not kept; their rows below are the earlier audit's): "
                  + ", ".join(f"{g} ({n} cells)" for g, n in groups.items()) + ".", ""]
    lines += ["## Loops at each test front point", "", "Points: the test points of the fronts selected under any "
              "measure. Refusal rates on the harmful test prompts (string rule; loop-free: loops are no refusal).", "",
              "| cell | base repetition / loops | ω | repetition | loops | refusal | loop-free refusal |",
              "|---|---|---|---|---|---|---|"]
    for name, c in out["cells"].items():
        b = c["base"]
        for p in sorted(c["points"], key=lambda p: -p["repetition"]):
            w = ", ".join(f"{v}={x:g}" for v, x in p["weights"].items()) if isinstance(p["weights"], dict) else str(
                p["weights"])
            ref = (f"{p['refusal']:.3f} | {p['refusal_loopfree']:.3f}" if "refusal" in p else "— | —")
            tag = " (earlier audit)" if c.get("earlier_audit") else ""
            lines.append(f"| {name}{tag} | {b['repetition']:.3f} / {b['loops']:.3f} | {w} | {p['repetition']:.3f} | "
                         f"{p['loops']:.3f} | {ref} |")
    return "\n".join(lines) + "\n"


def write(out: dict, kept: dict) -> None:
    write_kept(SCORES, kept)
    for path, text in ((OUT, json.dumps(out, indent=1)), (RESULTS / "quality-v3-loops.md", markdown(out))):
        write_atomic(path, "the loops audit", lambda tmp, text=text: tmp.write_text(text))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-quality-v3"),
                    help="folder holding <setting>/seed<k>/store.sqlite of the v3 cells")
    write(*run(ap.parse_args().runs))
