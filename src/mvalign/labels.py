"""A person's verdicts on the run's own responses, and how far every measure agrees with them.

Scheme (one for every measure kind): for the response of an evaluated point to prompt i, per value v, the person says
whether it is **better**, the **same** or **worse** for v than the base model's response to the same prompt (the
explorer shows the two side by side). A measure m of v gives the same three-way verdict from its per-prompt change
Δ = s_m(point, i) − s_m(base, i): better if Δ > 0, same if Δ = 0, worse if Δ < 0.

Agreement of a measure with the person, over the labels of v (the latest label per response, value and person):
accuracy (Wilson 95% interval) and Cohen's κ = (p_o − p_e) / (1 − p_e), p_o the share of agreeing verdicts, p_e =
Σ_c p_person(c) p_measure(c), with a percentile bootstrap interval over labels (B = 1000). Shown once a value has
`MIN_LABELS` labels.

File: RUN/labels.jsonl, append-only, one JSON record per line: id, value, label, method (the front's name), split,
weights, settings_key, prompt (index into the front's prompts of that split), response_sha (sha256 of the response,
first 16 hex), who, when (ISO 8601 UTC). Labels never change stored points or fronts; deleting the file returns the run
to its earlier state. A bad line (not JSON, a missing field, an unknown response, a repeated id) is reported as
`file:line: why` and skipped; the good lines are kept.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import ConfigError
from .judging import wilson_interval
from .methods import run_fronts
from .rundir import RunDir
from .stats import json_key

LABELS = ("better", "same", "worse")
MIN_LABELS = 20
FIELDS = ("value", "label", "method", "split", "weights", "settings_key", "prompt")


def labels_path(run: RunDir) -> Path:
    return run.root / "labels.jsonl"


def response_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LabelIndex:
    """The run's labellable responses: (method, split, weights key, settings key) -> (front, point), from its fronts."""

    def __init__(self, run: RunDir) -> None:
        self.run, self.fronts = run, {m: run.read_front(m) for m in run_fronts(run)}
        self.points = {(m, p.split, json_key(p.weights), p.settings_key): (f, p)
                       for m, f in self.fronts.items() for p in f.points if p.scores}

    def check(self, rec: object) -> str | None:
        """Why `rec` is not a label of this run (None: it is one)."""
        if not isinstance(rec, dict):
            return "not a JSON object"
        missing = [k for k in FIELDS if k not in rec]
        if missing:
            return f"missing field(s) {missing}"
        if rec["label"] not in LABELS:
            return f"field 'label' is {rec['label']!r}, not one of {list(LABELS)}"
        if not isinstance(rec["weights"], dict):
            return "field 'weights' must be a mapping"
        found = self.points.get((rec["method"], rec["split"], json_key(rec["weights"]), rec["settings_key"]))
        if found is None:
            return f"unknown response: no {rec['split']} point {rec['weights']} in front-{rec['method']}.json"
        front, point = found
        if rec["value"] not in front.values:
            return f"unknown value {rec['value']!r}; the run's values are {front.values}"
        n = len(point.scores[front.values[0]])
        if not isinstance(rec["prompt"], int) or not 0 <= rec["prompt"] < n:
            return f"field 'prompt' must be an index below {n}"
        return None


