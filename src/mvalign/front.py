"""The front: one method's evaluated points, their non-dominated selection and hypervolume, and the base model's
scores. `Front` is the type every reader uses; this module is the one place a front is built, written, read (every
older front.json format) and validated.

front-<method>.json (front.json for the primary method), the contract other tools read; `Front.to_json` writes
exactly these keys (tests/test_front.py checks this text against the type):

  values                [value names]: the keys of every per-value mapping below
  reference_point       [one float per value]; reference_point_rule: how it was chosen
  points                [point]: method, weights (ω, or the method's label of the candidate), split ("val" | "test"),
                        rewards (mean per value), ci95 (bootstrap 95% interval per value), pareto (non-dominated on its
                        split), settings_key (finds its record and responses in store.sqlite), scores (per value, per
                        prompt in the order of prompts[split]), vs_base (paired change from the base model per value:
                        mean, ci95, se, detectable, n), flag (only on a degenerate model: never selected or counted),
                        disputed (when any: values whose primary gain an audit contradicts, `mvalign.agreement`). Audit
                        measures '<value>:<measure>' sit beside the values in rewards, ci95, scores and vs_base
  hypervolume           {"val", "test"}: of the non-dominated usable points, against reference_point
  base                  the base model (ω = 0): rewards, ci95, scores, settings_key on test; rewards_val, ci95_val,
                        scores_val, settings_key_val on val
  settings              how the points were made: val_prompts, test_prompts, the generation settings (max_new_tokens,
                        batch_size, do_sample, temperature, top_p, seed, max_prompt_length), candidates, combination,
                        vectors, mixed_batching, backend
  prompts               {"val", "test"}: the prompt texts
  store_method          the store key the points were saved under (`store_key`)
  measured_by           (optional; a front re-read under a second measure) {value: the score key its axis is}; a
                        value measured by an audit '<value>:<measure>' is scored on that audit's own items (e.g.
                        TruthfulQA questions, not the prompts), so its lists have their own length
  racing                (raced evaluations only) candidates, survivors, rounds, token_fraction, first, z, rule,
                        dropped: [{weights, prompts, rewards, scores, responses, vs_base}] on the first `prompts` prompts
  training              adapters, steps, tokens, seconds summed over the adapters the candidates use
  agreement             {value: {audit: {spearman, ci95, points}}} over the val points and the base; and under
                        "signs" the count of points whose paired changes agree / oppose / are unsure per audit

Val points are every candidate (pareto: non-dominated among them); test points the selected ones (pareto among their
test scores). Older formats, read here only: no store_method (derived from settings.vectors and combination), no
prompts, a base without ci95_val (then bootstrapped from scores_val) / scores / settings keys, points without scores /
vs_base / settings_key. Keys this version does not know are kept and written back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from .agreement import dispute_counts, disputed, rank_agreement
from .config import ConfigError
from .frontparts import DroppedPoint, EvalSettings, Racing, Training
from .pareto import bootstrap_ci, default_reference_point, hypervolume, non_dominated
from .shapes import check_front
from .stats import change_vs_base

SPLITS = ("val", "test")
T = TypeVar("T")


def store_key(vectors: str, combination: str) -> str:
    """The store key of a method's points: its vectors' method, + '-factorwise' for the factor-wise reference mode
    (methods evaluating the same vectors the same way share stored points)."""
    return vectors + ("" if combination == "exact" else "-factorwise")


@dataclass
class PerSplit(Generic[T]):
    val: T
    test: T

    def of(self, split: str) -> T:
        return self.test if split == "test" else self.val


@dataclass
class BaseScores:
    """The base model (ω = 0) on one split."""

    rewards: dict[str, float]
    ci95: dict[str, list[float]]
    scores: dict[str, list[float]] = field(default_factory=dict)
    settings_key: str | None = None


@dataclass
class FrontPoint:
    method: str
    weights: dict[str, float]
    """ω for weight combinations, else the method's label of the candidate (preference weight w, seqt stages)."""
    split: str
    rewards: dict[str, float]
    ci95: dict[str, list[float]] | None
    pareto: bool
    settings_key: str | None = None
    scores: dict[str, list[float]] = field(default_factory=dict)
    vs_base: dict[str, dict] = field(default_factory=dict)
    flag: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    disputed: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not self.flag

    def to_json(self) -> dict:
        out = {"method": self.method, "weights": self.weights, "split": self.split, "rewards": self.rewards,
               "ci95": self.ci95, "pareto": self.pareto}
        if self.flag:
            out["flag"] = self.flag
        out["settings_key"] = self.settings_key
        if self.scores:
            out |= {"scores": self.scores, "vs_base": self.vs_base}
        if self.disputed:
            out["disputed"] = self.disputed
        return out | self.extra


