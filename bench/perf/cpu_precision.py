"""DPO step time on this CPU: fp32 vs bf16 autocast, and what `training.precision: auto` picks here.

    .venv/bin/python -m bench.perf.cpu_precision            # ~6 min on a 2-core CPU without native bf16
    .venv/bin/python -m bench.perf.cpu_precision --steps 2  # shorter

bf16 autocast pays on a CPU only when its matrix units do bf16 natively (AVX-512 BF16 or AMX); elsewhere (AVX2-only
x86: most AMD before Zen 4, older Intel) oneDNN emulates it. Same model (embedded SmolLM2-135M-Instruct, fp32
weights), LoRA (r 16, alpha 32, q/k/v/o, dropout 0), 4 built-in helpful pairs per step, cached reference log-probs,
`train_adapter`'s own per-step timing (log.jsonl); the first step of each run is dropped (allocation), the rounds
alternate fp32 and bf16 inside one process, and the ratio is the median bf16 step over the median fp32 step. Writes
the "cpu_precision" block of bench/results/perf.json with the CPU's flags beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from bench.perf.dpo_step import LORA, ROOT
from mvalign.config import DataSourceConfig, DPOSettings, ModelConfig
from mvalign.data import load_pairs
from mvalign.devices import native_bf16, resolve_precision
from mvalign.lora import add_value_adapter
from mvalign.models import cache_root, load_model
from mvalign.train.logprobs import reference_logprobs
from mvalign.train.losses import dpo_objective
from mvalign.train.tokenize import tokenize_pairs
from mvalign.train.trainer import train_adapter

MAX_LEN = 128


def run(steps: int, rounds: int) -> dict:
    cache = cache_root(None)
    model, tokenizer = load_model(ModelConfig(), cache)
    pairs = load_pairs(DataSourceConfig(format="builtin", part="policy"), "helpful")[: 4 * steps]
    tok = tokenize_pairs(tokenizer, pairs, MAX_LEN, MAX_LEN // 2, True)
    ref = reference_logprobs(model, tok, tokenizer.pad_token_id, cache, 8, None)
    base = {n: p.detach().clone() for n, p in model.state_dict().items()}
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            model.load_state_dict(base)
            peft = add_value_adapter(model, LORA, 0)
            settings = DPOSettings(beta=0.1, lr=5e-4, max_steps=steps, batch_size=4, max_length=MAX_LEN,
                                   max_prompt_length=MAX_LEN // 2, precision=precision, seed=0, save_every=10_000)
            with tempfile.TemporaryDirectory() as out:
                train_adapter(peft, dpo_objective(tok, *ref, settings.beta), settings, out, tokenizer.pad_token_id,
                              progress=False)
                rows = [json.loads(line) for line in Path(out, "log.jsonl").read_text().splitlines()]
            seconds[precision] += [r["seconds"] for r in rows[1:]]
            model = peft.unload()
            print(json.dumps({"precision": precision, "seconds_per_step": [round(r["seconds"], 2) for r in rows]}),
                  flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    flags = {name: bool(getattr(torch.cpu, f"_is_{name}_supported")())
             for name in ("avx2", "avx512", "avx512_bf16", "amx_tile", "vnni")}
    return {"machine": {"processor": platform.processor() or platform.machine(), "cpu_flags": flags,
                        "torch": torch.__version__, "threads": torch.get_num_threads()},
            "settings": {"pairs_per_step": 4, "max_length": MAX_LEN, "steps_per_run": steps, "rounds": rounds,
                         "lora": LORA.model_dump(mode="json"), "first_step_dropped": True},
            "seconds_per_step": {k: round(v, 3) for k, v in med.items()},
            "steps_timed": {k: len(v) for k, v in seconds.items()},
            "bf16_over_fp32": round(med["bf16"] / med["fp32"], 2),
            "native_bf16": native_bf16(torch.device("cpu")),
            "auto_picks": resolve_precision("auto", torch.device("cpu"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per run (the first is dropped)")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    result = run(args.steps, args.rounds)
    out = ROOT / "bench" / "results" / "perf.json"
    perf = json.loads(out.read_text()) if out.is_file() else {}
    perf["cpu_precision"] = result
    out.write_text(json.dumps(perf, indent=2))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
