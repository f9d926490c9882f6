"""The shape of the run's JSON artefacts, checked before they are read: a front-<method>.json (`mvalign.front`) and
the store's point and adapter rows (`mvalign.store`). A hand-edited or damaged one is one ValueError naming the field
(`points[3].ci95['helpful']`), never a record whose readers fail later.

A front: values (non-empty list of names), reference_point (one finite number per value), points (split val|test;
weights: finite numbers; rewards: a finite number per value unless the point is flagged; ci95: [low, high] numbers;
scores: lists of numbers, one per prompt for the values; flag, method, settings_key: text; disputed: names), base
(rewards, ci95 and scores of both splits in the same forms), hypervolume (numbers), prompts (lists per split).
A store row: the same forms for its weights, rewards, ci95 and scores (one per prompt for the values; an audit of the
model itself, '<value>:<measure>', has its own items), n_prompts and step counts integers, times numbers, texts text.
"""

from __future__ import annotations

import math
from typing import Any

SPLITS = ("val", "test")


def number(x: Any, where: str, finite: bool = True) -> None:
    if isinstance(x, bool) or not isinstance(x, int | float) or (finite and not math.isfinite(x)):
        raise ValueError(f"{where} is {x!r}, not a {'finite ' if finite else ''}number")


def mapping(x: Any, where: str) -> dict:
    if not isinstance(x, dict):
        raise ValueError(f"{where} is {type(x).__name__}, not a mapping")
    return x


def list_(x: Any, where: str) -> list:
    if not isinstance(x, list):
        raise ValueError(f"{where} is {type(x).__name__}, not a list")
    return x


def text(x: Any, where: str, optional: bool = False) -> None:
    if not (isinstance(x, str) or (optional and x is None)):
        raise ValueError(f"{where} is {x!r}, not text")


def intervals(ci: Any, where: str) -> None:
    for k, pair in mapping(ci, where).items():
        if len(list_(pair, f"{where}[{k!r}]")) != 2:
            raise ValueError(f"{where}[{k!r}] must be [low, high]")
        for x in pair:
            number(x, f"{where}[{k!r}]", finite=False)


def scores(scores: Any, where: str, values: list[str], n: int | dict[str, int] | None) -> None:
    """`n`: the count every value's list must have, or one count per value (a front with a value measured on its own
    items, e.g. TruthfulQA questions instead of the prompts), or None when unknown."""
    for k, s in mapping(scores, where).items():
        want = n.get(k) if isinstance(n, dict) else n
        if len(list_(s, f"{where}[{k!r}]")) != want and k in values and want is not None:
            raise ValueError(f"{where}[{k!r}] must list one score per prompt ({want})")
        for x in s:
            number(x, f"{where}[{k!r}]", finite=False)


def means(rewards: Any, where: str, values: list[str], finite: bool) -> None:
    rewards = mapping(rewards, where)
    missing = [v for v in values if v not in rewards]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    for k, x in rewards.items():
        number(x, f"{where}[{k!r}]", finite=finite and k in values)


def check_front_point(p: Any, where: str, values: list[str], n: dict[str, int] | None) -> None:
    """ValueError naming the field unless a front point is well formed (`n`: its split's item count per value, from
    the base, if known)."""
    p = mapping(p, where)
    if p.get("split") not in SPLITS:
        raise ValueError(f"{where}.split is {p.get('split')!r}, not val or test")
    for k, w in mapping(p.get("weights"), f"{where}.weights").items():
        number(w, f"{where}.weights[{k!r}]")
    flag = p.get("flag") or ""
    text(flag, f"{where}.flag")
    means(p.get("rewards"), f"{where}.rewards", values, finite=not flag)
    if p.get("ci95") is not None:
        intervals(p["ci95"], f"{where}.ci95")
    scores(p.get("scores") or {}, f"{where}.scores", values, n)
    mapping(p.get("vs_base") or {}, f"{where}.vs_base")
    text(p.get("method", ""), f"{where}.method")
    text(p.get("settings_key"), f"{where}.settings_key", optional=True)
    for v in list_(p.get("disputed") or [], f"{where}.disputed"):
        text(v, f"{where}.disputed")


