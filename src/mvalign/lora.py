"""LoRA value vectors as data: their factors, reading PEFT adapter folders, checking them against a base model, and
attaching a fresh trainable adapter. `combine`, `train/decorrelation`, `diagnose` and the method recipes all read
adapters through this module.

Per target module, ΔW = s · B A with A: r × d_in, B: d_out × r and s = lora_alpha / r (lora_alpha / √r with
rsLoRA); transposed when the base stores W as (in, out) (GPT-2's Conv1D, `fan_in_fan_out`).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.pytorch_utils import Conv1D

from .config import ConfigError, LoraSettings
from .errors import MvalignError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class AdapterError(MvalignError, ValueError):
    """An adapter that cannot be used (missing files, wrong type, modules the base lacks, shape mismatch)."""


@dataclass
class LoraFactors:
    """One target module of one adapter: ΔW = scale · B @ A (transposed when the base stores W as (in, out))."""

    A: torch.Tensor  # r x d_in
    B: torch.Tensor  # d_out x r
    scale: float
    fan_in_fan_out: bool = False


@dataclass
class LoraAdapter:
    name: str
    path: str
    modules: dict[str, LoraFactors]
    """Keyed by the base model's module name, e.g. 'model.layers.0.self_attn.q_proj'."""


def load_lora_adapter(path: str | Path, name: str | None = None) -> LoraAdapter:
    """Read a PEFT LoRA adapter directory into per-module factors (safetensors only; no pickles).

    scale s = lora_alpha / r (or lora_alpha / sqrt(r) with use_rslora), honouring rank_pattern / alpha_pattern.
    """
    path = Path(path)
    cfg_file, weights_file = path / ADAPTER_CONFIG, path / ADAPTER_WEIGHTS
    if not cfg_file.is_file() or not weights_file.is_file():
        raise AdapterError(f"{path}: not a PEFT adapter directory (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{cfg_file}: not valid JSON ({e}); restore or retrain this adapter") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("r"), int) or cfg["r"] < 1 \
            or not isinstance(cfg.get("lora_alpha"), (int, float)):
        raise AdapterError(f"{cfg_file}: needs an integer r >= 1 and a number lora_alpha; restore or retrain it")
    if cfg.get("peft_type") != "LORA":
        raise AdapterError(f"{path}: peft_type is {cfg.get('peft_type')!r}; only LORA adapters can be combined")
    if cfg.get("use_dora"):
        raise AdapterError(f"{path}: DoRA adapters are not linear in their factors; exact ΔW combination does not apply")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{path}: bias={cfg['bias']!r} trains bias terms too, which ΔW = s·B·A does not cover; "
                           "retrain with bias='none'")
    if cfg.get("modules_to_save"):
        raise AdapterError(f"{path}: modules_to_save {cfg['modules_to_save']} are fully trained copies, not LoRA "
                           "factors; they cannot be combined or exported exactly")
    try:
        tensors = load_file(str(weights_file))
    except Exception as e:  # safetensors raises its own error type for truncated / corrupt files
        raise AdapterError(f"{weights_file}: unreadable ({type(e).__name__}: {e}); restore or retrain this adapter") from None
    other = sorted(k for k in tensors if ".lora_A." not in k and ".lora_B." not in k)
    if other:
        raise AdapterError(f"{path}: tensors that are not lora_A/lora_B factors (e.g. {other[0]}: embedding LoRA, "
                           "DoRA magnitudes or trained modules); only linear LoRA can be combined exactly")
    modules: dict[str, LoraFactors] = {}
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in tensors:
            raise AdapterError(f"{path}: {key} has no matching lora_B tensor")
        short = module.rsplit(".", 1)[-1]
        r = _pattern(cfg.get("rank_pattern") or {}, module, short, cfg["r"])
        alpha = _pattern(cfg.get("alpha_pattern") or {}, module, short, cfg["lora_alpha"])
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        for k in (key, b_key):
            if not torch.isfinite(tensors[k]).all():
                raise AdapterError(f"{path}: {k} holds NaN or infinite values; retrain this adapter")
        modules[module] = LoraFactors(a, tensors[b_key], float(scale), bool(cfg.get("fan_in_fan_out")))
    if not modules:
        raise AdapterError(f"{path}: no lora_A/lora_B tensors found")
    return LoraAdapter(name or path.name, str(path), modules)


