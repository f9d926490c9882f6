"""`mvalign serve` (issue 35): concurrent requests at different ω share forward passes and each answer equals the
merged model's greedy text at its ω; driven by the real `openai` client over HTTP on 127.0.0.1; bad requests (and
hypothesis-fuzzed bodies) are OpenAI-style 4xx JSON errors and the server stays up and exact."""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import save_random_adapter
from mvalign.combine import CombinedModel, load_lora_adapter
from mvalign.generate import GenerationSettings, generate_texts
from mvalign.mixed import MixedLoRA
from mvalign.serve import Limits, Server
from mvalign.serve_engine import Engine

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

VALUES = ["helpful", "harmless", "honest"]
OMEGAS = [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (2.5, -0.5, 0.3), (-1.0, 1.5, 0.0), (0.5, 0.5, 2.0), (3.0, 0.0, -2.0),
          (0.0, 2.0, 1.0), (-0.5, -0.5, -0.5), (1.2, 0.8, 0.0)]
PROMPTS = ["Tell me about cats.", "Hi", "How do I bake bread for my family tonight?", "Why is the sky blue?"]
NEW = 12


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    """A Server on a real uvicorn on 127.0.0.1 (in a thread), with its base model and adapters for references."""

    def __init__(self, base, tokenizer, dirs, api_key=None, chat=True, **engine_kw) -> None:
        self.base, self.tokenizer, self.chat = base, tokenizer, chat
        self.adapters = [load_lora_adapter(d, v) for d, v in zip(dirs, VALUES)]
        self.engine = Engine(MixedLoRA(copy.deepcopy(base), self.adapters), tokenizer, **engine_kw).start()
        presets = {"careful": {"method": "mva", "weights": {"helpful": 0.5, "harmless": 2.0}}}
        self.server = Server(self.engine, VALUES, "mva", Limits(max_weight=3.0, max_tokens=32), presets, chat=chat,
                             api_key=api_key)
        from mvalign.serve_api import create_app

        self.port = free_port()
        self.http = uvicorn.Server(uvicorn.Config(create_app(self.server), host="127.0.0.1", port=self.port,
                                                  log_level="warning"))
        self.thread = threading.Thread(target=self.http.run, daemon=True)
        self.thread.start()
        for _ in range(1200):  # a loaded CI machine may take a while
            if self.http.started:
                break
            time.sleep(0.05)
        assert self.http.started, "uvicorn did not start within 60 s"
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or "none", max_retries=0)

    def close(self) -> None:
        self.http.should_exit = True
        self.thread.join(timeout=10)
        self.engine.stop()

    def merged_text(self, omega, prompt: str, chat: bool = False) -> str:
        """The reference: the model merged at ω (W0 + Σ ω_k ΔW_k written into the weights), HF generate, greedy;
        a chat prompt formatted as the sweep formats it (`generate.format_texts`)."""
        from mvalign.generate import format_texts

        combined = CombinedModel(copy.deepcopy(self.base), self.adapters)
        combined.set_weights(list(omega))
        texts = format_texts(self.tokenizer, [prompt], self.chat) if chat else [prompt]
        settings = GenerationSettings(max_new_tokens=NEW, batch_size=1, max_prompt_length=512)
        return generate_texts(combined.model, self.tokenizer, texts, settings, chat=chat and self.chat)[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory, _llama_once, tokenizer):
    folder = tmp_path_factory.mktemp("serve")
    base = copy.deepcopy(_llama_once)
    dirs = [save_random_adapter(base, folder / v, i + 1, r=4, alpha=8.0) for i, v in enumerate(VALUES)]
    running = Running(base, tokenizer, dirs, rows_per_pass=8, max_waiting=64)
    yield running
    running.close()


def ask(client, omega, prompt, **kw):
    return client.completions.create(model="mva", prompt=prompt, max_tokens=NEW, temperature=0,
                                     extra_body={"mvalign": {"weights": dict(zip(VALUES, omega))}}, **kw)


