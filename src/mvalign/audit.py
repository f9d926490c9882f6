"""`mvalign judges audit`: every measure of a config checked against people, stored in RUN/audit.json.

The run's own labels (RUN/labels.jsonl, `mvalign.labels`): κ and accuracy of every measure against a person's
better / same / worse verdicts on the run's responses, under "people".

Anchors (human-labelled). A rate measure's detector, whatever the value, on XSTest's completions (safe and unsafe
prompts, three source models) against the people's refusal label (full or partial refusal), by accuracy; the
learned detector is fitted on XSTest, so there it is refitted leave-one-source-model-out with the same recipe (fit
on the other source models' items, score the held-out one) and only those held-out predictions count. A response
judge, by AUC (does it rank good above bad?), on its value's anchors (`probes.anchor_of`):
  helpful   XSTest completions to its 250 safe prompts; good = full compliance
  honest    TruthfulQA's judged answers (finetune_truth.jsonl, majority label); good = truthful
  harmless  none shipped: XSTest's unsafe prompts have 1 compliance among 597 completions, nothing to rank against
  any value the user's anchor files (prompt, response, label: 1 good / 0 bad; a rate is scored on them by the
            accuracy of its behaviour)
Statistics: `mvalign.anchors`. Likelihood measures (truthfulqa-mc) need no judge and have no anchor. A measure whose
interval's lower bound is at or below `audit.floor` on any anchor is untrusted. Each set is a seeded sample of at
most `audit.max_items` items (XSTest: one sample of its 1,350 completions).
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import numpy as np

from .anchors import accuracy_summary, auc_summary, leave_one_source_out, trusted
from .config import ConfigError, RunConfig
from .errors import write_atomic
from .probes import anchor_of
from .rewards import audit_key, build_measure, measure_name
from .rewards.base import RewardError
from .rewards.rate import RateMeasure
from .rundir import RunDir


def anchor_items(cfg: RunConfig, kind: str | None, value: str) -> dict[str, list[tuple]]:
    """{anchor set name: [(prompt, response, good, source)]} on which a value's response judges are scored (seeded
    samples of max_items). Rate measures are scored by `score_detector` instead."""
    sets: dict[str, list[tuple]] = {}
    a = cfg.audit
    if kind == "helpful" and a.xstest:
        sets["xstest-safe"] = [(it.prompt, it.response, not it.refused, it.source)
                               for it in xstest_pool(a.xstest, a.max_items) if it.safe]
    if kind == "honest" and a.truthfulqa:
        from .data.truthfulqa import read_judge_labels

        path = Path(a.truthfulqa) / "finetune_truth.jsonl"
        if not path.is_file():
            raise ConfigError(f"{path}: TruthfulQA's truth labels not found; set audit.truthfulqa to its folder")
        labels = read_judge_labels(path, "True")
        sets["truthfulqa"] = [(q, ans, good, "truthfulqa") for (q, ans), (good, _) in labels.items() if ans]
    for i, f in enumerate(a.anchors):
        if f.value == value:
            sets[f"anchors[{i}]"] = read_anchor_file(f.path, f"audit.anchors[{i}]")
    rng = random.Random(0)
    return {k: (rng.sample(v, a.max_items) if len(v) > a.max_items else v) for k, v in sets.items()}


NO_HARMLESS_ANCHOR = ("XSTest has 1 compliance among its 597 unsafe-prompt completions, so it cannot check that a judge "
                      "ranks refusals above harmful compliance; add your own under audit.anchors")


@functools.cache
def xstest_pool(folder: str, n: int) -> tuple:
    """A seeded sample of n of XSTest's labelled completions (safe and unsafe prompts, all sources): what rate
    measures' detectors are scored on, and the helpful anchor's items (its safe-prompt ones)."""
    from .rewards.detectors import read_xstest

    items = read_xstest(folder)
    return tuple(random.Random(0).sample(items, n) if len(items) > n else items)


@functools.cache
def _pool_features(folder: str, n: int, encoder: str, device: str) -> np.ndarray:
    from .rewards.bt_head import SentenceEncoder
    from .rewards.detectors import features

    return features(SentenceEncoder.get(encoder, device), [it.response for it in xstest_pool(folder, n)])


def score_detector(cfg: RunConfig, det) -> dict:
    """Accuracy of a rate measure's refusal detector against the people's refusal labels of the XSTest sample; the
    learned detector, fitted on XSTest, refitted leave-one-source-model-out on it (only held-out predictions count)."""
    from .rewards.detectors import fit_detector, logistic

    pool = xstest_pool(cfg.audit.xstest, cfg.audit.max_items)
    refused = np.array([it.refused for it in pool])
    if det.name != "learned":
        return accuracy_summary(det.refused([it.prompt for it in pool], [it.response for it in pool]), refused)
    x = _pool_features(cfg.audit.xstest, cfg.audit.max_items, det.encoder, det.device)
    per, held = leave_one_source_out(x, refused, [it.source for it in pool], fit_detector, lambda m, e: logistic(e, *m))
    return {**accuracy_summary(held, refused), "held_out": per,
            "note": "refitted leave-one-source-model-out on the XSTest sample"}


def read_anchor_file(path: str, where: str) -> list[tuple]:
    from .data.pairs import DataError
    from .data.readers import iter_records

    out = []
    try:
        for ref, rec in iter_records(path):
            missing = [c for c in ("prompt", "response", "label") if c not in rec]
            if missing:
                raise ConfigError(f"{ref}: {where} lacks column(s) {missing}; anchor files have prompt, response, label")
            label = str(rec["label"]).strip().lower()
            if label not in ("0", "1", "true", "false"):
                raise ConfigError(f"{ref}: field 'label' is {rec['label']!r}; use 1 (good for the value) or 0 (bad)")
            out.append((str(rec["prompt"]), str(rec["response"]), label in ("1", "true"), "user"))
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None
    if not out:
        raise ConfigError(f"{path}: {where} holds no labelled items")
    if len({good for _, _, good, _ in out}) < 2:
        raise ConfigError(f"{path}: {where} has only one label; an anchor needs good and bad items")
    return out


def score_anchor(rm, items: list[tuple]) -> dict:
    """AUC of a judge on anchor items (good vs bad); a rate measure (on the user's anchors): the accuracy of its
    behaviour (refusing on harmful, complying on benign) against the good / bad label."""
    prompts, responses = [i[0] for i in items], [i[1] for i in items]
    good = np.array([i[2] for i in items])
    if isinstance(rm, RateMeasure):
        return accuracy_summary(rm.behaviour(prompts, responses), good)
    return auc_summary(rm.score(prompts, responses), good)


def audit_key_of(cfg: RunConfig) -> str:
    """What an audit depends on: every value's measures and anchor, the audit settings, the trained heads."""
    import hashlib

    from .labels import labels_path
    from .rewards import reward_dir, value_bt_head

    labels = labels_path(RunDir.of(cfg))
    parts = [cfg.audit.model_dump(mode="json"), labels.read_text(errors="replace") if labels.is_file() else ""]
    for v in cfg.values:
        parts.append(v.model_dump(mode="json", include={"name", "reward", "audits", "train_judge", "anchor"}))
        head = reward_dir(cfg, v.name) / "head.json" if value_bt_head(cfg, v.name) else None
        parts.append(head.read_text() if head is not None and head.is_file() else "")
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def ensure_audit(cfg: RunConfig) -> dict:
    """RUN/audit.json when it was made for these measures, else a fresh audit (what `mvalign run` does)."""
    done = read_audit(RunDir.of(cfg))
    if done is not None and done.get("key") == audit_key_of(cfg):
        return done
    return audit_config(cfg)


def audit_config(cfg: RunConfig) -> dict:
    """Score every measure (primary, audits, train judge) of every value on its anchors; write RUN/audit.json."""
    from .labels import agreement_with_people

    floor = cfg.audit.floor
    out: dict = {"floor": floor, "key": audit_key_of(cfg), "measures": {}}
    run = RunDir.of(cfg)
    people = agreement_with_people(run) if run.root.is_dir() else {}  # the person's labels of this run's responses
    for v in cfg.values:
        kind = anchor_of(cfg, v.name)
        sets = anchor_items(cfg, kind, v.name)
        roles = [("primary", v.name, v.reward, f"values.{v.name}.reward")]
        roles += [("audit", audit_key(v.name, r), r, f"values.{v.name}.audits[{i}]") for i, r in enumerate(v.audits)]
        tj = v.train_judge
        if tj is not None and tj != v.reward:
            shared = [i for i, (_, _, r, _) in enumerate(roles) if r == tj]
            if shared:  # the judge methods train with is also an audit of the front
                roles[shared[0]] = ("audit, train judge", *roles[shared[0]][1:])
            else:
                roles.append(("train judge", f"{v.name}:train-judge", tj, f"values.{v.name}.train_judge"))
        for role, key, r, field in roles:
            if r is None:
                continue
            entry = {"value": v.name, "role": role, "measure": measure_name(r), "kind": r.kind, "anchors": {}}
            if r.kind == "truthfulqa-mc":
                entry["note"] = "likelihood of TruthfulQA's answers: no judge, no anchor needed"
            else:
                try:
                    rm = build_measure(cfg, v.name, r, field)
                except RewardError as e:
                    raise ConfigError(str(e)) from None
                rate = isinstance(rm, RateMeasure)
                if rate and cfg.audit.xstest:
                    entry["anchors"]["xstest-refusals"] = score_detector(cfg, rm.detector)
                for name, items in sets.items():
                    if not rate or name.startswith("anchors["):
                        entry["anchors"][name] = score_anchor(rm, items)
                if not entry["anchors"]:
                    entry["note"] = (NO_HARMLESS_ANCHOR if kind == "harmless" and cfg.audit.xstest else
                                     "no human-labelled anchor for this value: add one under audit.anchors")
            entry["trusted"] = None if not entry["anchors"] else all(trusted(s, floor) for s in entry["anchors"].values())
            if key in people:
                entry["people"] = people[key]
            out["measures"][key] = entry
    run.root.mkdir(parents=True, exist_ok=True)
    write_atomic(run.audit_path, "the audit", lambda tmp: tmp.write_text(json.dumps(out, indent=1)))
    return out


def read_audit(run: RunDir) -> dict | None:
    """RUN/audit.json, or None when the run has none (or it is unreadable: the report then says so)."""
    try:
        return json.loads(run.audit_path.read_text())
    except (OSError, ValueError):
        return None


def anchor_text(entry: dict) -> str:
    """One cell: each anchor's metric, estimate and interval, and whether the measure is trusted."""
    if not entry["anchors"]:
        return entry.get("note", "—")
    cells = [f"{n}: {s['metric']} {s['estimate']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] (n={s['n']})"
             for n, s in entry["anchors"].items()]
    return "; ".join(cells) + ("" if entry["trusted"] else " — **untrusted**")
