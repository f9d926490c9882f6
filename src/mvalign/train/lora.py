"""Attach a fresh LoRA adapter (a value vector) to a base model."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from ..config import ConfigError, LoraSettings


def linear_module_suffixes(model: torch.nn.Module) -> list[str]:
    """Distinct last name parts of the linear (and GPT-2 Conv1D) modules: what `target_modules` may name."""
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))})


def add_value_adapter(model: torch.nn.Module, lora: LoraSettings, seed: int) -> PeftModel:
    """Wrap `model` with one LoRA adapter ("default"), initialised from `seed` (A random, B = 0, so ΔW = 0 at start).

    Only the adapter's parameters are trainable.
    """
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