def test_concurrent_greedy_requests_at_nine_weights_equal_the_merged_model(served):
    jobs = [(w, PROMPTS[i % len(PROMPTS)]) for i, w in enumerate(OMEGAS)]
    steps, tokens = served.engine.stats.steps, served.engine.stats.tokens
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda j: ask(served.client, *j), jobs))
    assert answers[0].object == "text_completion" and answers[0].usage.completion_tokens > 0
    passes, made = served.engine.stats.steps - steps, served.engine.stats.tokens - tokens
    assert passes < made / 2, f"{passes} forward passes for {made} tokens: requests did not share passes"
    for (omega, prompt), answer in zip(jobs, answers):
        assert answer.choices[0].text == served.merged_text(omega, prompt), (omega, prompt)


def test_chat_streaming_and_plain_agree_and_equal_the_merged_model(served):
    omega = (2.5, -0.5, 0.3)
    kw = {"model": "mva", "messages": [{"role": "user", "content": PROMPTS[2]}], "max_tokens": NEW, "temperature": 0,
          "extra_body": {"mvalign": {"weights": dict(zip(VALUES, omega))}}}
    plain = served.client.chat.completions.create(**kw)
    chunks = list(served.client.chat.completions.create(stream=True, **kw))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert plain.choices[0].message.content == streamed.strip() == served.merged_text(omega, PROMPTS[2], chat=True)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_presets_and_omega_model_ids_choose_the_trade_off(served):
    ids = [m.id for m in served.client.models.list().data]
    assert ids == ["mva", "careful"]
    by_preset = served.client.completions.create(model="careful", prompt=PROMPTS[0], max_tokens=NEW, temperature=0)
    by_id = served.client.completions.create(model="omega:helpful=0.5,harmless=2", prompt=PROMPTS[0], max_tokens=NEW,
                                             temperature=0)
    assert by_preset.choices[0].text == by_id.choices[0].text == served.merged_text((0.5, 2.0, 0.0), PROMPTS[0])


