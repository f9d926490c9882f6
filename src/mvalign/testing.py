"""Tiny random causal LMs (a 2-layer Llama and GPT-2, 32 wide) with a character-level tokenizer and chat template,
and a tiny-model run config on the built-in data: what the tests and the reliability benchmark run the real
pipeline on, in seconds, on a CPU."""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    import torch

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    return LlamaForCausalLM(cfg).eval()


def make_gpt2(vocab_size: int, seed: int = 0) -> GPT2LMHeadModel:
    import torch

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512, pad_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


def write_builtin_config(folder: Path, model_dir: Path, train_limit: int, **sections) -> Path:
    """A tiny-model run config on the built-in helpful/harmless data with BT reward heads, probes and anchors off;
    `sections` add or replace top-level blocks (sweep, consistency, audit, ...). Returns the YAML path (run dir: folder/run)."""
    import yaml

    cfg = {
        "model": {"name": str(model_dir)},
        "values": [{"name": v, "data": {"format": "builtin", "limit": train_limit},
                    "reward": {"kind": "bt-head", "data": {"format": "builtin", "part": "reward", "limit": 60}, "epochs": 5}}
                   for v in ("helpful", "harmless")],
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
        "dpo": {"max_steps": 1, "batch_size": 4, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4},
        "run_dir": "run",
        # tiny BT heads trained for seconds do not pass the contract probes (mvalign.probes), and the tests of the
        # plumbing do not need human anchors: a test of either turns them on
        "audit": {"probes": False, "xstest": None, "truthfulqa": None},
        **sections,
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
