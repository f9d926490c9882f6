"""Run orchestration: the run directory (config, versions, store, adapters) and the steps the CLI calls.

RUN/
  config.yaml          the resolved config the run was made with
  versions.json        package versions, platform, seeds
  store.sqlite         finished value vectors (and, later, evaluated points)
  adapters/<method>/<value>/  PEFT LoRA adapters (safetensors), loadable with PeftModel.from_pretrained
  train/<method>/<value>/     log.jsonl per optimizer step, resumable checkpoint/
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

from .combine import CombinedModel, load_lora_adapter
from .consistency import consistency_for_value, select
from .config import ConfigError, MVAConfig, dump_config, load_config
from .data import load_value_splits
from .models import cache_root, load_model
from .store import RunStore, VectorRecord
from .train.decorrelation import DecorrelationLoss, PenaltySpec
from .train.dpo import dpo_loss
from .train.logprobs import compute_logprobs, reference_logprobs
from .train.lora import add_value_adapter
from .train.tokenize import tokenize_pairs
from .train.trainer import train_dpo

log = logging.getLogger(__name__)
PACKAGES = ("mvalign", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "pydantic")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


EVALUATION_ONLY = ("sweep",)
"""Config sections that change only how a run is evaluated: a run dir accepts new values for them (stored points
are keyed by their settings, so nothing stale is reused)."""


def prepare_run_dir(cfg: MVAConfig) -> Path:
    """Create RUN/, write config.yaml and versions.json; refuse a run dir whose trained artifacts came from a
    different config (sections other than `sweep`)."""
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "config.yaml"
    new = cfg.model_dump(mode="json")
    if cfg_path.is_file():
        # validated, so fields added (with defaults) by a newer mvalign do not count as changes
        old = MVAConfig.model_validate(yaml.safe_load(cfg_path.read_text(encoding="utf-8"))).model_dump(mode="json")
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in EVALUATION_ONLY)
        if changed:
            raise ConfigError(
                f"{run} was made with a different config (differs in: {', '.join(changed)}). "
                "Use a new run_dir, or delete the old run to start over; finished work there is kept until you do."
            )
    dump_config(cfg, cfg_path)
    seeds = {"dpo": cfg.dpo.seed, "split": cfg.split.seed, "per_value": {v.name: value_seed(cfg.dpo.seed, v.name) for v in cfg.values}}
    info = {**package_versions(), "seeds": seeds}
    (run / "versions.json").write_text(json.dumps(info, indent=2))
    return run


def load_run(run_dir: str | Path) -> MVAConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not an mvalign run directory (no config.yaml); train a value vector first")
    return load_config(path)


METHODS = ("dpo", "mva", "vcsoup")
"""dpo: one independent DPO vector per value. mva: values in config order, each later vector trained with the
decorrelation penalty against the earlier (frozen) ones; its first vector is plain DPO (reused from `dpo` if there).
vcsoup: one independent DPO vector per value on its value-consistency-filtered (or -weighted) training pairs."""


def value_seed(seed: int, value: str) -> int:
    """Seed of one value's LoRA init, data order and dropout: sha256(f"{seed}:{value}") mod 2³¹.

    Reproducible from the config seed, and different per value, so two value vectors never share their random
    A-factor initialisation by accident (which would correlate them before any training)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{value}".encode()).digest()[:4], "big") % 2**31


def adapter_dir(run: Path, method: str, value: str) -> Path:
    return run / "adapters" / method / value


