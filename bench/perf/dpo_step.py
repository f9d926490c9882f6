"""DPO optimizer-step time: mvalign's trainer (cached reference log-probs) vs trl's DPOTrainer, same everything.

    .venv/bin/pip install -e '.[bench]'                 # trl, bench-only
    .venv/bin/python -m bench.perf.dpo_step             # ~8 min on 2 cores; merges the "dpo" block into perf.json
    .venv/bin/python -m bench.perf.dpo_step --quick     # smoke run (3 steps per variant)

Same model (embedded SmolLM2-135M-Instruct, fp32 weights), LoRA (r 16, alpha 32, q/k/v/o, dropout 0: trl
disables dropout by default), batch of 4 pairs, AdamW lr 5e-4, bf16 autocast, no gradient checkpointing (trl
turns it on by default; off here for both), the same 64 HH helpful single-turn pairs chat-templated, all fitting
in 192 tokens so neither side truncates. Variants, run in alternating rounds inside one process: `mvalign`
(`train_adapter` on a DPO objective, reference log-probs cached before training), `trl-precompute` (DPOTrainer with
precompute_ref_log_probs=True: the same caching) and `trl` (its default: reference forward each step with the
adapter disabled). Seconds per optimizer step are measured per step (trl: a TrainerCallback; mvalign: its
log.jsonl), the first `warmup` steps of each run dropped; the ratio is median over rounds of per-run medians.
Also measures the decorrelation penalty's share of a step (interleaved micro-steps, bench/decorrelation.py) when
that benchmark's run directory exists.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from mvalign.config import DataSourceConfig, DPOSettings, LoraSettings, ModelConfig
from mvalign.data import load_pairs
from mvalign.lora import add_value_adapter
from mvalign.models import cache_root, format_prompt, load_model
from mvalign.train.logprobs import reference_logprobs
from mvalign.train.losses import dpo_objective
from mvalign.train.tokenize import tokenize_pairs
from mvalign.train.trainer import train_adapter

ROOT = Path(__file__).resolve().parents[2]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf"

LORA = LoraSettings(r=16, alpha=32, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
MAX_LEN = 192


def load_data(tokenizer, n: int):
    src = DataSourceConfig(format="hh-rlhf", path=[str(HH / "helpful-base" / "test.jsonl.gz")], single_turn_only=True,
                           on_invalid="skip")
    pairs = []
    for p in load_pairs(src, "helpful"):
        text = format_prompt(tokenizer, p.prompt, True)
        n_prompt = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        longest = max(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in (p.chosen, p.rejected))
        if n_prompt + longest + 2 <= MAX_LEN and n_prompt < MAX_LEN // 2:
            pairs.append(p)
        if len(pairs) == n:
            break
    return pairs


def run_mvalign(pairs, steps: int, cache: Path) -> list[float]:
    model, tokenizer = load_model(ModelConfig(), cache)
    tok = tokenize_pairs(tokenizer, pairs, MAX_LEN, MAX_LEN // 2, True)
    settings = DPOSettings(beta=0.1, lr=5e-4, max_steps=steps, batch_size=4, max_length=MAX_LEN,
                           max_prompt_length=MAX_LEN // 2, precision="bf16", seed=0, save_every=10_000)
    ref = reference_logprobs(model, tok, tokenizer.pad_token_id, cache, 8, torch.bfloat16)
    peft = add_value_adapter(model, LORA, 0)
    with tempfile.TemporaryDirectory() as out:
        train_adapter(peft, dpo_objective(tok, *ref, settings.beta), settings, out, tokenizer.pad_token_id, progress=False)
        return [json.loads(line)["seconds"] for line in Path(out, "log.jsonl").read_text().splitlines()]


def run_trl(pairs, steps: int, cache: Path, precompute: bool) -> list[float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = load_model(ModelConfig(), cache)
    rows = [{"prompt": [dict(m) for m in p.prompt] if not isinstance(p.prompt, str) else [{"role": "user", "content": p.prompt}],
             "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, use_cpu=True, bf16=True, per_device_train_batch_size=4,
                         gradient_accumulation_steps=1, learning_rate=5e-4, lr_scheduler_type="constant", max_steps=steps,
                         beta=0.1, max_length=MAX_LEN, precompute_ref_log_probs=precompute, precompute_ref_batch_size=8,
                         activation_checkpointing=False, report_to=[], save_strategy="no", logging_steps=1,
                         dataloader_num_workers=0, seed=0, max_grad_norm=1.0, warmup_steps=0, weight_decay=0.0)
        peft_cfg = LoraConfig(r=LORA.r, lora_alpha=LORA.alpha, lora_dropout=0.0, target_modules=LORA.target_modules,
                              task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=peft_cfg, callbacks=[StepTimer()])
        trainer.train()
    return times


def penalty_share() -> dict | None:
    run = ROOT / "runs" / "bench-decorrelation-full"
    if not (run / "cka-delta_w" / "adapters" / "mva" / "harmless").is_dir():
        return None
    from bench import decorrelation

    cfg = decorrelation.make_config(decorrelation.SETTINGS["full"], "cka-delta_w", run, 0)
    timing = decorrelation.penalty_timing(cfg, 7)["cka-delta_w"]
    return {"penalty_share": timing["penalty_share"], "dpo_micro_step_s": timing["dpo_step_s"], "penalty_s": timing["penalty_s"],
            "raw_dpo_micro_step_s": timing["raw_dpo_step_s"], "raw_penalty_s": timing["raw_penalty_s"],
            "setting": "CKA on ΔW rows (128 sampled), one frozen vector, SmolLM2 q/k/v/o r16, batch 4, len 192, bf16"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if not HH.is_dir():
        sys.exit(f"{HH} is absent: this benchmark needs ../shared/data beside the repository")
    steps, warmup, rounds = (3, 1, 1) if args.quick else (10, 2, args.rounds)
    cache = cache_root(os.environ.get("MVALIGN_CACHE_DIR", "~/.cache/mvalign"))
    _, tokenizer = load_model(ModelConfig(), cache)
    pairs = load_data(tokenizer, 64)
    runs: dict[str, list[list[float]]] = {"mvalign": [], "trl-precompute": [], "trl": []}
    for _ in range(rounds):
        runs["mvalign"].append(run_mvalign(pairs, steps, cache))
        runs["trl-precompute"].append(run_trl(pairs, steps, cache, True))
        runs["trl"].append(run_trl(pairs, steps, cache, False))
    med = {k: statistics.median(statistics.median(r[warmup:]) for r in v) for k, v in runs.items()}
    block = {
        "step_ratio_vs_trl": med["mvalign"] / med["trl-precompute"],
        "step_ratio_vs_trl_default": med["mvalign"] / med["trl"],
        "seconds_per_step": med, "raw_step_seconds": runs, "warmup_steps_dropped": warmup,
        "setting": {"model": "smollm2-135m-instruct", "pairs": len(pairs), "batch_pairs": 4, "max_length": MAX_LEN,
                    "lora": "r16 alpha32 q,k,v,o dropout 0", "precision": "bf16 autocast, fp32 weights",
                    "gradient_checkpointing": False, "steps_per_run": steps, "rounds": rounds,
                    "trl": version("trl")},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
    }
    if not args.quick:
        share = penalty_share()
        if share is not None:
            block["penalty_share"] = share["penalty_share"]
            block["penalty_timing"] = share
    out = ROOT / "bench" / "results" / ("perf.json" if not args.quick else "perf-quick.json")
    perf = json.loads(out.read_text()) if out.is_file() else {}
    perf["dpo"] = block
    out.write_text(json.dumps(perf, indent=2))
    print(json.dumps({k: v for k, v in block.items() if not k.startswith("raw")}, indent=1))


if __name__ == "__main__":
    main()
