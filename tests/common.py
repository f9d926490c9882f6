"""Helpers shared by the tests (no test module imports another): tiny random causal LMs (2-layer Llama and GPT-2)
with a character-level tokenizer and builtin-data configs (from `mvalign.testing`, which the benchmarks use too), toy
preference pairs, independent references (float64 merged weights, unpadded log-probs, 2-D hypervolume)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import load_file as load_numpy

from mvalign.data.pairs import PreferencePair
from mvalign.testing import CHAT_TEMPLATE, make_gpt2, make_llama, make_tokenizer, write_builtin_config  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
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


def answering_config(folder: Path, model_dir: Path, val_prompts: int, test_prompts: int, split: dict,
                     bootstrap: int = 100):
    """A loaded tiny-model config (grid ω ∈ {0.5, 2}², no racing) trained hard enough (lr 0.05, 3 steps) that
    combinations answer differently from the base model; its run dir is folder/run."""
    from mvalign.config import load_config

    sweep = {"grid": [0.5, 2.0], "val_prompts": val_prompts, "test_prompts": test_prompts, "max_new_tokens": 6,
             "bootstrap": bootstrap, "racing": "off"}
    path = write_builtin_config(folder, model_dir, 8, sweep=sweep, cache_dir=str(folder / "cache"), split=split,
                                dpo={"max_steps": 3, "lr": 0.05, "batch_size": 4, "max_length": 96,
                                     "max_prompt_length": 64, "eval_pairs": 4})
    cfg = load_config(path)
    cfg.run_dir = str(folder / "run")
    return cfg
