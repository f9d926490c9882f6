"""Fixtures. The tiny models and tokenizer are built once per session; a test gets its own copy of the model."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from transformers import GPT2LMHeadModel, LlamaForCausalLM, PreTrainedTokenizerFast

from common import make_gpt2, make_llama, make_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


@pytest.fixture(scope="session")
def _llama_once(tokenizer) -> LlamaForCausalLM:
    return make_llama(len(tokenizer))


@pytest.fixture
def tiny_llama(_llama_once) -> LlamaForCausalLM:
    """A private copy of the session's tiny Llama (tests may attach adapters to it)."""
    return copy.deepcopy(_llama_once)


@pytest.fixture(scope="session")
def _gpt2_once(tokenizer) -> GPT2LMHeadModel:
    return make_gpt2(len(tokenizer))


@pytest.fixture
def tiny_gpt2(_gpt2_once) -> GPT2LMHeadModel:
    return copy.deepcopy(_gpt2_once)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer, _llama_once) -> Path:
    """A tiny Llama + tokenizer saved once as an ordinary HF directory (what a user's local checkpoint looks like);
    read-only for the tests."""
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    _llama_once.save_pretrained(out)
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


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright (skips with the reason where either is missing)."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install -y chromium; .ci/run installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()