def check_front(raw: Any) -> None:
    """ValueError naming the field unless `raw` (a decoded front-<method>.json) has a front's shape."""
    raw = mapping(raw, "the file")
    values = list_(raw.get("values"), "values")
    if not values:
        raise ValueError("values is empty")
    for v in values:
        text(v, "values[]")
    ref = list_(raw.get("reference_point"), "reference_point")
    if len(ref) != len(values):
        raise ValueError(f"reference_point has {len(ref)} numbers for {len(values)} values")
    for x in ref:
        number(x, "reference_point[]")
    for k, x in mapping(raw.get("hypervolume") or {}, "hypervolume").items():
        number(x, f"hypervolume[{k!r}]", finite=False)
    if "base" not in raw:
        raise ValueError("missing field 'base'")
    base = mapping(raw["base"], "base")
    own = mapping(raw.get("measured_by") or {}, "measured_by")
    for k, x in own.items():
        text(x, f"measured_by[{k!r}]")
    counts = {}
    for split, suffix in (("val", "_val"), ("test", "")):
        if f"rewards{suffix}" in base or split == "test":
            means(base.get(f"rewards{suffix}"), f"base.rewards{suffix}", values, finite=True)
        if base.get(f"ci95{suffix}") is not None:
            intervals(base[f"ci95{suffix}"], f"base.ci95{suffix}")
        per_prompt = mapping(base.get(f"scores{suffix}") or {}, f"base.scores{suffix}")
        # the values share the prompts, except one measured by an audit on its own items (measured_by)
        shared = [v for v in values if v in per_prompt and ":" not in str(own.get(v, v))]
        n = len(list_(per_prompt[shared[0]], f"base.scores{suffix}")) if shared else None
        counts[split] = {v: len(list_(per_prompt[v], f"base.scores{suffix}[{v!r}]"))
                         if v in per_prompt and v not in shared else n for v in values}
        scores(per_prompt, f"base.scores{suffix}", values, counts[split])
    for i, p in enumerate(list_(raw.get("points"), "points")):
        check_front_point(p, f"points[{i}]", values, counts.get(p.get("split")) if isinstance(p, dict) else None)
    prompts = raw.get("prompts")
    if prompts is not None:
        for split in SPLITS:
            list_(mapping(prompts, "prompts").get(split), f"prompts.{split}")


def check_store_point(row: dict) -> None:
    """ValueError naming the column unless a decoded `points` row is well formed (see `RunStore._point`)."""
    for k in ("method", "split", "settings_key"):
        text(row[k], k)
    flag = row.get("flag") or ""
    text(flag, "flag")
    for k, w in mapping(row["weights"], "weights").items():
        number(w, f"weights[{k!r}]")
    n = row["n_prompts"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n_prompts is {n!r}, not a count")
    for k in ("seconds_generate", "seconds_score"):
        number(row[k], k, finite=False)
    mapping(row["generation"], "generation")
    for r in list_(row["responses"], "responses"):
        text(r, "responses[]")
    for k, x in mapping(row["rewards"], "rewards").items():
        number(x, f"rewards[{k!r}]", finite=not flag)
    intervals(row["ci95"], "ci95")
    values = [k for k in mapping(row["scores"], "scores") if ":" not in k]
    scores(row["scores"], "scores", values, n)


def check_vector(row: dict) -> None:
    """ValueError naming the column unless a decoded `vectors` row is well formed (see `RunStore.get_vector`)."""
    for k in ("steps", "train_pairs"):
        if isinstance(row[k], bool) or not isinstance(row[k], int) or row[k] < 0:
            raise ValueError(f"{k} is {row[k]!r}, not a count")
    for k in ("seconds", "seconds_per_step", "created"):
        number(row[k], k)
    mapping(row["metrics"], "metrics")