def train_method(cfg: MVAConfig, method: str, values: Sequence[str] = (), *, force: bool = False,
                 progress: bool = True) -> list[VectorRecord]:
    """Train the vectors `values` (default: all) of `method`, skipping finished ones.

    For mva the earlier values are trained first (they are what later vectors decorrelate against), and
    `force` retrains the named values and every value after the first of them (later vectors depend on earlier ones).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {METHODS}")
    for v in values:
        cfg.value(v)
    order = [v.name for v in cfg.values]
    if not order:
        raise ConfigError("the config has no values to train")
    wanted = list(values) or order
    if method != "mva":
        return [train_value(cfg, v, method, force=force, progress=progress) for v in wanted]
    last = max(order.index(v) for v in wanted)
    first_forced = min((order.index(v) for v in wanted), default=0) if force else len(order)
    return [train_value(cfg, v, "mva", frozen=order[:k], force=k >= first_forced, progress=progress)
            for k, v in enumerate(order[: last + 1])]


def train_value(cfg: MVAConfig, value: str, method: str = "dpo", *, frozen: Sequence[str] = (), force: bool = False,
                progress: bool = True) -> VectorRecord:
    """Train (or resume, or skip when finished) one value vector; held-out implicit-reward metrics on val.

    `frozen` names earlier vectors of the same method to decorrelate against (mva).
    """
    vcfg = cfg.value(value)
    run = prepare_run_dir(cfg)
    store = RunStore(run)
    out_dir = adapter_dir(run, method, value)
    done = store.get_vector(value, method)
    if done is not None and out_dir.is_dir() and not force:
        log.info("%s vector %r already trained (%s); skipping (use --force to retrain)", method, value, out_dir)
        return done
    plain = store.get_vector(value, "dpo")
    if method == "mva" and not frozen and not force and plain is not None and Path(plain.adapter_dir).is_dir():
        _replace_dir(Path(plain.adapter_dir), out_dir, copy=True)  # mva's first vector is plain DPO: same training
        rec = dataclasses.replace(plain, method=method, adapter_dir=str(out_dir), metrics={**plain.metrics, "reused": "dpo"})
        store.put_vector(rec)
        return rec
    train_dir = run / "train" / method / value
    if force:
        shutil.rmtree(train_dir, ignore_errors=True)

    splits = load_value_splits(vcfg.data, value, cfg.split.seed, cfg.split.train, cfg.split.val)
    train_pairs, pair_weights, kept = splits["train"], None, {}
    if method == "vcsoup":
        c = cfg.consistency
        keep, weights = select(consistency_for_value(cfg, value, train_pairs)["vc"], c.mode, c.tau, c.quantile)
        if not len(keep):
            raise ConfigError(f"consistency filter keeps no {value!r} training pair (mode {c.mode}); lower tau")
        train_pairs = [train_pairs[i] for i in keep]
        pair_weights = torch.tensor(weights, dtype=torch.float32) if c.mode == "soft" else None
        kept = {"consistency_mode": c.mode, "pairs_before_filter": len(splits["train"])}
    frozen_adapters = [load_lora_adapter(adapter_dir(run, method, v), v) for v in frozen]
    cache = cache_root(cfg.cache_dir)
    model, tokenizer = load_model(cfg.model, cache)
    chat = cfg.model.chat_template == "auto"
    d = cfg.dpo
    train_tok = tokenize_pairs(tokenizer, train_pairs, d.max_length, d.max_prompt_length, chat)
    val_tok = tokenize_pairs(tokenizer, splits["val"][: d.eval_pairs], d.max_length, d.max_prompt_length, chat)
    autocast = torch.bfloat16 if d.precision == "bf16" else None
    pad = tokenizer.pad_token_id
    ref_train = reference_logprobs(model, train_tok, pad, cache, d.batch_size * 2, autocast)
    ref_val = reference_logprobs(model, val_tok, pad, cache, d.batch_size * 2, autocast) if val_tok else None

    seed = value_seed(d.seed, value)
    d = d.model_copy(update={"seed": seed})
    peft_model = add_value_adapter(model, cfg.lora, seed)
    extra = None
    if frozen_adapters:
        dc = cfg.decorrelation
        spec = PenaltySpec(kind=dc.penalty, target=dc.target, sigma=dc.sigma, rows=dc.rows)
        extra = DecorrelationLoss(frozen_adapters, spec, dc.alpha, seed=seed)
    result = train_dpo(peft_model, train_tok, *ref_train, d, train_dir, pad, extra_loss=extra, pair_weights=pair_weights,
                       progress=progress)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp, safe_serialization=True)
    _replace_dir(tmp, out_dir)

    metrics: dict[str, float | int | str] = {"train_last_loss": result.last.get("loss", float("nan")), "val_pairs": len(val_tok),
                                             **kept}
    if frozen:
        metrics["decorrelated_against"] = ",".join(frozen)
    if ref_val is not None:
        pol = compute_logprobs(peft_model, val_tok, pad, d.batch_size * 2, autocast, desc="held-out log-probs")
        held = dpo_loss(*pol, *ref_val, d.beta)
        correct = (held.chosen_rewards > held.rejected_rewards).float()
        metrics.update(val_accuracy=held.accuracy.item(), val_margin=held.margin.item(), val_loss=held.loss.item(),
                       val_accuracy_se=(correct.std() / len(correct) ** 0.5).item() if len(correct) > 1 else float("nan"))
    rec = VectorRecord(value, method, str(out_dir), result.steps, result.seconds, result.seconds_per_step,
                       len(train_tok), metrics)
    store.put_vector(rec)
    return rec


def _replace_dir(src: Path, dst: Path, copy: bool = False) -> None:
    """Put `src` at `dst` (replacing it) atomically: copy or move into a sibling, then rename."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        staging = dst.with_name(dst.name + ".copy")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        src = staging
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(src, dst)


