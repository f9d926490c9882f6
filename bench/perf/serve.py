"""Load on `mvalign serve` (issue 35): concurrent clients, each at its own ω, vs serving the same requests one ω at a
time on merged weights.

    .venv/bin/python -m bench.perf.serve            # ~3 min on 2 cores: bench/results/serve.json
    .venv/bin/python -m bench.perf.serve --quick    # smoke run (4 clients, 8 tokens)

Setting: the embedded SmolLM2-135M (float32, CPU), two value vectors (LoRA r 8 on q/k/v/o/gate/up/down with random
A and B — the compute of trained vectors of that rank; serving speed does not depend on their values), 16 clients
(`openai` package, one thread each) sending at once one chat request each at a random ω ∈ [-0.5, 2]², greedy,
exactly 48 new tokens (`ignore_eos`), prompts from the built-in data. The server: real uvicorn on 127.0.0.1 in this
process, continuous batching up to 16 rows per pass.
Baseline: the same 16 requests one after another, each on the model merged at its ω (W0 + Σ ω_k ΔW_k written into
the weights, `CombinedModel.set_weights`, timed with the merge) and HF generate with batch 1, 48 new tokens.

Recorded: throughput_ratio (served tokens/s over baseline tokens/s), p50_s / p95_s (request latency, send to last
token, all 16 sent at once), memory_ratio ((base weights + the stacked value-vector factors + the peak KV cache
of the batch) / base weights: what serving every ω costs over one model), and memory_ratio_rss, the cross-check
from the process's peak RSS (allocator slack and activations included): (model + peak-RSS growth while serving the
16) / (model + peak-RSS growth while the baseline generates). Timed alone on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from mvalign.combine import CombinedModel, load_lora_adapter
from mvalign.config import ModelConfig
from mvalign.data.builtin import builtin_pairs
from mvalign.generate import format_texts
from mvalign.mixed import MixedLoRA
from mvalign.models import load_model
from mvalign.serve import Limits, Server
from mvalign.serve_api import create_app
from mvalign.serve_engine import Engine

OUT = Path(__file__).resolve().parents[1] / "results" / "serve.json"
VALUES = ["helpful", "harmless"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS


def random_adapters(model, folder: Path) -> list:
    out = []
    for i, v in enumerate(VALUES):
        torch.manual_seed(100 + i)
        peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS,
                                                               init_lora_weights=False))
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.mul_(0.05)  # a small ΔW, as trained vectors are
        peft.save_pretrained(folder / v)
        out.append(load_lora_adapter(folder / v, v))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    clients, new = (4, 8) if args.quick else (16, 48)
    import tempfile

    import openai
    import uvicorn

    model, tok = load_model(ModelConfig())
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    rng = random.Random(0)
    omegas = [[round(rng.uniform(-0.5, 2.0), 3) for _ in VALUES] for _ in range(clients)]
    prompts = [p.prompt for p in builtin_pairs("helpful")][:clients]
    with tempfile.TemporaryDirectory() as tmp:
        adapters = random_adapters(model, Path(tmp))

    # baseline: one ω at a time on merged weights
    combined = CombinedModel(copy.deepcopy(model), adapters)
    texts = format_texts(tok, prompts, True)
    reset_peak()
    rss_base0 = rss_peak_mb()
    t0 = time.perf_counter()
    base_tokens = 0
    with torch.no_grad():
        for omega, text in zip(omegas, texts):
            combined.set_weights(omega)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            out = combined.model.generate(**ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                          pad_token_id=tok.pad_token_id)
            base_tokens += out.shape[1] - ids["input_ids"].shape[1]
    base_s = time.perf_counter() - t0
    rss_base_growth = rss_peak_mb() - rss_base0
    del combined

    mixed = MixedLoRA(model, adapters)
    factor_mb = sum(t.numel() * t.element_size() for f in mixed._factors.values() for t in f[1:3]) / 2**20
    engine = Engine(mixed, tok, rows_per_pass=16, max_waiting=64).start()
    server = Server(engine, VALUES, "mva", Limits(max_weight=3.0, max_tokens=new), chat=True)
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    http = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=http.run, daemon=True).start()
    while not http.started:
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)

    def one(i: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = client.chat.completions.create(model="mva", messages=[{"role": "user", "content": prompts[i]}],
                                           max_tokens=new, temperature=0, extra_body={
                                               "ignore_eos": True, "mvalign": {"weights": dict(zip(VALUES, omegas[i]))}})
        return time.perf_counter() - t, r.usage.completion_tokens

    one(0)  # warm-up (first request: allocator, HTTP stack)
    reset_peak()
    rss0 = rss_peak_mb()
    steps0, rows0 = engine.stats.steps, engine.stats.rows
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(one, range(clients)))
    served_s = time.perf_counter() - t0
    rss_growth = rss_peak_mb() - rss0
    http.should_exit = True
    engine.stop()
    lat = sorted(d for d, _ in done)
    served_tokens = sum(n for _, n in done)
    result = {
        "throughput_ratio": round((served_tokens / served_s) / (base_tokens / base_s), 2),
        "memory_ratio": round((model_mb + factor_mb + engine.stats.peak_cache_mb) / model_mb, 3),
        "p50_s": round(statistics.median(lat), 2),
        "p95_s": round(lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))], 2),
        "served_tokens_per_s": round(served_tokens / served_s, 1), "baseline_tokens_per_s": round(base_tokens / base_s, 1),
        "served_seconds": round(served_s, 1), "baseline_seconds": round(base_s, 1),
        "served_tokens": served_tokens, "baseline_tokens": base_tokens,
        "forward_passes": engine.stats.steps - steps0, "mean_rows_per_pass": round(
            (engine.stats.rows - rows0) / max(1, engine.stats.steps - steps0), 2),
        "model_mb": round(model_mb, 1), "factors_mb": round(factor_mb, 1),
        "peak_kv_cache_mb": round(engine.stats.peak_cache_mb, 1), "rss_peak_growth_while_serving_mb": round(rss_growth, 1),
        "rss_peak_growth_one_at_a_time_mb": round(rss_base_growth, 1),
        "memory_ratio_rss": round((model_mb + rss_growth) / (model_mb + rss_base_growth), 3),
        "settings": {"model": "embedded SmolLM2-135M-Instruct float32", "values": VALUES, "lora": "r 8 on " + ",".join(TARGETS),
                     "clients": clients, "new_tokens": new, "omega": "uniform [-0.5, 2] per value, seed 0",
                     "rows_per_pass": 16, "decoding": "greedy, ignore_eos", "threads": torch.get_num_threads(),
                     "machine": platform.machine(), "quick": args.quick},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=1))
    if not args.quick:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
