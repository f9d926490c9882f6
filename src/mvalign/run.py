"""Run orchestration: the run directory (config, versions, store, adapters) and the steps the CLI calls.

RUN/
  config.yaml          the resolved config the run was made with
  versions.json        package versions, platform, seeds
  store.sqlite         finished value vectors (and, later, evaluated points)
  adapters/<method>/<value>/  PEFT LoRA adapters (safetensors), loadable with PeftModel.from_pretrained
  train/<method>/<value>/     log.jsonl per optimizer step, resumable checkpoint/
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from .combine import CombinedModel, load_lora_adapter
from .config import ConfigError, MVAConfig, dump_config, load_config
from .models import cache_root, load_model
from .store import RunStore

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

SECTION_USERS = {"baselines": ("lw", "modpo"), "consistency": ("vcsoup",), "decorrelation": ("mva", "mva-orth")}
"""Config sections that only some methods' training reads: a run dir accepts a change to one of them while it holds
no adapter, checkpoint, vector or evaluated point of those methods (which the change would make stale), so a
baseline or an MVA setting can be added or tuned next to finished dpo vectors without retraining them."""


def _artifacts_of(run: Path, methods: tuple[str, ...]) -> list[str]:
    """Methods among `methods` with anything trained or evaluated in `run`."""
    store = RunStore(run) if (run / "store.sqlite").is_file() else None
    return [m for m in methods if (run / "adapters" / m).exists() or (run / "train" / m).exists()
            or (store is not None and (store.vectors(m) or store.points(m)))]


def prepare_run_dir(cfg: MVAConfig) -> Path:
    """Create RUN/, write config.yaml and versions.json; refuse a run dir whose trained artifacts came from a
    different config (any section but `sweep`, and the SECTION_USERS sections while their methods have artifacts)."""
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg_path = run / "config.yaml"
    new = cfg.model_dump(mode="json")
    if cfg_path.is_file():
        # validated, so fields added (with defaults) by a newer mvalign do not count as changes
        old = MVAConfig.model_validate(yaml.safe_load(cfg_path.read_text(encoding="utf-8"))).model_dump(mode="json")
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in EVALUATION_ONLY)
        blocking = []
        for k in changed:
            made = _artifacts_of(run, SECTION_USERS[k]) if k in SECTION_USERS else None
            if made is None:
                blocking.append(k)
            elif made:
                blocking.append(f"{k} (read by the {', '.join(made)} artifacts already there)")
        if blocking:
            raise ConfigError(
                f"{run} was made with a different config (differs in: {', '.join(blocking)}). "
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


def value_seed(seed: int, value: str) -> int:
    """Seed of one value's LoRA init, data order and dropout: sha256(f"{seed}:{value}") mod 2³¹.

    Reproducible from the config seed, and different per value, so two value vectors never share their random
    A-factor initialisation by accident (which would correlate them before any training)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{value}".encode()).digest()[:4], "big") % 2**31


def adapter_dir(run: Path, method: str, value: str) -> Path:
    return run / "adapters" / method / value


def replace_dir(src: Path, dst: Path, copy: bool = False) -> None:
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
