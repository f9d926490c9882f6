"""How far to trust each judge: held-out pair accuracy with an interval, calibration, and a warning near chance.

Pair accuracy: the share of k held-out preference pairs (n in all) whose chosen response the judge scores higher,
with the Wilson score 95% interval (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n), z = 1.96. A judge whose
interval reaches 0.5 is "not clearly above chance": its axis may be noise, and every report says so.

Calibration of a BT head (expected calibration error): P(y_w ≻ y_l) = σ(r(y_w) − r(y_l)). Each held-out pair is
counted both ways (p with label 1, 1 − p with label 0, so the labels are not all 1), the 2n probabilities are put
in 10 equal-width bins, and ECE = Σ_b (|B_b| / 2n) · |mean label in b − mean p in b|.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

Z95 = 1.959964


def wilson_interval(correct: float, n: int) -> list[float]:
    if n <= 0:
        return [float("nan"), float("nan")]
    p = correct / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return [centre - half, centre + half]


def pair_ece(margins: np.ndarray, bins: int = 10) -> float:
    """ECE of σ(margin) as the probability that the chosen response is preferred (see the module docstring)."""
    p = 1 / (1 + np.exp(-np.asarray(margins, float)))
    probs, labels = np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
    which = np.minimum((probs * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(labels[inside].mean() - probs[inside].mean())
    return float(total)


def judge_quality(folder: Path) -> dict | None:
    """Accuracy, Wilson interval, ECE and the chance warning of a trained BT head (None: not a BT head folder)."""
    try:
        meta = json.loads((folder / "head.json").read_text())
    except (OSError, ValueError):
        return None
    acc, n = meta.get("val_accuracy"), int(meta.get("val_pairs") or 0)
    if acc is None or n == 0:
        return {"accuracy": None, "pairs": 0, "ci95": None, "ece": None, "warning": "no held-out pairs measured"}
    ci = wilson_interval(round(acc * n), n)
    return {"accuracy": acc, "pairs": n, "ci95": ci, "ece": meta.get("val_ece"),
            "warning": "" if ci[0] > 0.5 else "not clearly above chance: its axis may be noise"}


def judges_section(judges: dict[str, dict | None]) -> list[str]:
    """Markdown lines: one row per judge (value)."""
    lines = ["Judges (held-out preference pairs; Wilson 95% interval; ECE of a BT head's pair probabilities):", "",
             "| value | judge accuracy | 95% interval | pairs | ECE | |", "|---|---|---|---|---|---|"]
    for value, q in judges.items():
        if q is None or q["accuracy"] is None:
            note = "not a trained BT head: measure it with `mvalign reward eval CONFIG`" if q is None else q["warning"]
            lines.append(f"| {value} | — | — | — | — | {note} |")
            continue
        ece = "—" if q["ece"] is None else f"{q['ece']:.3f}"
        lines.append(f"| {value} | {q['accuracy']:.3f} | [{q['ci95'][0]:.3f}, {q['ci95'][1]:.3f}] | {q['pairs']} | "
                     f"{ece} | {('**warning: ' + q['warning'] + '**') if q['warning'] else ''} |")
    return lines + [""]
