"""Where the work runs: one device for the base model and one per reward model, and the dtype of the base weights.

`model.device` (and `values.<v>.reward.device`, default: the model's):

- `auto`: `cuda` when torch sees a CUDA device, else `mps` (Apple), else `cpu`. Under a multi-process launch
  (`accelerate launch`, `torchrun`: LOCAL_RANK set) each process takes `cuda:<LOCAL_RANK>`, and `accelerate launch
  --cpu` (ACCELERATE_USE_CPU) means `cpu`.
- explicit: `cpu`, `cuda`, `cuda:N`, `mps`. Asking for a device torch cannot see is one clear error, never a silent
  fall back to the CPU.

`model.dtype: auto` holds the base weights in bfloat16 on a CUDA device that supports it and in float32 everywhere
else (the CPU behaviour of earlier versions). Training, the reference log-probs, MODPO's margins, the sweep (merged
or mixed-ω), export and every reward model run where these functions say; `place` is the one way a stage moves a
module there, so a test can see which device each stage asked for.
"""

from __future__ import annotations

import os
import re

import torch

from .errors import MvalignError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(MvalignError, RuntimeError):
    """A configured device that this machine's torch cannot use."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: str = "auto", field: str = "model.device") -> torch.device:
    """The torch device named by a `device` setting (see the module docstring); `field` names it in errors."""
    if not DEVICE_PATTERN.match(spec):
        raise DeviceError(f"{field}: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        if _truthy("ACCELERATE_USE_CPU"):
            return torch.device("cpu")
        if torch.cuda.is_available():
            rank = os.environ.get("LOCAL_RANK")
            return torch.device(f"cuda:{int(rank) % torch.cuda.device_count()}" if rank else "cuda:0")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{field} is {spec!r} but torch {torch.__version__} sees no CUDA device (a CPU-only "
                              "build, or no GPU / driver here); use auto or cpu")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{field} is {spec!r} but torch sees {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0 … cuda:{torch.cuda.device_count() - 1}); pick one of those or use auto")
        return torch.device("cuda", index)
    if device.type == "mps" and not mps_available():
        raise DeviceError(f"{field} is 'mps' but this torch has no usable MPS backend; use auto or cpu")
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`model.dtype`: explicit names as they say; auto = bfloat16 on a CUDA device that supports it, else float32."""
    if spec != "auto":
        return DTYPES[spec]
    if device.type == "cuda" and native_bf16(device):
        return torch.bfloat16
    return torch.float32


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matrix products natively: a CUDA device that supports bf16, or a CPU whose
    oneDNN has a bf16 path (x86 with AVX-512, aarch64 with BF16). Elsewhere (AVX2-only x86, MPS) bf16 is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def resolve_precision(spec: str, device: torch.device) -> str:
    """`training.precision`: fp32 / bf16 as they say; auto = bf16 autocast where `native_bf16(device)`, else fp32
    (bf16 autocast on an AVX2-only CPU measured 33x slower per DPO step than fp32: bench/perf/cpu_precision.py)."""
    if spec != "auto":
        return spec
    return "bf16" if native_bf16(device) else "fp32"


def autocast_dtype(spec: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `training.precision` on `device` (None: no autocast)."""
    return torch.bfloat16 if resolve_precision(spec, device) == "bf16" else None


def place(module: torch.nn.Module, device: torch.device, stage: str) -> torch.nn.Module:
    """Move `module` to `device` for `stage` (e.g. 'base model', 'reward encoder'). The only place a stage moves a
    model, so tests can record every stage's device."""
    return module.to(device)


def accelerator_kwargs(device: torch.device) -> dict:
    """Arguments that make an `accelerate.Accelerator` train on `device`: the CPU, or a CUDA device selected as the
    current one (accelerate's single-process device is the current CUDA device; a multi-process launch gives each
    process cuda:<LOCAL_RANK>, which `resolve_device` already returns)."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return {"cpu": device.type == "cpu"}


def process_state(spec: str = "auto"):
    """accelerate's process state for `model.device`: one process, or every process of a multi-process launch
    (`torchrun` / `accelerate launch --multi_gpu`), over gloo on CPUs and nccl on GPUs. Must be the first process
    state made in a process: accelerate keeps one per process."""
    from accelerate import PartialState

    return PartialState(cpu=resolve_device(spec).type == "cpu")
