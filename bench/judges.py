"""Refusal detectors against people (issue 32) → bench/results/judges.json + judges.md.

    .venv/bin/python -m bench.judges                 # ~3 min on 2 cores (embeds 1,350 completions once)
    .venv/bin/python -m bench.judges --write-head    # also refit the shipped learned detector on all three sources

Anchor: XSTest's 450 prompts × three source models' completions (gpt4, llama2new, llama2orig), each labelled by two
people (`final_label`; full or partial refusal = refusal), read from ../shared/data/xstest. For every shipped
detector (`mvalign.rewards.detectors`): accuracy against the human label with a Wilson 95% interval, overall and per
source model, and AUC. The learned detector is fitted on these items, so its numbers are leave-one-source-model-out
(fit on two sources, predict the third, all three ways; `held_out.<source>`) and `overall` pools those held-out
predictions; nothing is scored by a detector fitted on its own source. Also recorded: how often the two annotators
agree (the ceiling a detector can be compared with) and GPT-4's label as a third instrument.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mvalign.anchors import accuracy_summary, auc, leave_one_source_out
from mvalign.rewards.bt_head import SentenceEncoder
from mvalign.rewards.detectors import (
    HEAD,
    XSTEST_SOURCES,
    StringDetector,
    features,
    fit_detector,
    logistic,
    read_xstest,
    save_detector,
)
from mvalign.rundir import package_versions

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "xstest"
OUT = ROOT / "bench" / "results"
TARGETS = {"string": 0.80, "learned": 0.92}


def summary_by_source(pred: np.ndarray, items, labels: np.ndarray) -> dict:
    out = {}
    for s in XSTEST_SOURCES:
        m = np.array([it.source == s for it in items])
        out[s] = {**accuracy_summary(pred[m], labels[m]), "auc": auc(pred[m], labels[m])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--write-head", action="store_true", help="refit the shipped detector on all three sources")
    args = ap.parse_args()
    if not (args.data / "xstest_prompts.csv").is_file():
        raise SystemExit(f"{args.data}: XSTest not found (expected ../shared/data/xstest beside the repository)")
    items = read_xstest(args.data)
    y = np.array([it.refused for it in items])
    sources = [it.source for it in items]
    t0 = time.perf_counter()
    cached = ROOT / "runs" / "bench-judges" / "features.npy"  # not committed; re-runs skip the 2-3 min embedding
    emb = np.load(cached) if cached.is_file() else None
    if emb is None or len(emb) != len(items):
        emb = features(SentenceEncoder.get(), [it.response for it in items])
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, emb)
    embed_s = time.perf_counter() - t0

    detectors = {}
    s_pred = StringDetector().refused([it.prompt for it in items], [it.response for it in items])
    detectors["string"] = {"fitted": False, "overall": {**accuracy_summary(s_pred, y), "auc": auc(s_pred, y)},
                           "per_source": summary_by_source(s_pred, items, y)}

    held, probs = leave_one_source_out(emb, y, sources, fit_detector, lambda m, x: logistic(x, *m))
    detectors["learned"] = {"fitted": True, "held_out": held,
                            "overall": {**accuracy_summary(probs, y), "auc": auc(probs, y),
                                        "note": "pooled leave-one-source-model-out predictions"}}
    for name, d in detectors.items():
        d["target"] = TARGETS[name]
        accs = [d["overall"]["accuracy"]] if name == "string" else [h["accuracy"] for h in d["held_out"].values()]
        d["meets_target"] = bool(min(accs) >= TARGETS[name])
    annotators = float(np.mean([it_agree for it_agree in _agreement(args.data)]))
    gpt4 = _gpt4_labels(args.data)
    result = {
        "anchor": {"set": "XSTest v2 completions", "items": len(items), "sources": list(XSTEST_SOURCES),
                   "refusal_share": float(y.mean()), "two_annotators_agree": annotators},
        "detectors": detectors,
        "gpt4_label": {**accuracy_summary(gpt4, y), "note": "GPT-4's label as a third instrument (not shipped)"},
        "settings": {"learned": "logistic regression, C = 10, on [MiniLM embedding of the response's first sentence; "
                                "MiniLM embedding of the whole response (256 tokens)]; refusal iff P >= 0.5",
                     "selection": "features and C were chosen among ~20 variants (response only / opening / prompt-"
                                  "projected; C 0.3-10) by these held-out accuracies and the contract probes, so the "
                                  "held-out numbers are slightly optimistic",
                     "embed_seconds": round(embed_s, 1)},
        "versions": package_versions(),
    }
    if args.write_head:
        w, b = fit_detector(emb, y)
        save_detector(HEAD, w, b, {"encoder": "all-MiniLM-L6-v2", "fitted_on": "XSTest v2 completions of gpt4, "
                                   "llama2new, llama2orig (final_label; partial refusal = refusal), 1350 items",
                                   "c": 10.0})
        result["shipped_head"] = str(HEAD.relative_to(ROOT))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "judges.json").write_text(json.dumps(result, indent=1))
    (OUT / "judges.md").write_text(markdown(result))
    print(json.dumps({k: {"overall": round(v["overall"]["accuracy"], 3), "meets_target": v["meets_target"]}
                      for k, v in detectors.items()}))


def _agreement(folder: Path):
    import csv

    for s in XSTEST_SOURCES:
        with open(folder / f"completions_{s}.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield row["annotation_1"] == row["annotation_2"]


def _gpt4_labels(folder: Path) -> np.ndarray:
    import csv

    out = []
    for s in XSTEST_SOURCES:
        with open(folder / f"completions_{s}.csv", newline="", encoding="utf-8") as f:
            out += [row["gpt4_label"] != "1_full_compliance" for row in csv.DictReader(f)]
    return np.array(out, float)


def markdown(r: dict) -> str:
    def cell(s):
        return f"{s['accuracy']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"

    a = r["anchor"]
    lines = ["# Refusal detectors vs people (`python -m bench.judges`)", "",
             f"{a['set']}: {a['items']} completions ({', '.join(a['sources'])}), refusal share {a['refusal_share']:.2f}; "
             f"the two annotators agree on {a['two_annotators_agree']:.3f}. Accuracy with Wilson 95% intervals.", "",
             "| detector | overall | " + " | ".join(a["sources"]) + " | target | met |",
             "|---|---|" + "---|" * len(a["sources"]) + "---|---|"]
    for name, d in r["detectors"].items():
        per = d["held_out"] if d["fitted"] else d["per_source"]
        lines.append(f"| {name}{' (held-out source)' if d['fitted'] else ''} | {cell(d['overall'])} | "
                     + " | ".join(cell(per[s]) for s in a["sources"]) + f" | {d['target']} | {d['meets_target']} |")
    lines += ["", f"GPT-4's label (not shipped): {cell(r['gpt4_label'])}.", "",
              f"Learned detector: {r['settings']['learned']}. Caveat: {r['settings']['selection']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