@dataclass
class Front:
    values: list[str]
    reference_point: list[float]
    reference_point_rule: str
    points: list[FrontPoint]
    hypervolume: PerSplit[float]
    base: PerSplit[BaseScores]
    store_method: str
    settings: EvalSettings | None = None
    prompts: PerSplit[list[str]] | None = None
    racing: Racing | None = None
    training: Training | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    measured_by: dict[str, str] = field(default_factory=dict)

    # ---- what readers ask of a front
    def on(self, split: str, usable: bool = True) -> list[FrontPoint]:
        """The points evaluated on `split` (without flagged ones when `usable`)."""
        return [p for p in self.points if p.split == split and (p.usable or not usable)]

    def matrix(self, split: str = "test") -> np.ndarray:
        """Mean rewards of the usable points on `split`: one row per point, one column per value."""
        pts = self.on(split)
        return np.array([[p.rewards[v] for v in self.values] for p in pts], float).reshape(len(pts), len(self.values))

    def hv_with(self, reference: Sequence[float], split: str = "test") -> float:
        """The hypervolume of the usable `split` points recomputed with `reference` (e.g. a run's shared one)."""
        m = self.matrix(split)
        return hypervolume(m[non_dominated(m)], reference) if len(m) else 0.0

    def dominates_base(self, split: str = "test") -> list[FrontPoint]:
        """Points whose mean reward beats the base model's in every value (on `split`)."""
        base = self.base.of(split).rewards
        return [p for p in self.on(split, usable=False) if all(p.rewards[v] > base[v] for v in self.values)]

    def item_counts(self) -> tuple[tuple[int, int], ...]:
        """(val items, test items) per value, from the base model's scores: the prompts, unless a value is measured
        on its own items (`measured_by`)."""
        return tuple((len(self.base.val.scores[v]), len(self.base.test.scores[v])) for v in self.values)

    # ---- building
    @classmethod
    def build(cls, values: Sequence[str], method: str, val: Sequence, test: Sequence, base_val, base_test,
              reference: Sequence[float] | None = None, store_method: str | None = None) -> Front:
        """The front of `method` from its store records (`store.PointRecord`): every val candidate, the selected
        ones on test, the base on both. The reference point is the per-value minimum over the base and every usable
        candidate (both splits) unless given. Flagged records are listed but never selected nor measured."""
        values = list(values)

        def mat(points):
            return np.array([[p.rewards[v] for v in values] for p in points], dtype=float).reshape(-1, len(values))

        flagged = [p for p in (*val, *test) if p.flag]
        val, test = [p for p in val if not p.flag], [p for p in test if not p.flag]
        val_m, test_m = mat(val), mat(test)
        ref = np.asarray(reference, float) if reference is not None else default_reference_point(
            val_m, test_m, mat([base_val, base_test]))
        val_mask, test_mask = non_dominated(val_m), non_dominated(test_m)
        bases = {"val": base_val, "test": base_test}

        def point(p, split, pareto) -> FrontPoint:
            b = bases[split]
            paired = (set(values) <= set(p.scores) and set(values) <= set(b.scores)
                      and len(p.scores[values[0]]) == b.n_prompts)
            vs = change_vs_base(p.scores, b.scores, n_boot=1000, seed=0) if paired else {}
            return FrontPoint(method, p.label, split, p.rewards, p.ci95, bool(pareto), p.settings_key,
                              p.scores if paired else {}, vs, disputed=disputed(vs, values))

        points = [point(p, split, m) for split, pts, mask in (("val", val, val_mask), ("test", test, test_mask))
                  for p, m in zip(pts, mask)]
        points += [FrontPoint(method, p.label, p.split, p.rewards, p.ci95, False, p.settings_key, flag=p.flag)
                   for p in flagged]
        front = cls(values, ref.tolist(), "given in config" if reference is not None else
                    "per-value minimum over base and all candidates", points,
                    PerSplit(hypervolume(val_m[val_mask], ref), hypervolume(test_m[test_mask], ref)),
                    PerSplit(*(BaseScores(b.rewards, b.ci95, b.scores, b.settings_key) for b in (base_val, base_test))),
                    store_method or method)
        on_val = [p for p in front.on("val") if p.scores]
        if any(":" in k for p in on_val for k in p.scores):  # audit measures: how they agree with the primaries
            rho = rank_agreement([p.scores for p in on_val] + [base_val.scores], values)
            front.agreement = {**rho, "signs": dispute_counts([p.vs_base for p in on_val], values)}
        return front

    # ---- the file format
    def to_json(self) -> dict:
        b = self.base
        out = {"values": self.values, "reference_point": self.reference_point,
               "reference_point_rule": self.reference_point_rule, "points": [p.to_json() for p in self.points],
               "hypervolume": {"val": self.hypervolume.val, "test": self.hypervolume.test},
               "base": {"rewards": b.test.rewards, "ci95": b.test.ci95, "rewards_val": b.val.rewards,
                        "ci95_val": b.val.ci95, "scores": b.test.scores, "scores_val": b.val.scores,
                        "settings_key": b.test.settings_key, "settings_key_val": b.val.settings_key}}
        if self.settings is not None:
            out["settings"] = self.settings.to_json()
        if self.prompts is not None:
            out["prompts"] = {"val": self.prompts.val, "test": self.prompts.test}
        out["store_method"] = self.store_method
        if self.racing is not None:
            r = self.racing
            out["racing"] = {"candidates": r.candidates, "survivors": r.survivors, "rounds": r.rounds,
                             "token_fraction": r.token_fraction, "first": r.first, "z": r.z, "rule": r.rule,
                             "dropped": [vars(d) for d in r.dropped]}
        if self.training is not None:
            out["training"] = vars(self.training)
        if self.agreement:
            out["agreement"] = self.agreement
        if self.measured_by:
            out["measured_by"] = self.measured_by
        return out | self.extra

    @classmethod
    def from_json(cls, raw: Any, method: str, where: str = "front") -> Front:
        """A front from its JSON (any format mvalign has written); `method`: its file's method (front-<method>),
        for fronts that predate `store_method`. One ConfigError naming `where` and the field when it is not a front."""
        try:
            return _parse(raw, method)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            what = f"missing field {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
            raise ConfigError(f"{where}: not a front mvalign can read ({what}); rewrite it with `mvalign run CONFIG "
                              f"--method {method}` or move it away") from None

    @classmethod
    def read(cls, path: str | Path, method: str) -> Front:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ConfigError(f"{path}: unreadable ({e}); rewrite it with `mvalign run CONFIG --method {method}` or "
                              "move it away") from None
        return cls.from_json(raw, method, str(path))

    def dumps(self) -> str:  # the text of front-<method>.json
        return json.dumps(self.to_json(), indent=1)


