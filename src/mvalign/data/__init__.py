"""Data layer: preference pairs from generic tables, HH-RLHF, PKU-SafeRLHF and TruthfulQA, validated and split."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

from ..config import ConfigError, DataSourceConfig, RunConfig
from .builtin import builtin_pairs
from .generic import collect_generic
from .hh_rlhf import collect_hh
from .pairs import DataError, PairCollector, PreferencePair, Prompt, RowRef, Split, split_of, split_pairs
from .pku import collect_pku
from .readers import iter_hub_records, iter_records
from .truthfulqa import collect_truthfulqa

__all__ = ["DataError", "PreferencePair", "Split", "eval_prompts", "load_pairs", "load_value_splits", "split_of",
           "split_pairs", "value_splits"]


def _records(cfg: DataSourceConfig) -> Iterator[tuple[RowRef, dict[str, Any]]]:
    if cfg.hub_name:
        return iter_hub_records(cfg.hub_name, cfg.hub_split)
    return itertools.chain.from_iterable(iter_records(p) for p in cfg.path)


def load_pairs(cfg: DataSourceConfig, value: str) -> list[PreferencePair]:
    """All valid pairs of one data source for value `value` (cfg.value overrides the name), in source order."""
    label = cfg.value or value
    source = cfg.hub_name or ", ".join(cfg.path) or "builtin"
    collector = PairCollector(source, cfg.on_invalid)
    if cfg.format == "builtin":
        try:
            pairs = builtin_pairs(label, cfg.part)
        except ValueError as e:
            raise DataError(f"builtin data: {e}; set data.value") from None
    elif cfg.format == "generic":
        pairs = collect_generic(_records(cfg), cfg.columns, collector)
    elif cfg.format == "hh-rlhf":
        pairs = collect_hh(_records(cfg), collector, cfg.single_turn_only)
    elif cfg.format == "pku-saferlhf":
        pairs = collect_pku(_records(cfg), label, collector)
    else:
        if len(cfg.path) != 1:
            raise DataError("truthfulqa: `path` must be exactly one folder holding finetune_truth.jsonl and finetune_info.jsonl")
        pairs = collect_truthfulqa(cfg.path[0], label, collector)
    if cfg.rows is not None:
        pairs = pairs[cfg.rows[0] : cfg.rows[1]]
        if not pairs:
            raise DataError(f"{source}: `rows: {list(cfg.rows)}` selects no pairs (the source has fewer valid pairs)")
    return pairs if cfg.limit is None else pairs[: cfg.limit]


def load_value_splits(
    cfg: DataSourceConfig, value: str, seed: int, train: float, val: float
) -> dict[Split, list[PreferencePair]]:
    """load_pairs, then the deterministic prompt-grouped split. `limit` applies to the training split."""
    full = DataSourceConfig.model_validate({**cfg.model_dump(), "limit": None})
    splits = split_pairs(load_pairs(full, value), seed=seed, train=train, val=val)
    if cfg.limit is not None:
        splits["train"] = splits["train"][: cfg.limit]
    if not splits["train"]:
        raise DataError(f"value {value!r}: the training split is empty; use more data or a larger split.train")
    return splits


def value_splits(cfg: RunConfig, value: str) -> dict[Split, list[PreferencePair]]:
    """{"train", "val", "test"} preference pairs of one value of a run config (its data, the run's split)."""
    return load_value_splits(cfg.value(value).data, value, cfg.split.seed, cfg.split.train, cfg.split.val)


def eval_prompts(cfg: RunConfig, split: Split, n: int) -> list[Prompt]:
    """Held-out prompts: the union of every value's `split` prompts (deduplicated), shuffled by the sweep seed, first n."""
    seen: dict[str, Prompt] = {}
    for v in cfg.values:
        for p in value_splits(cfg, v.name)[split]:
            seen.setdefault(p.prompt_key, p.prompt)
    keys = sorted(seen)
    random.Random(cfg.sweep.seed).shuffle(keys)
    if not keys:
        raise ConfigError(f"no {split} prompts: enlarge split.{split}")
    return [seen[k] for k in keys[:n]]


def split_counts(cfg: RunConfig) -> dict[str, dict[str, int]]:
    """`mvalign data`: load every value's data (validating it) and count pairs per split."""
    return {v.name: {k: len(p) for k, p in value_splits(cfg, v.name).items()} for v in cfg.values}
