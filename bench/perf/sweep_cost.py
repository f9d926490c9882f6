"""Sweep cost per evaluated weight vector (issue: performance, part 1), on the embedded SmolLM2 and a tiny model.

    .venv/bin/python -m bench.perf.sweep_cost                # ~10 min on 2 cores; perf.json "sweep"
    .venv/bin/python -m bench.perf.sweep_cost --model tiny   # ~2 min; perf.json "sweep_tiny"
    .venv/bin/python -m bench.perf.sweep_cost --quick

`--model tiny`: a 2-layer random Llama (hidden 64, 4 heads, MLP 128) with SmolLM2's tokenizer, built once under
runs/bench-perf/tiny/, so that fixed per-point costs (scoring, Python, merge) weigh more than generation does.

Three ways to evaluate a point, same prompts (built-in val prompts), same greedy generation settings, same reward
heads (BT heads on MiniLM, trained once on the built-in `reward` prompts):
  (a) base:      plain batched generation by the base model alone (the physical limit of a point), plus scoring;
  (b) mvalign:   CombinedModel.set_weights(ω) in place, batched generation, scoring (what `mvalign run` does);
  (c) reference: the authors' loop re-implemented: reload the base from disk, load each adapter with PEFT with its
                 lora_alpha scaled by ω, merge, generate one prompt at a time, score;
  (d) mixed:     all P points in shared generate calls, every row at its own ω (`mvalign.mixed`), `rows` rows per
                 call, then scoring; also the row overhead (the same rows with and without the per-row update);
                 run once per rows-per-pass setting (`rows`, the headline, and `other_rows`: by_rows_per_pass).
Each variant runs in its own fresh process (so peak RSS, VmHWM, is its own) and evaluates the same P weight
vectors; the time per point is the median over those points. The value vectors are random LoRA adapters (r=16 on
q/k/v/o, B ~ N(0, 0.02²)): their cost does not depend on training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "runs" / "bench-perf"
MODEL = "smollm2"


def work() -> Path:
    return WORK if MODEL == "smollm2" else WORK / "tiny"


def model_config():
    """The base model: the embedded SmolLM2, or the tiny random Llama (built on first use)."""
    from mvalign.config import ModelConfig

    if MODEL == "smollm2":
        return ModelConfig()
    folder = work() / "model"
    if not (folder / "config.json").is_file():
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        from mvalign.models import load_model

        _, tokenizer = load_model(ModelConfig())
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                          bos_token_id=tokenizer.bos_token_id)
        LlamaForCausalLM(cfg).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return ModelConfig(name=str(folder))
SETTINGS = {"full": {"prompts": 32, "tokens": 32, "points": 4, "batch": 16, "rows": 64, "other_rows": [128],
                     "row_reps": 6, "ratio_reps": 3},
            "quick": {"prompts": 4, "tokens": 8, "points": 2, "batch": 4, "rows": 8, "other_rows": [4], "row_reps": 2,
                      "ratio_reps": 1}}
WEIGHTS = [(0.3, 0.7), (0.7, 0.3), (1.0, 1.0), (0.5, 0.5)]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def save_random_adapter(model_cfg, out: Path, seed: int) -> Path:
    """A random value vector (r=16 on q/k/v/o, B ~ N(0, 0.02²)) saved once at `out`."""
    import torch

    from mvalign.config import LoraSettings
    from mvalign.lora import add_value_adapter
    from mvalign.models import load_model

    if not (out / "adapter_model.safetensors").is_file():
        model, _ = load_model(model_cfg)
        peft = add_value_adapter(model, LoraSettings(r=16, alpha=32, dropout=0.0), seed=seed)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.02)
        peft.save_pretrained(out)
    return out


def prepare(s: dict) -> dict:
    """Random adapters and trained reward heads, created once under runs/bench-perf/."""

    from mvalign.data import split_pairs
    from mvalign.data.builtin import builtin_pairs
    from mvalign.rewards.bt_head import train_bt_head

    for i, name in enumerate(("helpful", "harmless")):
        save_random_adapter(model_config(), work() / "adapters" / name, i)
        head = WORK / "rewards" / name
        if not (head / "head.json").is_file():
            sp = split_pairs(builtin_pairs(name, "reward"), seed=0, train=0.8, val=0.2)
            train_bt_head(sp["train"], sp["val"], head, value=name, epochs=10)
    prompts = sorted({p.prompt for p in builtin_pairs("helpful", "policy")})[: s["prompts"]]
    return {"prompts": prompts}


def run_variant(variant: str, s: dict) -> dict:

    from mvalign.combine import CombinedModel, load_lora_adapter
    from mvalign.generate import GenerationSettings, generate_responses
    from mvalign.models import embedded_model_dir, load_model
    from mvalign.rewards.bt_head import BTHeadReward

    prompts = prepare(s)["prompts"]
    rewards = [BTHeadReward(WORK / "rewards" / n) for n in ("helpful", "harmless")]
    gen = GenerationSettings(max_new_tokens=s["tokens"], batch_size=s["batch"])
    weights = WEIGHTS[: s["points"]]
    times: list[float] = []
    t_setup = time.perf_counter()
    if variant in ("base", "mvalign", "mixed"):
        model, tokenizer = load_model(model_config())
        combined = CombinedModel(model, [load_lora_adapter(work() / "adapters" / n, n) for n in ("helpful", "harmless")])
    setup = time.perf_counter() - t_setup
    if variant == "mixed":
        return run_mixed(combined, tokenizer, prompts, rewards, gen, weights, s, setup)
    for w in weights:
        t0 = time.perf_counter()
        if variant == "base":
            responses = generate_responses(model, tokenizer, prompts, gen)
        elif variant == "mvalign":
            combined.set_weights(w)
            responses = generate_responses(model, tokenizer, prompts, gen)
        else:
            folder = embedded_model_dir() if MODEL == "smollm2" else Path(model_config().name)
            adapters = {name: work() / "adapters" / name for name in ("helpful", "harmless")}
            responses = reference_responses(folder, adapters, w, prompts, s["tokens"])
        for rm in rewards:
            rm.score(prompts, responses)
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "seconds_per_point": statistics.median(times), "raw_seconds": times,
            "setup_seconds": setup, "peak_rss_mb": peak_rss_mb(), "points": len(weights)}


def reference_responses(folder: Path, adapters: dict[str, Path], weights, prompts, tokens: int) -> list[str]:
    """The authors' loop for one point: reload the base from disk, load each adapter with PEFT with its lora_alpha
    scaled by ω, merge, generate one prompt at a time (greedy)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mvalign.generate import GenerationSettings, generate_responses
    from mvalign.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = load_tokenizer(str(folder))
    for (name, path), omega in zip(adapters.items(), weights):
        model = PeftModel.from_pretrained(model, path, adapter_name=name)
        for module in model.modules():  # scale alpha by ω: scaling = ω · alpha / r
            if isinstance(getattr(module, "scaling", None), dict) and name in module.scaling:
                module.scaling[name] *= omega
        model = model.merge_and_unload()
    one = GenerationSettings(max_new_tokens=tokens, batch_size=1)
    return [generate_responses(model, tokenizer, [p], one)[0] for p in prompts]


