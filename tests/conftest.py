"""Fixtures: tiny random causal LMs (2-layer Llama and GPT-2) with a character-level tokenizer, built in milliseconds."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def make_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    chars = list(dict.fromkeys(string.printable))
    vocab = {t: i for i, t in enumerate(SPECIALS + ["<user>", "<assistant>", "<system>"] + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("<[a-z]+>|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<user>", "<assistant>", "<system>"]})
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    return LlamaForCausalLM(cfg).eval()


def make_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512, pad_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture
def tiny_llama(tokenizer) -> LlamaForCausalLM:
    return make_llama(len(tokenizer))


@pytest.fixture
def tiny_gpt2(tokenizer) -> GPT2LMHeadModel:
    return make_gpt2(len(tokenizer))


@pytest.fixture
def tiny_model_dir(tmp_path, tokenizer, tiny_llama) -> Path:
    """A tiny Llama + tokenizer saved as an ordinary HF directory (what a user's local checkpoint looks like)."""
    out = tmp_path / "tiny-llama"
    tiny_llama.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own reference-log-prob cache, unless it needs the shared embedded-model cache."""
    if "MVALIGN_TEST_KEEP_CACHE" not in os.environ:
        monkeypatch.setenv("MVALIGN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    """One cache folder per test session for the embedded model (converted from GGUF once, about 20 s)."""
    return tmp_path_factory.mktemp("embedded-cache")


def write_builtin_config(folder: Path, model_dir: Path, train_limit: int, **sections) -> Path:
    """A tiny-model run config on the built-in helpful/harmless data with BT reward heads; `sections` add or
    replace top-level blocks (sweep, consistency, ...). Returns the YAML path (run dir: folder/run)."""
    import yaml

    cfg = {
        "model": {"name": str(model_dir)},
        "values": [{"name": v, "data": {"format": "builtin", "limit": train_limit},
                    "reward": {"kind": "bt-head", "data": {"format": "builtin", "part": "reward", "limit": 60}, "epochs": 5}}
                   for v in ("helpful", "harmless")],
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
        "dpo": {"max_steps": 1, "batch_size": 4, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4},
        "run_dir": "run",
        **sections,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared/data beside the repo)")
    return path


def hypervolume_2d(points, ref) -> float:
    """Hypervolume of 2-D maximisation points by sweeping rectangles (independent of moocore)."""
    points = [tuple(p) for p in points]
    nd = [p for p in points if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)]
    area, y_prev = 0.0, ref[1]
    for x, y in sorted(set(nd), key=lambda p: -p[0]):
        if x > ref[0] and y > y_prev:
            area += (x - ref[0]) * (y - y_prev)
            y_prev = y
    return area
