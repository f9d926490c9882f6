"""Export a trade-off: the merged checkpoint W0 + Σ ω_k ΔW_k of a run's value vectors (`mvalign combine`)."""

from __future__ import annotations

import json
from pathlib import Path

from .combine import CombinedModel
from .config import ConfigError
from .lora import load_lora_adapter
from .models import cache_root, load_model
from .rundir import RunDir


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


def resolve_method(run: RunDir, method: str | None) -> str:
    """The method whose vectors to use: the one given, else the only one trained, else mva when present."""
    have = run.trained_methods()
    if method is not None:
        if method not in have:
            raise ConfigError(f"{run.root}: no {method!r} value vectors; trained methods: {have}")
        return method
    if len(have) == 1:
        return have[0]
    if "mva" in have:
        return "mva"
    raise ConfigError(f"{run.root}: trained methods {have}; choose one with --method" if have else
                      f"{run.root}: no trained value vectors; run `mvalign train` first")


def combine_run(run_dir: str | Path, weights: dict[str, float] | str, out: str | Path, mode: str = "exact",
                method: str | None = None) -> Path:
    """Write the merged HF checkpoint W0 + Σ ω_k ΔW_k of a run's value vectors (of one method) to `out`.
    `weights` may be given as text ('helpful=0.8,harmless=1.2')."""
    run = RunDir(run_dir)
    weights = parse_weights(weights) if isinstance(weights, str) else weights
    cfg = run.load_config()
    method = resolve_method(run, method)
    have = run.adapter_names(method)
    missing = [v for v in weights if v not in have]
    if missing:
        raise ConfigError(f"{run_dir}: no trained value vector for {missing}; trained: {have}. Run `mvalign train` first.")
    adapters = [load_lora_adapter(run.adapter(method, v), v) for v in weights]
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    combined = CombinedModel(model, adapters, mode)
    combined.set_weights(weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "mvalign_combination.json").write_text(
        json.dumps({"weights": weights, "mode": mode, "method": method, "adapters": [a.path for a in adapters],
                    "base": cfg.model.name}, indent=2)
    )
    return out
