"""Export a trade-off W0 + Σ ω_k ΔW_k of a run's value vectors (`mvalign combine`, `mvalign pick --export`).

Formats:
  merged  a full Hugging Face checkpoint with the combination merged into the weights (`AutoModelForCausalLM`);
  peft    ONE LoRA adapter of rank Σ r_k per module with B = [ω_1 s_1 B_1 | ... | ω_n s_n B_n], A = [A_1; ...; A_n]
          and scale 1 (`combine.stacked_factors`): exact, for any real ω, and loadable with
          `PeftModel.from_pretrained(base, DIR)` / `AutoPeftModelForCausalLM.from_pretrained(DIR)`; small, and one
          server can hold several such adapters for several trade-offs. Adapters that are not plain linear LoRA
          (bias, modules_to_save, embedding LoRA, DoRA) are refused when read (`lora.load_lora_adapter`).
Every export writes a model card (`card.py`: README.md) and mvalign_combination.json. The destination must be a
new or empty folder unless `overwrite`; the run directory and the base model's own folder, a folder holding either or
the cache, and a symbolic link are always refused. The export folder gets the mode the umask gives new folders.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from safetensors.torch import save_file

from .card import export_card
from .combine import CombinedModel, stacked_factors
from .config import ConfigError, RunConfig
from .lora import ADAPTER_WEIGHTS, LoraFactors, load_lora_adapter
from .models import cache_root, load_model, resolve_model_source
from .rundir import RunDir
from .store import AdapterRef

FORMATS = ("merged", "peft")


def parse_weights(text: str, values: list[str] | None = None) -> dict[str, float]:
    """'helpful=0.8,harmless=1.2' -> {'helpful': 0.8, 'harmless': 1.2}; names must be distinct (and among `values`
    when given)."""
    out: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, num = item.partition("=")
        name = name.strip()
        try:
            if not sep or not name:
                raise ValueError
            w = float(num)
        except ValueError:
            raise ConfigError(f"--weights: {item!r} is not NAME=NUMBER (e.g. helpful=0.8,harmless=1.2)") from None
        if not math.isfinite(w):
            raise ConfigError(f"--weights: {item!r}: the weight of {name!r} must be a finite number")
        if name in out:
            raise ConfigError(f"--weights: {name!r} is given twice")
        if values is not None and name not in values:
            raise ConfigError(f"--weights: {name!r} is not a value of this run; values: {values}")
        out[name] = w
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


def check_destination(out: Path, run: RunDir, cfg: RunConfig, overwrite: bool) -> None:
    """Refuse a file, the run directory (or a folder inside it), the base model's folder, and a non-empty folder
    unless `overwrite`."""
    if out.is_symlink():
        raise ConfigError(f"--out {out}: is a symbolic link; give a real folder (writes never follow a link)")
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder")
    root = run.root.resolve()
    if out == root or root in out.parents:
        raise ConfigError(f"--out {out}: inside the run directory {root}; export elsewhere")
    source, _ = resolve_model_source(cfg.model.name, cache_root(cfg.cache_dir))
    base = Path(source).expanduser()
    if base.exists() and out == base.resolve():
        raise ConfigError(f"--out {out}: is the base model's own folder; export elsewhere")
    kept = {"the run directory": root, "the base model": base.resolve() if base.exists() else None,
            "the cache": cache_root(cfg.cache_dir).resolve()}
    for what, path in kept.items():  # --overwrite replaces `out` whole: it must not hold any of these
        if path is not None and (out == path or out in path.parents):
            raise ConfigError(f"--out {out}: holds {what} ({path}); export to a folder of its own")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out}: not empty; choose a new folder or pass --overwrite")


def write_peft_adapter(factors: dict[str, LoraFactors], out: Path, base_model: str) -> None:
    """Save per-module factors (scale 1) as a PEFT LoRA folder: r / lora_alpha = the most common rank, other
    modules' ranks in rank_pattern / alpha_pattern, so every module's scale lora_alpha / r is 1."""
    from peft import LoraConfig

    if not factors:
        raise ConfigError("every weight is 0: that is the base model itself; nothing to export as an adapter")
    ranks = {m: int(f.A.shape[0]) for m, f in factors.items()}
    r0 = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {m: r for m, r in ranks.items() if r != r0}
    config = LoraConfig(r=r0, lora_alpha=r0, rank_pattern=pattern, alpha_pattern=dict(pattern),
                        target_modules=sorted(factors), fan_in_fan_out=next(iter(factors.values())).fan_in_fan_out,
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model)
    tensors = {}
    for m, f in factors.items():
        tensors[f"base_model.model.{m}.lora_A.weight"] = f.A
        tensors[f"base_model.model.{m}.lora_B.weight"] = f.B
    save_file(tensors, str(out / ADAPTER_WEIGHTS))
    config.save_pretrained(str(out))


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload an export folder to the Hugging Face Hub (model repo `repo_id`, created if missing); returns its URL.
    Offline (HF_HUB_OFFLINE=1) or on a network / auth failure: a ConfigError saying the export stays on disk."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"--push-to-hub {repo_id}: the Hub is offline here (HF_HUB_OFFLINE=1); the export is kept at "
                          f"{folder}; push it later with `huggingface-cli upload {repo_id} {folder}`")
    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return str(api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="mvalign export"))
    except Exception as e:  # network, auth, permissions: the export itself is finished and kept
        raise ConfigError(f"--push-to-hub {repo_id}: {type(e).__name__}: {e}; the export is kept at {folder}") from None


def combine_run(run_dir: str | Path, weights: dict[str, float] | str, out: str | Path, mode: str = "exact",
                method: str | None = None, fmt: str = "merged", overwrite: bool = False, command: str = "",
                hub_repo: str | None = None) -> Path:
    """Export W0 + Σ ω_k ΔW_k of a run's value vectors (of one method) to `out` in format `fmt` (see the module
    docstring), with a model card. `weights` may be given as text ('helpful=0.8,harmless=1.2')."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "peft" and mode != "exact":
        raise ConfigError("--format peft is the exact combination; factor-wise soups export only as --format merged")
    run = RunDir(run_dir)
    cfg = run.load_config()
    values = [v.name for v in cfg.values]
    weights = parse_weights(weights, values) if isinstance(weights, str) else dict(weights)
    method = resolve_method(run, method)
    have = run.adapter_names(method)
    missing = [v for v in weights if v not in have]
    if missing:
        raise ConfigError(f"{run_dir}: no trained value vector for {missing}; trained: {have}. Run `mvalign train` first.")
    out = Path(out)
    check_destination(out, run, cfg, overwrite)
    adapters = [load_lora_adapter(run.adapter(AdapterRef(method, v)), v) for v in weights]
    source, _ = resolve_model_source(cfg.model.name, cache_root(cfg.cache_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        if fmt == "merged":
            model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
            CombinedModel(model, adapters, mode).set_weights(weights)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        else:
            write_peft_adapter(stacked_factors(adapters, list(weights.values())), tmp, source)
        info = {"weights": weights, "mode": mode, "method": method, "format": fmt,
                "adapters": [a.path for a in adapters], "base": cfg.model.name, "base_path": source}
        (tmp / "mvalign_combination.json").write_text(json.dumps(info, indent=2))
        (tmp / "README.md").write_text(export_card(run, cfg, info, command))
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp makes it 0700; the export gets the mode any new folder gets here
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if hub_repo:
        push_to_hub(out, hub_repo)
    return out