def run_mixed(combined, tokenizer, prompts, rewards, gen, weights, s, setup) -> dict:
    """(d) mixed-ω batching: all P points' rows through `generate_mixed` (rows_per_pass rows per call), then scoring;
    plus the row overhead: one batch of rows_per_pass rows generated with every row at its own ω vs the same rows on
    the plain base model (hooks off), timed alternately `row_reps` times in this process; the overhead is the median
    of the pairs' ratios (each mixed run over the plain run just before it, so slow drift of the machine cancels),
    with the ratio of the minima beside it. Also the per-point ratio to (a) in this process: (a) (plain generation
    at batch `batch` + scoring of one point) and the mixed pass over all P points, alternated `ratio_reps` times,
    the median of the pairs' ratios (the cross-process (d)/(a) drifts with the machine between processes)."""
    from mvalign.generate import format_texts, generate_responses, generate_texts
    from mvalign.mixed import MixedLoRA, generate_mixed

    mixed = MixedLoRA(combined.model, combined.adapters)
    texts = format_texts(tokenizer, prompts)
    rows = s["rows"]

    def mixed_pass() -> float:
        t0 = time.perf_counter()
        responses = generate_mixed(mixed, tokenizer, weights, [texts] * len(weights), gen, rows, chat=True)
        for resp in responses:
            for rm in rewards:
                rm.score(prompts, resp)
        return (time.perf_counter() - t0) / len(weights)

    def base_point() -> float:
        t0 = time.perf_counter()
        responses = generate_responses(combined.model, tokenizer, prompts, gen)
        for rm in rewards:
            rm.score(prompts, responses)
        return time.perf_counter() - t0

    per_point = mixed_pass()
    in_process = [(base_point(), mixed_pass()) for _ in range(s["ratio_reps"])]
    sample = (texts * (rows // len(texts) + 1))[:rows]
    row_w = [weights[i % len(weights)] for i in range(rows)]
    plain, hooked = [], []
    for _ in range(s["row_reps"]):
        t0 = time.perf_counter()
        generate_texts(combined.model, tokenizer, sample, gen, True, batch_size=rows)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with mixed.rows(row_w):
            generate_texts(combined.model, tokenizer, sample, gen, True, batch_size=rows)
        hooked.append(time.perf_counter() - t0)
    return {"variant": "mixed", "seconds_per_point": per_point, "setup_seconds": setup, "peak_rss_mb": peak_rss_mb(),
            "points": len(weights), "rows_per_pass": rows,
            "row_overhead": statistics.median(h / p for h, p in zip(hooked, plain)),
            "row_overhead_ratio_of_minima": min(hooked) / min(plain), "raw_row_seconds": {"plain": plain, "mixed": hooked},
            "ratio_vs_base_in_process": statistics.median(m / b for b, m in in_process),
            "raw_in_process_seconds": {"base_point": [b for b, _ in in_process], "mixed_per_point": [m for _, m in in_process]}}


def summary(results: dict, s: dict, mode: str) -> dict:
    """perf.json's "sweep" from the variants' results (results["mixed"]: the headline rows per pass, the config's
    default; results["mixed-R"]: the other settings)."""
    a, b, c, d = (results[k] for k in ("base", "mvalign", "reference", "mixed"))
    return {
        "ratio_vs_base_generation": b["seconds_per_point"] / a["seconds_per_point"],
        "speedup_vs_reference_loop": c["seconds_per_point"] / b["seconds_per_point"],
        "peak_rss_ratio": b["peak_rss_mb"] / a["peak_rss_mb"],
        "mixed": {"ratio_vs_base_generation": d["ratio_vs_base_in_process"],
                  "ratio_vs_base_generation_separate_processes": d["seconds_per_point"] / a["seconds_per_point"],
                  "row_overhead": d["row_overhead"], "row_overhead_ratio_of_minima": d["row_overhead_ratio_of_minima"],
                  "points_per_pass": d["points"], "rows_per_pass": d["rows_per_pass"],
                  "peak_rss_ratio": d["peak_rss_mb"] / a["peak_rss_mb"],
                  "speedup_vs_reference_loop": c["seconds_per_point"] / d["seconds_per_point"],
                  "by_rows_per_pass": {str(r["rows_per_pass"]): {
                      "ratio_vs_base_generation": r["ratio_vs_base_in_process"],
                      "ratio_vs_base_generation_separate_processes": r["seconds_per_point"] / a["seconds_per_point"],
                      "row_overhead": r["row_overhead"], "peak_rss_ratio": r["peak_rss_mb"] / a["peak_rss_mb"]}
                      for k, r in results.items() if k.startswith("mixed")}},
        "raw": results,
        "setting": {
            **s,
            "mode": mode,
            "model": "smollm2-135m-instruct (fp32)"
            if MODEL == "smollm2"
            else "tiny random Llama: 2 layers, hidden 64, SmolLM2 tokenizer (fp32)",
            "prompt_source": "built-in policy prompts",
            "generation": "greedy",
            "adapters": "2 random LoRA r=16 q/k/v/o",
            "scoring": "2 BT heads on MiniLM",
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--variant", choices=["base", "mvalign", "mixed", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global MODEL
    MODEL = args.model
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, {**s, "rows": args.rows or s["rows"]})))
        return
    prepare(s)
    results = {}
    runs = [("base", None), ("mvalign", None), ("mixed", s["rows"]), *[("mixed", r) for r in s["other_rows"]],
            ("reference", None)]
    for variant, rows in runs:
        cmd = [sys.executable, __file__, "--variant", variant, "--model", MODEL] + (["--quick"] if args.quick else []) \
            + ([f"--rows={rows}"] if rows else [])
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            sys.exit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
        results[variant if rows in (None, s["rows"]) else f"{variant}-{rows}"] = json.loads(line[0][7:])
    sweep = summary(results, s, mode)
    out_path = ROOT / "bench" / "results" / ("perf.json" if mode == "full" else "perf-quick.json")
    perf = json.loads(out_path.read_text()) if out_path.is_file() else {}
    perf["sweep" if MODEL == "smollm2" else "sweep_tiny"] = sweep
    out_path.write_text(json.dumps(perf, indent=2))
    print(json.dumps({k: v for k, v in sweep.items() if k != "raw"}, indent=2))


if __name__ == "__main__":
    main()