def _pattern(pattern: Mapping[str, float], module: str, short: str, default: float) -> float:
    for key, value in pattern.items():
        if module == key or module.endswith("." + key) or short == key:
            return value
    return default


def orient(delta: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    """ΔW in the layout the base weight uses ((in, out) for Conv1D)."""
    return delta.T if fan_in_fan_out else delta


def adapter_targets(model: torch.nn.Module, adapters: Sequence[LoraAdapter]) -> dict[str, torch.nn.Parameter]:
    """The base weights the adapters update, keyed by module name, after checking that every adapter module exists
    in `model` and that its ΔW has the weight's shape (one clear error naming the adapter and module otherwise)."""
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise AdapterError(f"adapter names must be unique, got {names}")
    named = dict(model.named_modules())
    targets: dict[str, torch.nn.Parameter] = {}
    for m in sorted(set().union(*(a.modules for a in adapters))):
        if m not in named or not hasattr(named[m], "weight"):
            raise AdapterError(f"adapter module {m!r} does not exist in the base model: adapters from another model?")
        weight = named[m].weight
        for a in adapters:
            if m in a.modules:
                f = a.modules[m]
                shape = (f.B.shape[0], f.A.shape[1])
                if tuple(orient(torch.empty(shape, device="meta"), f.fan_in_fan_out).shape) != tuple(weight.shape):
                    raise AdapterError(
                        f"adapter {a.name!r} ({a.path}) module {m}: ΔW shape {shape} does not fit weight {tuple(weight.shape)}"
                    )
        targets[m] = weight
    return targets


def linear_module_suffixes(model: torch.nn.Module) -> list[str]:
    """Distinct last name parts of the linear (and GPT-2 Conv1D) modules: what `target_modules` may name."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))})


def add_value_adapter(model: torch.nn.Module, lora: LoraSettings, seed: int):
    """Wrap `model` with one LoRA adapter ("default"), initialised from `seed` (A random, B = 0, so ΔW = 0 at start).

    Only the adapter's parameters are trainable.
    """
    from peft import LoraConfig, get_peft_model

    available = linear_module_suffixes(model)
    unknown = [t for t in lora.target_modules if t not in available]
    if unknown:
        raise ConfigError(f"lora.target_modules: {unknown} are not linear modules of this model; choose from {available}")
    conv1d = any(
        isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in lora.target_modules for n, m in model.named_modules()
    )
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        fan_in_fan_out=conv1d,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return get_peft_model(model, config)


def trainable_lora_factors(model: torch.nn.Module, adapter: str = "default") -> dict[str, LoraFactors]:
    """Live (differentiable) factors of a PEFT model's adapter, keyed by base-model module name."""
    out = {}
    for name, module in model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if isinstance(lora_A, torch.nn.ModuleDict) and adapter in lora_A:
            base = name.removeprefix("module.").removeprefix("base_model.model.")  # DDP-wrapped, PEFT-wrapped
            out[base] = LoraFactors(lora_A[adapter].weight, module.lora_B[adapter].weight, float(module.scaling[adapter]))
    return out


@contextlib.contextmanager
def attached(model: torch.nn.Module, path: str | Path):
    """`model` with a saved PEFT adapter active (eval, not trainable) inside the block; the plain base again after.

    peft injects the adapter's layers into `model` in place and `unload()` puts the original modules back, so the
    base weights are never modified (nothing is merged)."""
    from peft import PeftModel

    if not (Path(path) / ADAPTER_WEIGHTS).is_file():  # peft would fall back to unpickling adapter_model.bin
        raise AdapterError(f"{path}: no {ADAPTER_WEIGHTS} (mvalign reads adapters from safetensors only); retrain it "
                           "with --force or convert it")
    peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    try:
        yield peft_model
    finally:
        peft_model.unload()