def parse_weights(text: str) -> dict[str, float]:
    """'helpful=0.8,harmless=1.2' -> {'helpful': 0.8, 'harmless': 1.2}."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, num = item.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(num)
        except ValueError:
            raise ConfigError(f"--weights: {item!r} is not NAME=NUMBER (e.g. helpful=0.8,harmless=1.2)") from None
    if not out:
        raise ConfigError("--weights is empty; give NAME=NUMBER pairs, e.g. helpful=0.8,harmless=1.2")
    return out


def trained_methods(run_dir: str | Path) -> list[str]:
    root = Path(run_dir) / "adapters"
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def resolve_method(run_dir: str | Path, method: str | None) -> str:
    """The method whose vectors to use: the one given, else the only one trained, else mva when present."""
    have = trained_methods(run_dir)
    if method is not None:
        if method not in have:
            raise ConfigError(f"{run_dir}: no {method!r} value vectors; trained methods: {have}")
        return method
    if len(have) == 1:
        return have[0]
    if "mva" in have:
        return "mva"
    raise ConfigError(f"{run_dir}: trained methods {have}; choose one with --method" if have else
                      f"{run_dir}: no trained value vectors; run `mvalign train` first")


def combine_run(run_dir: str | Path, weights: dict[str, float], out: str | Path, mode: str = "exact",
                method: str | None = None) -> Path:
    """Write the merged HF checkpoint W0 + Σ ω_k ΔW_k of a run's value vectors (of one method) to `out`."""
    cfg = load_run(run_dir)
    method = resolve_method(run_dir, method)
    adapters_root = Path(run_dir) / "adapters" / method
    missing = [v for v in weights if not (adapters_root / v).is_dir()]
    if missing:
        have = sorted(p.name for p in adapters_root.glob("*") if p.is_dir()) if adapters_root.is_dir() else []
        raise ConfigError(f"{run_dir}: no trained value vector for {missing}; trained: {have}. Run `mvalign train` first.")
    adapters = [load_lora_adapter(adapters_root / v, v) for v in weights]
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    combined = CombinedModel(model, adapters, mode)
    combined.set_weights(weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "mvalign_combination.json").write_text(
        json.dumps({"weights": weights, "mode": mode, "method": method, "adapters": [a.path for a in adapters], "base": cfg.model.name}, indent=2)
    )
    return out