def test_sampling_with_a_seed_is_reproducible_whatever_runs_beside_it(served):
    kw = {"model": "mva", "prompt": PROMPTS[1], "max_tokens": NEW, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    alone = served.client.completions.create(**kw).choices[0].text
    with ThreadPoolExecutor(4) as pool:
        crowd = list(pool.map(lambda _: served.client.completions.create(**kw).choices[0].text, range(4)))
    assert crowd == [alone] * 4


BAD = [({"model": "mva", "prompt": "x", "mvalign": {"weights": {"kind": 1.0}}}, 400, "mvalign.weights"),
       ({"model": "mva", "prompt": "x", "mvalign": {"weights": {"helpful": 9.0}}}, 400, "mvalign.weights"),
       ({"model": "mva", "prompt": "x", "mvalign": {"preset": "nosuch"}}, 404, "mvalign.preset"),
       ({"model": "nosuch", "prompt": "x"}, 404, "model"),
       ({"model": "omega:helpful=abc", "prompt": "x"}, 400, "model"),
       ({"model": "mva", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
       ({"model": "mva", "prompt": "x", "max_tokens": 1000}, 400, "max_tokens"),
       ({"model": "mva", "prompt": "word " * 600}, 400, "prompt"),
       ({"model": "mva", "prompt": "word " * 500, "max_tokens": 20}, 400, "prompt"),
       ({"model": "mva", "prompt": "x", "temperature": -1}, 400, "temperature"),
       ({"model": "mva", "prompt": "x", "n": 3}, 400, "n"),
       ({"model": "mva"}, 400, "prompt"),
       ({"model": "mva", "messages": []}, 400, "messages")]


@pytest.mark.parametrize("body,status,param", BAD)
def test_bad_requests_are_openai_errors_naming_the_field(served, body, status, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(served.url + path, json=body, timeout=30)
    assert r.status_code == status and r.json()["error"]["param"] == param, r.text


def test_max_tokens_left_out_fits_the_context(served):
    served.server.limits.max_tokens = 4096  # more than the tiny model's context (512)
    try:
        r = httpx.post(served.url + "/v1/completions", json={"model": "mva", "prompt": "word " * 30, "temperature": 0},
                       timeout=120)
    finally:
        served.server.limits.max_tokens = 32
    assert r.status_code == 200, r.text
    used = r.json()["usage"]
    assert used["prompt_tokens"] + used["completion_tokens"] <= served.server.context


def test_nan_malformed_and_oversized_bodies_are_4xx(served):
    for raw in (b'{"model": "mva", "prompt": "x", "mvalign": {"weights": {"helpful": NaN}}}', b"{not json",
                b"[1, 2]", b"x" * (2 << 20)):
        r = httpx.post(served.url + "/v1/completions", content=raw, timeout=30,
                       headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and "error" in r.json(), (raw[:40], r.status_code, r.text[:200])


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 2000) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                     max_size=3), max_leaves=6)
fields = st.sampled_from(["model", "prompt", "messages", "max_tokens", "temperature", "top_p", "stop", "seed",
                          "stream", "n", "mvalign"])
near_valid = st.fixed_dictionaries({"model": st.sampled_from(["mva", "careful", "omega:helpful=1", "x", ""]),
                                    "prompt": st.text(max_size=20)},
                                   optional={"max_tokens": st.integers(-2, 40), "temperature": st.floats(-1, 3),
                                             "stop": st.lists(st.text(max_size=3), max_size=5),
                                             "mvalign": st.fixed_dictionaries({"weights": st.dictionaries(
                                                 st.sampled_from(VALUES + ["other"]), st.floats(), max_size=3)}),
                                             "stream": st.booleans()})


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(fields, json_values, max_size=6) | near_valid, chat=st.booleans())
def test_fuzzed_bodies_get_an_answer_or_a_4xx_error(served, body, chat):
    r = httpx.post(served.url + ("/v1/chat/completions" if chat else "/v1/completions"),
                   content=json.dumps(body).encode(), headers={"content-type": "application/json"}, timeout=60)
    if r.status_code == 200:
        if body.get("stream") is True:
            assert r.text.rstrip().endswith("data: [DONE]")
        else:
            assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        assert 400 <= r.status_code < 500 and set(r.json()["error"]) >= {"message", "param"}, r.text[:300]


def test_a_client_that_disconnects_mid_stream_leaves_the_server_up_and_exact(served):
    body = {"model": "mva", "prompt": PROMPTS[2], "max_tokens": 30, "temperature": 0, "stream": True}
    with httpx.stream("POST", served.url + "/v1/completions", json=body, timeout=30) as r:
        next(r.iter_lines())  # one event, then hang up
    for _ in range(600):
        if served.engine.busy == (0, 0):
            break
        time.sleep(0.05)
    assert served.engine.busy == (0, 0), "the abandoned row stayed in the batch"
    assert httpx.get(served.url + "/health").json()["status"] == "ok"
    omega = (0.0, 2.0, 1.0)
    assert ask(served.client, omega, PROMPTS[3]).choices[0].text == served.merged_text(omega, PROMPTS[3])


def test_an_engine_failure_ends_only_its_batch(served):
    import queue

    from mvalign.serve_engine import GenRequest

    finished = queue.Queue()
    bad = GenRequest([5, 6, 7], [1.0], 4, lambda delta, finish: finish and finished.put(finish))  # ω of one value
    served.engine.submit(bad)
    assert finished.get(timeout=60).startswith("error: ValueError: row weights must be rows × 3")
    omega = (1.2, 0.8, 0.0)
    assert ask(served.client, omega, PROMPTS[1]).choices[0].text == served.merged_text(omega, PROMPTS[1])


def test_queue_limit_api_key_and_host(tmp_path, _llama_once, tokenizer):
    from mvalign.config import ConfigError
    from mvalign.serve import check_host

    base = copy.deepcopy(_llama_once)
    dirs = [save_random_adapter(base, tmp_path / v, i + 1) for i, v in enumerate(VALUES)]
    running = Running(base, tokenizer, dirs, api_key="sekrit", rows_per_pass=1, max_waiting=1)
    try:
        assert httpx.get(running.url + "/v1/models").status_code == 401
        assert [m.id for m in running.client.models.list().data][0] == "mva"
        body = {"model": "mva", "prompt": PROMPTS[2], "max_tokens": 30, "temperature": 0}
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(running.url + "/v1/completions", json=body, timeout=60,
                                                       headers={"authorization": "Bearer sekrit"}).status_code,
                                  range(8)))
        assert 200 in codes and 429 in codes and set(codes) <= {200, 429}, codes
    finally:
        running.close()
    with pytest.raises(ConfigError, match="--host 0.0.0.0: serving beyond this machine needs --api-key"):
        check_host("0.0.0.0", None)
    check_host("0.0.0.0", "k")