_TOP = ("values", "reference_point", "reference_point_rule", "points", "hypervolume", "base", "settings", "prompts",
        "store_method", "racing", "training", "agreement", "measured_by")
_POINT = ("method", "weights", "split", "rewards", "ci95", "pareto", "settings_key", "scores", "vs_base", "flag",
          "disputed")


def _parse(raw: Any, method: str) -> Front:
    if not isinstance(raw, dict) or "points" not in raw or "values" not in raw:
        raise ValueError("not a front (no points / values)")
    check_front(raw)
    values, b, points = list(raw["values"]), raw["base"], []
    for p in raw["points"]:
        points.append(FrontPoint(p.get("method", method), dict(p["weights"]), p["split"], dict(p["rewards"]),
                                 p.get("ci95"), bool(p.get("pareto")), p.get("settings_key"), p.get("scores") or {},
                                 p.get("vs_base") or {}, p.get("flag") or "",
                                 {k: x for k, x in p.items() if k not in _POINT}, list(p.get("disputed") or [])))

    def base(suffix: str) -> BaseScores:
        scores = b.get(f"scores{suffix}") or {}
        ci95 = b.get(f"ci95{suffix}") or {v: list(bootstrap_ci(s, 1000, 0)) for v, s in scores.items()}
        return BaseScores(dict(b[f"rewards{suffix}"]), ci95, scores, b.get(f"settings_key{suffix}"))

    settings = EvalSettings.from_json(raw["settings"]) if isinstance(raw.get("settings"), dict) else None
    if "store_method" in raw:
        stored = raw["store_method"]
    elif settings is not None and settings.vectors:  # fronts written before store_method was recorded
        stored = store_key(settings.vectors, settings.combination)
    else:
        stored = method
    prompts = raw.get("prompts")
    racing = raw.get("racing")
    hv = raw.get("hypervolume") or {}
    return Front(
        values, [float(x) for x in raw["reference_point"]], raw.get("reference_point_rule", ""), points,
        PerSplit(float(hv.get("val", float("nan"))), float(hv.get("test", float("nan")))),
        PerSplit(base("_val"), base("")), stored, settings,
        PerSplit(list(prompts["val"]), list(prompts["test"])) if prompts else None,
        Racing(**{**racing, "dropped": [DroppedPoint(**d) for d in racing.get("dropped", [])]}) if racing else None,
        Training(**raw["training"]) if isinstance(raw.get("training"), dict) else None,
        {k: x for k, x in raw.items() if k not in _TOP}, dict(raw.get("agreement") or {}),
        dict(raw.get("measured_by") or {}))

