"""Reward models, one per value: HF sequence classifiers, BT heads on a frozen encoder, Python callables."""

from __future__ import annotations

from pathlib import Path

from ..config import ConfigError, RunConfig
from ..judging import judge_quality
from ..rundir import RunDir
from .base import CallableReward, RewardError, RewardModel, ScoreCache, prompt_text

__all__ = [
    "audit_key",
    "build_measure",
    "judges_coincide",
    "load_audits",
    "load_train_judges",
    "measure_name",
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


def measure_name(r) -> str:
    """A measure's name in fronts and reports: its `name`, else one derived from its kind."""
    if r.name:
        return r.name
    if r.kind == "rate":
        loops = "" if r.max_repetition is None else "-loopfree"
        return f"{'refusal' if r.on == 'harmful' else 'compliance'}-{r.detector}{loops}"
    return f"truthfulqa-{r.metric}" if r.kind == "truthfulqa-mc" else r.kind


def value_bt_head(cfg: RunConfig, value: str):
    """The value's BT head config trained into RUN/rewards/<value> (its reward, train judge or an audit without
    `path`); None when it has none. Two different such heads in one value are a ConfigError."""
    v = cfg.value(value)
    heads = [r for r in (v.reward, v.train_judge, *v.audits) if r is not None and r.kind == "bt-head"]
    local = [r for r in heads if not r.path]
    if len({r.model_dump_json(exclude={"name", "device"}) for r in local}) > 1:
        raise ConfigError(f"values.{value}: two different bt-head measures without `path` would share "
                          f"RUN/rewards/{value}; give one of them `path:`")
    return local[0] if local else (heads[0] if heads else None)


def reward_dir(cfg: RunConfig, value: str, r=None) -> Path:
    r = r if r is not None else value_bt_head(cfg, value)
    if r is not None and r.kind == "bt-head" and r.path:
        return Path(r.path)
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


def reward_device(cfg: RunConfig, value: str, r=None) -> str:
    """Where a measure of `value` runs: its device, else model.device."""
    r = r if r is not None else cfg.value(value).reward
    return (r.device if r is not None and r.device else None) or cfg.model.device


def train_reward(cfg: RunConfig, value: str, force: bool = False) -> dict:
    """Train the BT reward head of `value` on its reward data (train split), with held-out accuracy on val."""
    import json

    from ..data import load_value_splits
    from .bt_head import train_bt_head

    r = value_bt_head(cfg, value)
    if r is None:
        raise ConfigError(f"values.{value}.reward: training needs `kind: bt-head`")
    if r.data is None:
        raise ConfigError(f"values.{value}.reward.data: give the preference data to train the head on "
                          "(disjoint from the DPO data)")
    out = reward_dir(cfg, value)
    if (out / "head.json").is_file() and not force:
        try:
            return json.loads((out / "head.json").read_text())
        except (OSError, ValueError) as e:
            raise RewardError(f"{out / 'head.json'}: unreadable ({e}); retrain with `mvalign reward train CONFIG "
                              f"--value {value} --force`") from None
    splits = load_value_splits(r.data, value, cfg.split.seed, cfg.split.train, cfg.split.val)
    return train_bt_head(splits["train"], splits["val"], out, value=value, encoder=r.encoder,
                         epochs=r.epochs, seed=cfg.training.seed, device=reward_device(cfg, value))


def build_measure(cfg: RunConfig, value: str, r, field: str, train_missing: bool = True) -> RewardModel:
    """The reward model (response judge or rate measure) of one measure config `r` of `value` (`field` names it in
    errors); untrained BT heads are trained first when `train_missing`."""
    from .bt_head import BTHeadReward
    from .hf import HFRewardModel

    if r.kind == "callable":
        return CallableReward(import_function(r.function, f"{field}.function"), value, r.version, r.cost)
    if r.kind == "hf":
        if not r.path:
            raise ConfigError(f"{field}.path: name the reward model (local folder or hub name)")
        return HFRewardModel(r.path, value, r.cost, trust_remote_code=cfg.model.trust_remote_code,
                             device=reward_device(cfg, value, r))
    if r.kind == "rate":
        from .detectors import get_detector
        from .rate import RateMeasure, data_labels, read_labels

        if r.labels:
            labels = read_labels(r.labels, f"{field}.labels")
        else:
            from ..data import value_splits

            labels = {}
            for other in cfg.values:  # only the built-in data carries prompt categories: others are not loaded
                if other.data.format == "builtin":
                    for pairs in value_splits(cfg, other.name).values():
                        labels.update(data_labels(pairs))
            if not labels:
                raise ConfigError(f"{field}: a rate needs prompts labelled harmful/benign, and this config's data "
                                  "carries none; give `labels:` (a file with prompt and label columns)")
        return RateMeasure(value, get_detector(r.detector, reward_device(cfg, value, r)), r.on, labels, field,
                           r.max_repetition)
    if r.kind == "truthfulqa-mc":
        raise ConfigError(f"{field}: truthfulqa-mc scores the model, not responses; declare it under `audits:`")
    folder = reward_dir(cfg, value, r)
    if not (folder / "head.json").is_file():
        if not train_missing:
            raise ConfigError(f"{folder}: reward head for {value!r} not trained; run `mvalign reward train`")
        train_reward(cfg, value)
    return BTHeadReward(folder, value, r.cost, device=reward_device(cfg, value, r))


def load_reward_models(cfg: RunConfig, train_missing: bool = True) -> dict[str, RewardModel]:
    """The primary measure of every value (its `reward`: the front's axes), in config order."""
    out: dict[str, RewardModel] = {}
    for v in cfg.values:
        if v.reward is None:
            raise ConfigError(f"values.{v.name}.reward is not set: every value needs a reward model for evaluation")
        out[v.name] = build_measure(cfg, v.name, v.reward, f"values.{v.name}.reward", train_missing)
    return out


def audit_key(value: str, r) -> str:
    """How an audit measure's scores are keyed in points and fronts: '<value>:<measure name>'."""
    return f"{value}:{measure_name(r)}"


def load_audits(cfg: RunConfig) -> dict[str, RewardModel]:
    """Every value's response-scored audit measures (judges and rates), keyed by `audit_key`; likelihood audits
    (truthfulqa-mc) are `mvalign.likelihood`'s."""
    out: dict[str, RewardModel] = {}
    for v in cfg.values:
        for i, r in enumerate(v.audits):
            key = audit_key(v.name, r)
            if key in out or measure_name(r) == v.name:
                raise ConfigError(f"values.{v.name}.audits[{i}]: the name {measure_name(r)!r} is used twice; give `name:`")
            if r.kind != "truthfulqa-mc":
                out[key] = build_measure(cfg, v.name, r, f"values.{v.name}.audits[{i}]")
    return out


def load_train_judges(cfg: RunConfig) -> dict[str, RewardModel]:
    """The judges methods train with (VC-soup consistency, MODPO margins, RiC tags): each value's `train_judge`,
    else its `reward`. Rates score behaviour on labelled prompts, not preference pairs, so they cannot be one."""
    out: dict[str, RewardModel] = {}
    for v in cfg.values:
        r = v.train_judge or v.reward
        field = f"values.{v.name}.{'train_judge' if v.train_judge else 'reward'}"
        if r is None:
            raise ConfigError(f"values.{v.name}.reward is not set: this method scores training pairs with a judge")
        if r.kind in ("rate", "truthfulqa-mc"):
            raise ConfigError(f"{field}: a {r.kind} measure cannot score training pairs; give `values.{v.name}."
                              "train_judge:` (a bt-head, hf or callable judge)")
        out[v.name] = build_measure(cfg, v.name, r, field)
    return out


def judges_coincide(cfg: RunConfig) -> dict[str, bool]:
    """Per value: is the judge methods train with also the judge of the front's axis?"""
    return {v.name: (v.train_judge is None or v.train_judge == v.reward) for v in cfg.values}


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
    names = list(values) or [v.name for v in cfg.values if value_bt_head(cfg, v.name) is not None]
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
