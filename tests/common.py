"""Helpers shared by the tests (no test module imports another): tiny random causal LMs (2-layer Llama and GPT-2)
with a character-level tokenizer, toy preference pairs, builtin-data configs, independent references (float64
merged weights, unpadded log-probs, 2-D hypervolume)."""

from __future__ import annotations

import copy
import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import load_file as load_numpy
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mvalign.data.pairs import PreferencePair

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


LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TOPICS = ["tea", "maps", "rain", "bread", "knots", "stars", "bikes", "clay"]
TOY = [PreferencePair(f"Tell me about {t}.", f"Gladly! {t.title()} are great.", "No.") for t in TOPICS]
TOY += [PreferencePair(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                        {"role": "user", "content": "Greet me."}), "Good morning!", "Go away.")]


def naive_response_logprob(model, prompt_ids, response_ids):
    """Independent reference: one unpadded sequence, full log_softmax, a Python loop over response tokens."""
    ids = torch.tensor([list(prompt_ids) + list(response_ids)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(logp[len(prompt_ids) + j - 1, t].item() for j, t in enumerate(response_ids))


def save_random_adapter(base, path, seed, r=4, alpha=8.0, targets=LLAMA_TARGETS, **kw):
    """A PEFT adapter with random A *and* B (so ΔW != 0), saved in PEFT format."""
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                           init_lora_weights=False, **kw))
    model.save_pretrained(path)
    return path


def expected_weights(base, adapter_dirs, weights):
    """Independent reference in float64 numpy: W0 + Σ ω_k (alpha_k / r_k) B_k A_k, read from the raw files."""
    out = {n: p.detach().double().numpy().copy() for n, p in base.named_parameters()}
    for path, w in zip(adapter_dirs, weights, strict=True):
        cfg = json.loads((path / "adapter_config.json").read_text())
        tensors = load_numpy(str(path / "adapter_model.safetensors"))
        for key, a in tensors.items():
            if "lora_A" not in key:
                continue
            b = tensors[key.replace("lora_A", "lora_B")].astype(np.float64)
            delta = w * cfg["lora_alpha"] / cfg["r"] * (b @ a.astype(np.float64))
            module = key.removeprefix("base_model.model.").split(".lora_A")[0]
            if cfg.get("fan_in_fan_out"):
                delta = delta.T
            out[module + ".weight"] += delta
    return out


def assert_weights(model, expected, atol=1e-6):
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.detach().double().numpy(), expected[name], atol=atol, rtol=0, err_msg=name)


def open_page(browser, url: str):
    """A page of the session's headless Chromium at `url`, once the explorer has drawn; (page, console errors)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#status[data-drawn]")
    return page, errors


def drawn(page, trace_name: str | None = None) -> int:
    """Markers actually drawn in the explorer's SVG (of the traces whose legend name ends with `trace_name`)."""
    if trace_name is None:
        return page.locator(".scatterlayer path.point").count()
    names = page.evaluate("() => document.getElementById('plot').data.map(t => t.name)")
    traces = page.locator(".scatterlayer .trace")
    return sum(traces.nth(i).locator("path.point").count() for i, n in enumerate(names) if n.endswith(trace_name))
