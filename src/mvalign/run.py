"""Run orchestration: the run directory (config, versions, store, adapters) and the steps the CLI calls.

RUN/
  config.yaml          the resolved config the run was made with
  versions.json        package versions, platform, seeds
  store.sqlite         finished value vectors (and, later, evaluated points)
  adapters/<value>/    PEFT LoRA adapters (safetensors), loadable with PeftModel.from_pretrained
  train/<value>/       log.jsonl per optimizer step, resumable checkpoint/
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import yaml

from .combine import CombinedModel, load_lora_adapter
from .config import ConfigError, MVAConfig, dump_config, load_config
from .data import load_value_splits
from .models import cache_root, load_model
from .store import RunStore, VectorRecord
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


def prepare_run_dir(cfg: MVAConfig) -> Path:
    """Create RUN/, write config.yaml and versions.json; refuse a run dir made with a different config."""
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "config.yaml"
    if cfg_path.is_file():
        old = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        new = cfg.model_dump(mode="json")
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise ConfigError(
                f"{run} was made with a different config (differs in: {', '.join(changed)}). "
                "Use a new run_dir, or delete the old run to start over; finished work there is kept until you do."
            )
    else:
        dump_config(cfg, cfg_path)
    info = {**package_versions(), "seeds": {"dpo": cfg.dpo.seed, "split": cfg.split.seed}}
    (run / "versions.json").write_text(json.dumps(info, indent=2))
    return run


def load_run(run_dir: str | Path) -> MVAConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not an mvalign run directory (no config.yaml); train a value vector first")
    return load_config(path)


def train_value(cfg: MVAConfig, value: str, *, force: bool = False, progress: bool = True) -> VectorRecord:
    """Train (or resume, or skip when finished) the plain-DPO value vector of `value`; held-out metrics on val."""
    vcfg = cfg.value(value)
    run = prepare_run_dir(cfg)
    store = RunStore(run)
    adapter_dir = run / "adapters" / value
    done = store.get_vector(value, "dpo")
    if done is not None and adapter_dir.is_dir() and not force:
        log.info("value vector %r already trained (%s); skipping (use --force to retrain)", value, adapter_dir)
        return done
    train_dir = run / "train" / value
    if force:
        shutil.rmtree(train_dir, ignore_errors=True)

    splits = load_value_splits(vcfg.data, value, cfg.split.seed, cfg.split.train, cfg.split.val)
    cache = cache_root(cfg.cache_dir)
    model, tokenizer = load_model(cfg.model, cache)
    chat = cfg.model.chat_template == "auto"
    d = cfg.dpo
    train_tok = tokenize_pairs(tokenizer, splits["train"], d.max_length, d.max_prompt_length, chat)
    val_tok = tokenize_pairs(tokenizer, splits["val"][: d.eval_pairs], d.max_length, d.max_prompt_length, chat)
    autocast = torch.bfloat16 if d.precision == "bf16" else None
    pad = tokenizer.pad_token_id
    ref_train = reference_logprobs(model, train_tok, pad, cache, d.batch_size * 2, autocast)
    ref_val = reference_logprobs(model, val_tok, pad, cache, d.batch_size * 2, autocast) if val_tok else None

    peft_model = add_value_adapter(model, cfg.lora, d.seed)
    result = train_dpo(peft_model, train_tok, *ref_train, d, train_dir, pad, progress=progress)

    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp, safe_serialization=True)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    os.replace(tmp, adapter_dir)

    metrics: dict[str, float | int] = {"train_last_loss": result.last.get("loss", float("nan")), "val_pairs": len(val_tok)}
    if ref_val is not None:
        pol = compute_logprobs(peft_model, val_tok, pad, d.batch_size * 2, autocast, desc="held-out log-probs")
        held = dpo_loss(*pol, *ref_val, d.beta)
        metrics.update(val_accuracy=held.accuracy.item(), val_margin=held.margin.item(), val_loss=held.loss.item())
    rec = VectorRecord(value, "dpo", str(adapter_dir), result.steps, result.seconds, result.seconds_per_step,
                       len(train_tok), metrics)
    store.put_vector(rec)
    return rec


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


def combine_run(run_dir: str | Path, weights: dict[str, float], out: str | Path, mode: str = "exact") -> Path:
    """Write the merged HF checkpoint W0 + Σ ω_k ΔW_k of a run's value vectors to `out`."""
    cfg = load_run(run_dir)
    adapters_root = Path(run_dir) / "adapters"
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
        json.dumps({"weights": weights, "mode": mode, "adapters": [a.path for a in adapters], "base": cfg.model.name}, indent=2)
    )
    return out
