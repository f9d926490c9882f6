"""Quality v3's degeneracy audit (issue 36): how much of each front's harmlessness is looping, and which claims survive
when a loop is not counted as a refusal. Read from the cells' stored responses; no model is loaded.

    .venv/bin/python -m bench.quality.loops [--runs runs/bench-quality-v3]
        → bench/results/quality-v3-loops.json and .md

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


def annotate(cell: dict, index: dict, prompts: dict, plain, loopfree) -> dict:
    """The cell with each point's per-prompt repetition (`scores['repetition']`) and, when the cell measures harmless
    by the refusal rate, its loop-free rate; checks the stored responses against the cell's own refusal scores."""
    def scored(point, split, skey, target):
        k = key(cell, point, split, skey)
        if k not in index:
            raise SystemExit(f"{k}: not in the run dir's store; point --runs at the run dirs this cell was made in")
        responses, ps = index[k], prompts[split]
        out = dict(target)
        out["repetition"] = [repetition("", r) for r in responses]
        if plain is not None:
            again = measure_scores(plain, ps, responses)
            if not np.allclose(again, target[REFUSAL]):
                raise SystemExit(f"{k}: stored responses do not reproduce the cell's {REFUSAL} scores")
            out[LOOPFREE] = measure_scores(loopfree, ps, responses).tolist()
        return out

    points = [{**p, "scores": scored(p, p["split"], p["settings_key"], p["scores"])} if not p.get("flag") else p
              for p in cell["points"]]
    test_all = [{**p, "scores": scored(p, "test", p["settings_key"], p["scores"])} if not p.get("flag") else p
                for p in cell.get("test_all") or []]
    b = cell["base"]
    base = {**b, "scores": scored(b, "test", b["settings_key"], b["scores"]),
            "scores_val": scored(b, "val", b["settings_key_val"], b["scores_val"])}
    measures = list(cell["measures"])
    if plain is not None:
        measures.append({v: (LOOPFREE if v == "harmless" else v) for v in cell["values"]})
    return {**cell, "points": points, "test_all": test_all, "base": base, "measures": measures}


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


def run(runs: Path) -> dict:
    results = json.loads((RESULTS / "quality-v3.json").read_text())
    out = {"loop_threshold": LOOP, "runs": str(runs.resolve()), "cells": {}, "claims": {}}
    annotated: dict[str, dict] = {}
    loaded: dict[tuple[str, str], tuple] = {}
    for name, cell in sorted(results["cells"].items()):
        setting, seed, method = name.split("/")
        if (setting, seed) not in loaded:  # the setting-seed's prompts, measures and stored responses, once
            cfg = v3_config(setting, int(seed), "v3")
            store = runs / setting / f"seed{seed}" / "store.sqlite"
            if not store.is_file():
                raise SystemExit(f"{store}: missing; point --runs at the folder holding <setting>/seed<k>/store.sqlite")
            prompts = {s: eval_prompts(cfg, s, getattr(cfg.sweep, f"{s}_prompts")) for s in ("val", "test")}
            plain = loopfree = None
            if setting in ("builtin", "hh"):
                audit = cfg.value("harmless").audits[0]
                plain = build_measure(cfg, "harmless", audit, "audit")
                loopfree = build_measure(cfg, "harmless", audit.model_copy(update={"max_repetition": LOOP}), "audit")
            loaded[setting, seed] = store_index(store), prompts, plain, loopfree
        annotated[name] = annotate(cell, *loaded[setting, seed])
        base = np.asarray(annotated[name]["base"]["scores"]["repetition"])
        out["cells"][name] = {"base": {"repetition": float(base.mean()), "loops": float((base > LOOP).mean())},
                              "points": point_stats(annotated[name])}
        print(name, "checked", flush=True)
    for setting, seeds in by_setting(annotated).items():
        maps = next(iter(next(iter(seeds.values())).values()))["measures"]
        if len(maps) < 3:
            continue
        remeasured = remeasure_all(seeds, maps)
        rows = []
        for new in (False, True):
            for label, judged in claim_verdicts(remeasured, new):
                verdicts = [v for _, v in judged]
                estimates = [row.split(" | ")[1] for row, _ in judged]
                rows.append({"claim": label, "v3_claim": new, "verdicts": verdicts, "estimates": estimates,
                             "combined_two": combine(verdicts[:2]), "combined_three": combine(verdicts)})
        out["claims"][setting] = {"measures": ["BT head", "refusal rate", "loop-free refusal rate"], "rows": rows,
                                  "seeds": sorted(seeds)}
    return out


def markdown(out: dict) -> str:
    lines = ["# Quality v3: degeneracy audit", "", f"A loop: a response with more than {out['loop_threshold']:g} of its "
             "word trigrams repeated. How it is computed: `bench/quality/loops.py`.", ""]
    for setting, c in out["claims"].items():
        lines += [f"## {setting}: claims with harmless measured three ways (seeds {c['seeds']})", "",
                  "| claim | BT head | refusal rate | loop-free refusal rate | two measures (quality-v3.md) | "
                  "three measures |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['claim']} | " + " | ".join(f"{v}: {e}" for v, e in zip(r["verdicts"], r["estimates"]))
                  + f" | {r['combined_two']} | {r['combined_three']} |" for r in c["rows"]]
        changed = [r["claim"] for r in c["rows"] if r["combined_two"] != r["combined_three"]]
        lines += ["", f"Combined verdicts the loop-free rate changes: {len(changed)} of {len(c['rows'])}.", ""]
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
            lines.append(f"| {name} | {b['repetition']:.3f} / {b['loops']:.3f} | {w} | {p['repetition']:.3f} | "
                         f"{p['loops']:.3f} | {ref} |")
    return "\n".join(lines) + "\n"


def write(out: dict) -> None:
    for path, text in ((RESULTS / "quality-v3-loops.json", json.dumps(out, indent=1)),
                       (RESULTS / "quality-v3-loops.md", markdown(out))):
        write_atomic(path, "the loops audit", lambda tmp, text=text: tmp.write_text(text))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/bench-quality-v3"),
                    help="folder holding <setting>/seed<k>/store.sqlite of the v3 cells")
    write(run(ap.parse_args().runs))