def read_labels(path: Path, index: LabelIndex) -> tuple[list[dict], list[str]]:
    """(good records in file order, 'file:line: why' for each bad line)."""
    good, bad, ids = [], [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return [], []
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: unreadable labels file ({e}); move it away to continue") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad.append(f"{path}:{n}: not a JSON record (a truncated line?)")
            continue
        why = index.check(rec) or ("repeats the id of an earlier line" if rec.get("id") in ids else None)
        if why:
            bad.append(f"{path}:{n}: {why}")
            continue
        ids.add(rec.get("id"))
        good.append(rec)
    return good, bad


def append_labels(run: RunDir, records: Sequence[dict], index: LabelIndex | None = None) -> list[dict]:
    """Validate `records` against the run (`index`: its LabelIndex when the caller has one) and append them to
    RUN/labels.jsonl under a file lock (one write per record, flushed and fsynced: a crash loses at most the line
    being written). Fills id, who, when. Returns them. One ConfigError naming the first bad record (nothing is
    written then)."""
    from filelock import FileLock

    index = index or LabelIndex(run)
    out = []
    for i, rec in enumerate(records):
        why = index.check(rec)
        if why:
            raise ConfigError(f"label {i}: {why}")
        out.append({"id": rec.get("id") or uuid.uuid4().hex, **{k: rec[k] for k in FIELDS},
                    "response_sha": rec.get("response_sha", ""), "who": rec.get("who") or "anonymous",
                    "when": rec.get("when") or datetime.datetime.now(datetime.timezone.utc).isoformat()})
    path = labels_path(run)
    with FileLock(str(path) + ".lock"), open(path, "a", encoding="utf-8") as f:
        for rec in out:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return out


def import_labels(run: RunDir, file: Path) -> tuple[int, int, list[str]]:
    """`mvalign labels import`: the good lines of `file` not yet in the run (by id) appended; (added, already
    present, bad lines)."""
    index = LabelIndex(run)
    if not file.is_file():
        raise ConfigError(f"{file}: no such labels file")
    good, bad = read_labels(file, index)
    have = {r.get("id") for r in read_labels(labels_path(run), index)[0]}
    new = [r for r in good if r.get("id") not in have]
    if new:
        append_labels(run, new, index)
    return len(new), len(good) - len(new), bad


def latest(records: Sequence[dict]) -> dict[tuple, dict]:
    """The effective label per (response, value, person): the latest by `when`, then file order."""
    out: dict[tuple, dict] = {}
    for rec in sorted(records, key=lambda r: str(r.get("when", ""))):
        out[(rec["method"], rec["split"], json_key(rec["weights"]), rec["settings_key"], rec["prompt"], rec["value"],
             rec.get("who", ""))] = rec
    return out


def run_labels(run: RunDir) -> list[dict]:
    """The run's effective labels: the latest per response, value and person (bad lines left out)."""
    if not labels_path(run).is_file():
        return []
    return list(latest(read_labels(labels_path(run), LabelIndex(run))[0]).values())


def verdict(delta: float) -> str:
    return "better" if delta > 0 else "worse" if delta < 0 else "same"


def kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's κ of two raters' verdicts (nan when chance agreement is 1)."""
    a, b = np.asarray(a), np.asarray(b)
    po = float(np.mean(a == b))
    pe = sum(float(np.mean(a == c)) * float(np.mean(b == c)) for c in LABELS)
    return float("nan") if pe >= 1 else (po - pe) / (1 - pe)


def agreement_with_people(run: RunDir, n_boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """{measure key: {"n", "accuracy", "accuracy_ci95", "kappa", "kappa_ci95", "shown"}} for every measure with
    per-prompt scores on labelled responses (values: primary key = value name; audits '<value>:<measure>')."""
    if not labels_path(run).is_file():
        return {}
    index = LabelIndex(run)
    records = list(latest(read_labels(labels_path(run), index)[0]).values())
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    for rec in records:
        front, point = index.points[(rec["method"], rec["split"], json_key(rec["weights"]), rec["settings_key"])]
        base = front.base.of(rec["split"]).scores
        for key, s in point.scores.items():
            if (key == rec["value"] or key.startswith(rec["value"] + ":")) and key in base:
                people, measure = pairs.setdefault(key, ([], []))
                people.append(rec["label"])
                measure.append(verdict(s[rec["prompt"]] - base[key][rec["prompt"]]))
    rng = np.random.default_rng(seed)
    out = {}
    for key, (people, measure) in pairs.items():
        p, m = np.asarray(people), np.asarray(measure)
        n = len(p)
        reps = [kappa(p[i], m[i]) for i in (rng.integers(0, n, n) for _ in range(n_boot))]
        reps = [r for r in reps if np.isfinite(r)]
        out[key] = {"n": n, "accuracy": float(np.mean(p == m)), "accuracy_ci95": wilson_interval(int((p == m).sum()), n),
                    "kappa": kappa(p, m), "kappa_ci95": np.percentile(reps, [2.5, 97.5]).tolist() if reps else None,
                    "shown": n >= MIN_LABELS}
    return out


def people_text(entry: dict | None) -> str:
    """One cell: κ and accuracy against the person's labels, or how many labels there are."""
    if not entry:
        return "no labels"
    if not entry["shown"]:
        return f"{entry['n']} labels (shown from {MIN_LABELS})"
    k = entry["kappa_ci95"]
    return (f"κ {entry['kappa']:.2f}" + (f" [{k[0]:.2f}, {k[1]:.2f}]" if k else "") + f", accuracy "
            f"{entry['accuracy']:.2f} [{entry['accuracy_ci95'][0]:.2f}, {entry['accuracy_ci95'][1]:.2f}] (n={entry['n']})")
