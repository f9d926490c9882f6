"""The typed front (mvalign.front): built from records against direct computations, its JSON documented once (the
module docstring, checked here against what `to_json` writes), every older format read, bad files refused."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import mvalign.front as front_module
from common import hypervolume_2d
from mvalign.config import ConfigError
from mvalign.front import DroppedPoint, EvalSettings, Front, PerSplit, Racing, Training
from mvalign.pareto import bootstrap_ci
from mvalign.store import PointRecord

VALUES = ["a", "b"]


def record(split, weights, scores, flag=""):
    return PointRecord("m", weights, split, f"{split}-key", {v: float(np.mean(s)) for v, s in scores.items()},
                       {v: [float(min(s)), float(max(s))] for v, s in scores.items()}, len(scores["a"]), 0.0, 0.0, {},
                       [], flag=flag, scores={v: [float(x) for x in s] for v, s in scores.items()})


def synthetic(seed=0) -> tuple[Front, list, list, dict]:
    rng = np.random.default_rng(seed)
    base = {s: record(s, {"a": 0.0, "b": 0.0}, {v: rng.normal(0, 1, 8) for v in VALUES}) for s in ("val", "test")}
    val = [record("val", {"a": w, "b": 1 - w}, {"a": w + rng.normal(0, 0.3, 8), "b": 1 - w + rng.normal(0, 0.3, 8)})
           for w in np.linspace(0, 1, 6)]
    val.append(record("val", {"a": 9e30, "b": 0.0}, {"a": [np.nan] * 8, "b": [-50.0] * 8}, flag="non-finite weights"))
    test = [record("test", dict(p.label), {"a": rng.normal(p.label["a"], 0.3, 8), "b": rng.normal(p.label["b"], 0.3, 8)})
            for p in val[:3]]
    return Front.build(VALUES, "m", val, test, base["val"], base["test"]), val, test, base


def test_build_against_direct_computations():
    front, val, test, base = synthetic()
    usable = [p for p in val if not p.flag]
    pts = [tuple(p.rewards[v] for v in VALUES) for p in usable]
    dominated = [any(all(q[i] >= x[i] for i in range(2)) and q != x for q in pts) for x in pts]
    assert [p.pareto for p in front.on("val")] == [not d for d in dominated]
    ref = np.min([*pts, *[tuple(p.rewards[v] for v in VALUES) for p in test],
                  *[tuple(b.rewards[v] for v in VALUES) for b in base.values()]], axis=0)
    assert front.reference_point == pytest.approx(ref.tolist())
    assert front.hypervolume.val == pytest.approx(hypervolume_2d(pts, ref))
    assert front.hypervolume.test == pytest.approx(hypervolume_2d([tuple(p.rewards[v] for v in VALUES) for p in test], ref))
    flagged = [p for p in front.points if p.flag]
    assert len(flagged) == 1 and not flagged[0].pareto and flagged[0] not in front.on("val")
    for p, rec in zip(front.on("test"), test):
        for v in VALUES:
            assert p.vs_base[v]["mean"] == pytest.approx(np.mean(np.subtract(rec.scores[v], base["test"].scores[v])))


def full_front() -> Front:
    front, *_ = synthetic()
    front.settings = EvalSettings(6, 3, {"max_new_tokens": 4, "seed": 0}, "grid", "exact", "dpo",
                                  {"rows_per_pass": 8, "points_per_pass": 2}, {"kind": "local"})
    front.prompts = PerSplit([f"v{i}" for i in range(8)], [f"t{i}" for i in range(8)])
    front.racing = Racing(6, 5, [{"prompts": [0, 4], "evaluated": 6, "left": 5}], 0.9, 4, 2.5, "rule",
                          [DroppedPoint({"a": 0.0, "b": 1.0}, 4, {"a": 0.1, "b": 0.2}, {"a": [0.1], "b": [0.2]}, ["x"])])
    front.training = Training(2, 10, 100.0, 3.0)
    front.agreement = {"a": {"a:rate": {"spearman": 0.5, "ci95": [0.1, 0.9], "points": 6}},
                       "signs": {"a": {"a:rate": {"same": 1, "opposite": 0, "unsure": 5}}}}
    front.points[0].disputed = ["a"]
    front.measured_by = {"a": "a", "b": "b"}
    return front


def documented(section: str) -> set[str]:
    """The key names the module docstring lists for `section` (its paragraph in the key table)."""
    doc = front_module.__doc__
    block = re.search(rf"^  {section} +(.*?)(?=^  \w|\Z)", doc, re.S | re.M).group(1)
    return set(re.findall(r"\b([a-z_0-9]+)\b", block))


def test_the_documented_schema_is_what_to_json_writes():
    data = full_front().to_json()
    listed = set(re.findall(r"^  ([a-z_]+) ", front_module.__doc__, re.M))
    assert listed == set(data) - {"reference_point_rule"} and "reference_point_rule" in documented("reference_point")
    point = next(p for p in data["points"] if "scores" in p) | {"flag": "", "disputed": ["a"]}
    assert set(point) <= documented("points")
    assert set(data["base"]) <= documented("base")
    assert set(data["settings"]) <= documented("settings")
    assert set(data["racing"]) | set(data["racing"]["dropped"][0]) <= documented("racing")
    assert set(data["training"]) <= documented("training")
    assert set(data["hypervolume"]) <= documented("hypervolume")
    assert {"spearman", "ci95", "points", "signs"} <= documented("agreement")


def test_json_round_trip_is_exact_and_keeps_unknown_keys():
    data = full_front().to_json()
    data["added_by_another_tool"] = {"x": 1}
    data["points"][0]["note"] = "kept"
    text = json.dumps(data, indent=1)
    again = Front.from_json(json.loads(text), "m")
    assert again.dumps() == text
    assert again.racing.dropped[0].prompts == 4 and again.training.steps == 10 and again.settings.vectors == "dpo"


def test_older_formats_are_read_in_one_place():
    """A front as an early version wrote it: no store_method, prompts, base ci95_val / scores / settings keys, and
    points without scores or settings keys; the factor-wise mode's store key comes from its settings."""
    old = {"values": VALUES, "reference_point": [0.0, 0.0],
           "points": [{"method": "dpo", "weights": {"a": 1.0, "b": 0.0}, "split": "val", "rewards": {"a": 1.0, "b": 0.2},
                       "ci95": {"a": [0.9, 1.1], "b": [0.1, 0.3]}, "pareto": True}],
           "hypervolume": {"val": 0.2, "test": 0.0},
           "base": {"rewards": {"a": 0.0, "b": 0.0}, "ci95": {"a": [0, 0], "b": [0, 0]}, "rewards_val": {"a": 0.1, "b": 0.1},
                    "scores_val": {"a": [0.0, 0.2, 0.1], "b": [0.1, 0.1, 0.1]}},
           "settings": {"val_prompts": 3, "test_prompts": 2, "max_new_tokens": 8, "vectors": "dpo",
                        "combination": "factorwise"}}
    front = Front.from_json(old, "soup-factorwise")
    assert front.store_method == "dpo-factorwise" and front.prompts is None and front.racing is None
    assert front.base.val.ci95["a"] == list(bootstrap_ci([0.0, 0.2, 0.1], 1000, 0))
    assert front.base.test.settings_key is None and front.points[0].scores == {} and front.points[0].settings_key is None
    assert front.settings.generation == {"max_new_tokens": 8}
    del old["settings"]
    assert Front.from_json(old, "soup").store_method == "soup"


@pytest.mark.parametrize("damage, field", [
    (lambda d: d["points"][1]["rewards"].pop("b"), "points[1].rewards lacks ['b']"),
    (lambda d: d["points"][0].update(split="train"), "points[0].split is 'train'"),
    (lambda d: d.pop("base"), "missing field 'base'"),
    (lambda d: d.update(values=[]), "values is empty"),
    (lambda d: d.update(points="nope"), "not a front mvalign can read"),
])
def test_a_damaged_front_is_one_error_naming_the_file_and_field(tmp_path, damage, field):
    data = full_front().to_json()
    damage(data)
    path = tmp_path / "front-m.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as e:
        Front.read(path, "m")
    assert str(e.value).startswith(f"{path}: ") and field in str(e.value) and len(str(e.value).splitlines()) == 1
    path.write_text('{"values": ["a"], "points": [')
    with pytest.raises(ConfigError, match="unreadable"):
        Front.read(path, "m")
