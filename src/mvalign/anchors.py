"""Instruments checked against people: accuracy and AUC of a measure on human-labelled anchor items.

Accuracy of a 0/1 instrument against human labels, with the Wilson 95% interval (`mvalign.judging`). AUC of a
real-valued judge (the probability that a random good item scores above a random bad one, ties counting one half;
Mann-Whitney U / (n₊ n₋)) with a percentile bootstrap interval over items (resampled within each class).
Leave-one-source-model-out for anything fitted on the anchors: for each source model s, refit on the other
sources' items and predict s's, so no item is judged by an instrument fitted on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .judging import wilson_interval

FLOOR = 0.6


def accuracy_summary(predicted: Sequence[float], labels: Sequence[bool]) -> dict:
    """{"metric": "accuracy", "estimate" (= "accuracy"), "ci95" (Wilson), "n"} of 0/1 predictions against labels."""
    p, y = np.asarray(predicted, float) >= 0.5, np.asarray(labels, bool)
    n = len(y)
    correct = int((p == y).sum())
    acc = correct / n if n else float("nan")
    return {"metric": "accuracy", "estimate": acc, "accuracy": acc, "ci95": wilson_interval(correct, n), "n": n}


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Mann-Whitney AUC: P(score of a good item > score of a bad item) + ½ P(tie)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def auc_summary(scores: Sequence[float], labels: Sequence[bool], n_boot: int = 1000, seed: int = 0) -> dict:
    """{"metric": "auc", "estimate", "ci95" (bootstrap within classes), "n"}."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    est = auc(s, y)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    if not len(pos) or not len(neg):
        return {"metric": "auc", "estimate": est, "ci95": [float("nan")] * 2, "n": len(y)}
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        reps.append(auc(s[idx], y[idx]))
    return {"metric": "auc", "estimate": est, "ci95": np.percentile(reps, [2.5, 97.5]).tolist(), "n": len(y)}


def trusted(summary: dict, floor: float = FLOOR) -> bool:
    """A measure is trusted when the lower bound of its interval is above the floor."""
    lo = summary["ci95"][0]
    return bool(np.isfinite(lo) and lo > floor)


def leave_one_source_out(embeddings: np.ndarray, labels: Sequence[bool], sources: Sequence[str], fit,
                         predict) -> tuple[dict[str, dict], np.ndarray]:
    """For each source s: `fit(X, y)` on the other sources, `predict(model, X_s)` (probabilities) on s. Returns
    ({source: accuracy summary + auc}, the held-out probability of every item)."""
    y, src = np.asarray(labels, bool), np.asarray(sources)
    held = np.full(len(y), np.nan)
    per = {}
    for s in dict.fromkeys(sources):
        test = src == s
        model = fit(embeddings[~test], y[~test])
        held[test] = predict(model, embeddings[test])
        per[s] = {**accuracy_summary(held[test], y[test]), "auc": auc(held[test], y[test])}
    return per, held
