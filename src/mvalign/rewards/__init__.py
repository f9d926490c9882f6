"""Reward models, one per value: HF sequence classifiers, BT heads on a frozen encoder, Python callables."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, RunConfig
from ..judging import judge_quality
from ..rundir import RunDir
from .base import CallableReward, RewardError, RewardModel, ScoreCache, prompt_text

__all__ = [
    "run_judges",
    "CallableReward",
    "RewardError",
    "RewardModel",
    "ScoreCache",
    "load_reward_models",
    "prompt_text",
    "judge_accuracy",
    "reward_dir",
    "train_reward",
    "train_rewards",
]


def reward_dir(cfg: RunConfig, value: str) -> Path:
    v = cfg.value(value)
    if v.reward and v.reward.kind == "bt-head" and v.reward.path:
        return Path(v.reward.path)
    return RunDir.of(cfg).reward(value)


def import_function(spec: str | None, field: str):
    """The callable named 'package.module:function'."""
    import importlib

    if not spec:
        raise ConfigError(f"{field}: a callable judge needs `function: package.module:function`")
    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{field}: cannot import {spec!r} ({type(e).__name__}: {e}); is its package installed?") from None
    if not callable(fn):
        raise ConfigError(f"{field}: {spec!r} is not callable")
    return fn


def reward_device(cfg: RunConfig, value: str) -> str:
    """Where `value`'s reward model runs: its reward.device, else model.device."""
    r = cfg.value(value).reward
    return (r.device if r is not None and r.device else None) or cfg.model.device


def train_reward(cfg: RunConfig, value: str, force: bool = False) -> dict:
    """Train the BT reward head of `value` on its reward data (train split), with held-out accuracy on val."""
    import json

    from ..data import load_value_splits
    from .bt_head import train_bt_head

    v = cfg.value(value)
    if v.reward is None or v.reward.kind != "bt-head":
        raise ConfigError(f"values.{value}.reward: training needs `kind: bt-head`")
    if v.reward.data is None:
        raise ConfigError(f"values.{value}.reward.data: give the preference data to train the head on "
                          "(disjoint from the DPO data)")
    out = reward_dir(cfg, value)
    if (out / "head.json").is_file() and not force:
        try:
            return json.loads((out / "head.json").read_text())
        except (OSError, ValueError) as e:
            raise RewardError(f"{out / 'head.json'}: unreadable ({e}); retrain with `mvalign reward train CONFIG "
                              f"--value {value} --force`") from None
    splits = load_value_splits(v.reward.data, value, cfg.split.seed, cfg.split.train, cfg.split.val)
    return train_bt_head(splits["train"], splits["val"], out, value=value, encoder=v.reward.encoder,
                         epochs=v.reward.epochs, seed=cfg.training.seed, device=reward_device(cfg, value))


def load_reward_models(cfg: RunConfig, train_missing: bool = True) -> dict[str, RewardModel]:
    """One reward model per value, in config order; untrained BT heads are trained first when `train_missing`."""
    from .bt_head import BTHeadReward
    from .hf import HFRewardModel

    out: dict[str, RewardModel] = {}
    for v in cfg.values:
        r = v.reward
        if r is None:
            raise ConfigError(f"values.{v.name}.reward is not set: every value needs a reward model for evaluation")
        if r.kind == "callable":
            out[v.name] = CallableReward(import_function(r.function, f"values.{v.name}.reward.function"), v.name,
                                         r.version, r.cost)
            continue
        if r.kind == "hf":
            if not r.path:
                raise ConfigError(f"values.{v.name}.reward.path: name the reward model (local folder or hub name)")
            out[v.name] = HFRewardModel(r.path, v.name, r.cost, trust_remote_code=cfg.model.trust_remote_code,
                                        device=reward_device(cfg, v.name))
            continue
        folder = reward_dir(cfg, v.name)
        if not (folder / "head.json").is_file():
            if not train_missing:
                raise ConfigError(f"{folder}: reward head for {v.name!r} not trained; run `mvalign reward train`")
            train_reward(cfg, v.name)
        out[v.name] = BTHeadReward(folder, v.name, r.cost, device=reward_device(cfg, v.name))
    return out


def judge_accuracy(cfg: RunConfig) -> list[dict]:
    """`mvalign reward eval`: pair accuracy of every value's reward model on every value's held-out (val) DPO
    pairs, one row per dataset. The diagonal says how well each judge agrees with its own value's labels, the rest
    how the values relate."""
    import numpy as np

    from ..data import value_splits

    models = load_reward_models(cfg)
    rows = []
    for v in cfg.values:
        pairs = value_splits(cfg, v.name)["val"]
        prompts = [p.prompt for p in pairs]
        row = {"data": v.name, "pairs": len(pairs)}
        for name, rm in models.items():
            row[name] = float(
                np.mean(rm.score(prompts, [p.chosen for p in pairs]) > rm.score(prompts, [p.rejected for p in pairs]))
            )
        rows.append(row)
    return rows


def train_rewards(cfg: RunConfig, values: list[str] | tuple[str, ...] = (), force: bool = False) -> list[dict]:
    """`mvalign reward train`: train the BT heads of `values` (default: every value whose reward is a bt-head)."""
    names = list(values) or [v.name for v in cfg.values if v.reward and v.reward.kind == "bt-head"]
    return [train_reward(cfg, name, force=force) for name in names]


def run_judges(run: RunDir, values) -> dict[str, dict | None]:
    """Each value's judge quality (mvalign.judging) from its trained head, where the run has one."""
    folders = {v: run.reward(v) for v in values}
    try:
        cfg = run.load_config()
        folders = {v: reward_dir(cfg, v) for v in values}
    except Exception:  # noqa: BLE001 - a report from fronts alone still lists the judges it can find
        pass
    return {v: judge_quality(folder) for v, folder in folders.items()}