@pytest.mark.slow
def test_embedded_smollm2_rows_equal_the_merged_model(tmp_path, embedded_cache, monkeypatch):
    from mvalign.config import ModelConfig
    from mvalign.models import load_model

    monkeypatch.setenv("MVALIGN_CACHE_DIR", str(embedded_cache))
    model, tok = load_model(ModelConfig())
    targets = ["q_proj", "v_proj"]
    dirs = [save_random_adapter(model, tmp_path / v, i + 1, r=2, alpha=0.5, targets=targets)
            for i, v in enumerate(VALUES)]
    running = Running(model, tok, dirs, rows_per_pass=8)
    try:
        jobs = [(w, PROMPTS[i % len(PROMPTS)]) for i, w in enumerate(OMEGAS[:8])]
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda j: running.client.chat.completions.create(
                model="mva", messages=[{"role": "user", "content": j[1]}], max_tokens=NEW, temperature=0,
                extra_body={"mvalign": {"weights": dict(zip(VALUES, j[0]))}}), jobs))
        for (omega, prompt), answer in zip(jobs, answers):
            assert answer.choices[0].message.content == running.merged_text(omega, prompt, chat=True), omega
    finally:
        running.close()


def test_mvalign_serve_on_a_trained_run_offers_its_picked_preset(tmp_path, tiny_model_dir):
    """The command end to end: train and evaluate a tiny run, pick a trade-off with --save-preset, start
    `mvalign serve` as its own process, ask for the preset with an unmodified client."""
    import os
    import subprocess
    import sys

    from typer.testing import CliRunner

    from common import write_builtin_config
    from mvalign.cli import app
    from mvalign.config import ModelConfig
    from mvalign.generate import format_texts
    from mvalign.models import load_model
    from mvalign.rundir import RunDir
    from mvalign.store import AdapterRef

    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep={"grid": [0.5, 1.5], "val_prompts": 4,
                                                                    "test_prompts": 3, "max_new_tokens": 4})
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(path), "--method", "mva"]).exit_code == 0
    picked = runner.invoke(app, ["pick", str(tmp_path / "run"), "--maximize", "helpful", "--save-preset", "mine",
                                 "--json"])
    assert picked.exit_code == 0, picked.output
    weights = json.loads(picked.stdout)["weights"]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, "-c", "from mvalign.cli import app; app(prog_name='mvalign')", "serve",
                             str(tmp_path / "run"), "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["mva", "mine"]
        got = client.chat.completions.create(model="mine", messages=[{"role": "user", "content": PROMPTS[0]}],
                                             max_tokens=NEW, temperature=0).choices[0].message.content
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)))
    run = RunDir(tmp_path / "run")
    combined = CombinedModel(model, [load_lora_adapter(run.adapter(AdapterRef("mva", v)), v)
                                     for v in ("helpful", "harmless")])
    combined.set_weights([weights["helpful"], weights["harmless"]])
    want = generate_texts(combined.model, tok, format_texts(tok, [PROMPTS[0]], True),
                          GenerationSettings(max_new_tokens=NEW, batch_size=1), chat=True)[0]
    assert got == want, out
    bad = runner.invoke(app, ["serve", str(tmp_path / "run"), "--host", "0.0.0.0"])
    assert bad.exit_code == 1 and "needs --api-key" in bad.output


def test_a_vanishing_temperature_samples_its_limit_greedy():
    """A positive temperature so small that logits / T overflows (hypothesis found 2.2e-313 → a 500) picks the
    argmax, the limit T → 0+; an ordinary temperature still samples from softmax(logits / T)."""
    import torch

    from mvalign.serve_engine import GenRequest

    logits = torch.tensor([0.5, 3.0, -1.0, 2.9])
    for t in (2.2250738585e-313, 1e-300):
        assert GenRequest([1], [1.0], 1, lambda d, f: None, temperature=t).choose(logits) == 1
    row = GenRequest([1], [1.0], 1, lambda d, f: None, temperature=1.0, seed=0)
    draws = {row.choose(logits) for _ in range(200)}
    assert {1, 3} <= draws  # 3.0 and 2.9 are near-equally likely at T = 1
