"""Sweep cost on a GPU (issue 18 item 1, issue 14's GPU line): one process, nothing else running, CUDA synchronised.

    python -m bench.perf.gpu [--quick] [--out FILE]      # default: bench/results/gpu.json ("sweep")
    python -m bench.perf.gpu --demo-runs runs/demo-quick runs/demo   # adds "demo": steps/s and sweep points/min

On the embedded SmolLM2-135M-Instruct held at model.dtype auto (bfloat16 on a CUDA device that supports it), two
random LoRA value vectors (r=16 on q/k/v/o, B ~ N(0, 0.02²)), greedy decoding, N built-in policy prompts, T new
tokens, the same prompts for every variant:
  base:      plain batched generation (batch 16) by the base model: one point's cost without adapters;
  merged:    CombinedModel.set_weights(ω) in place, then the same generation (one point at a time);
  mixed:     P points in shared generate calls of `rows` (point, prompt) rows, each row at its own ω (mvalign.mixed);
             seconds per point = wall time / P;
  reference: the authors' loop for one point (reload the base, PEFT-merge each adapter with lora_alpha·ω, generate
             one prompt at a time), timed on the first `ref_prompts` prompts and scaled to N;
  scoring:   the two BT heads (MiniLM encoder on the GPU) scoring one point's N responses.
The ratios divide by base in the same run. Responses of random adapters at small B end at EOS like the base's do,
so lengths are comparable; each variant's generated tokens are reported beside its time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"full": {"prompts": 64, "tokens": 48, "batch": 16, "points": [4, 16, 64], "rows": [256, 1024],
                     "ref_prompts": 8, "repeats": 3},
            "quick": {"prompts": 8, "tokens": 8, "batch": 4, "points": [2, 4], "rows": [8], "ref_prompts": 2,
                      "repeats": 1}}
GRID = [round(0.2 * i, 1) for i in range(1, 11)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int):
    """(median seconds, last result) over `repeats` calls after one warm-up call."""
    out = fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def random_adapters(model_cfg, work: Path) -> list[Path]:
    from bench.perf.sweep_cost import save_random_adapter

    return [save_random_adapter(model_cfg, work / "adapters" / name, i) for i, name in enumerate(("helpful", "harmless"))]


def tokens_of(tokenizer, responses) -> int:
    return sum(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses)


def sweep(s: dict, work: Path) -> dict:
    from mvalign.combine import CombinedModel, load_lora_adapter
    from mvalign.config import ModelConfig
    from mvalign.data import split_pairs
    from mvalign.data.builtin import builtin_pairs
    from mvalign.generate import GenerationSettings, format_texts, generate_texts
    from mvalign.mixed import MixedLoRA, generate_mixed
    from mvalign.models import embedded_model_dir, load_model
    from mvalign.rewards.bt_head import BTHeadReward, train_bt_head

    cfg = ModelConfig()
    paths = random_adapters(cfg, work)
    model, tokenizer = load_model(cfg)
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    prompts = sorted({p.prompt for p in builtin_pairs("helpful", "policy")})[: s["prompts"]]
    texts = format_texts(tokenizer, prompts)
    gen = GenerationSettings(max_new_tokens=s["tokens"], batch_size=s["batch"])
    combined = CombinedModel(model, [load_lora_adapter(p, p.name) for p in paths])
    mixed = MixedLoRA(model, combined.adapters)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
                 "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__}

    base_s, base_resp = timed(lambda: generate_texts(model, tokenizer, texts, gen, True), s["repeats"])
    out["base"] = {"seconds_per_point": base_s, "tokens": tokens_of(tokenizer, base_resp)}

    def merged_point():
        combined.set_weights([0.6, 1.4])
        return generate_texts(model, tokenizer, texts, gen, True)
    merged_s, merged_resp = timed(merged_point, s["repeats"])
    combined.reset()
    out["merged"] = {"seconds_per_point": merged_s, "ratio_vs_base": merged_s / base_s,
                     "tokens": tokens_of(tokenizer, merged_resp)}

    grid = list(itertools.product(GRID, GRID))
    out["mixed"] = []
    for p, rows in itertools.product(s["points"], s["rows"]):
        points = grid[:: max(1, len(grid) // p)][:p]
        secs, resp = timed(lambda points=points, rows=rows: generate_mixed(
            mixed, tokenizer, points, [texts] * len(points), gen, rows, chat=True), s["repeats"])
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        out["mixed"].append({"points": p, "rows_per_pass": rows, "seconds_per_point": secs / p,
                             "ratio_vs_base": secs / p / base_s, "tokens_per_point": tokens_of(tokenizer,
                             [r for rs in resp for r in rs]) / p, "peak_gpu_gib": peak})

    folder, n_ref = embedded_model_dir(), s["ref_prompts"]
    t0 = time.perf_counter()
    ref = reference_point(folder, dict(zip(("helpful", "harmless"), paths)), (0.6, 1.4), prompts[:n_ref], s["tokens"],
                          device, dtype)
    sync()
    ref_s = (time.perf_counter() - t0) * len(prompts) / n_ref
    best = min(out["mixed"], key=lambda r: r["seconds_per_point"])
    out["reference"] = {"seconds_per_point": ref_s, "timed_prompts": n_ref, "scaled_to": len(prompts),
                        "tokens_timed": tokens_of(tokenizer, ref)}

    heads = []
    for name in ("helpful", "harmless"):
        head = work / "rewards" / name
        if not (head / "head.json").is_file():
            sp = split_pairs(builtin_pairs(name, "reward"), seed=0, train=0.8, val=0.2)
            train_bt_head(sp["train"], sp["val"], head, value=name, epochs=10)
        heads.append(BTHeadReward(head, name))
    score_s, _ = timed(lambda: [h.score(prompts, base_resp) for h in heads], s["repeats"])
    out["scoring"] = {"seconds_per_point": score_s, "ratio_vs_base": score_s / base_s}
    out["summary"] = {
        "merged_ratio_vs_base": merged_s / base_s,
        "mixed_best_ratio_vs_base": best["ratio_vs_base"], "mixed_best": {k: best[k] for k in ("points", "rows_per_pass")},
        "speedup_vs_reference_loop_merged": ref_s / (merged_s + score_s),
        "speedup_vs_reference_loop_mixed": ref_s / (best["seconds_per_point"] + score_s),
    }
    out["setting"] = {**s, "model": "smollm2-135m-instruct", "adapters": "2 random LoRA r=16 q/k/v/o",
                      "generation": "greedy", "prompt_source": "built-in policy prompts"}
    return out


def reference_point(folder, adapters, weights, prompts, tokens, device, dtype):
    """The authors' loop for one point (see sweep_cost.reference_responses), on `device` in `dtype`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mvalign.generate import GenerationSettings, generate_responses
    from mvalign.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    tokenizer = load_tokenizer(str(folder))
    for (name, path), omega in zip(adapters.items(), weights):
        model = PeftModel.from_pretrained(model, path, adapter_name=name)
        for module in model.modules():
            if isinstance(getattr(module, "scaling", None), dict) and name in module.scaling:
                module.scaling[name] *= omega
        model = model.merge_and_unload()
    one = GenerationSettings(max_new_tokens=tokens, batch_size=1)
    return [generate_responses(model, tokenizer, [p], one)[0] for p in prompts]


def demo_numbers(runs: list[str]) -> dict:
    """Seconds per optimizer step (median over every adapter's log) and stored points per run."""
    from mvalign.store import RunStore

    out = {}
    for run in map(Path, runs):
        if not (run / "summary.json").is_file():
            continue
        steps = [json.loads(line)["seconds"] for log in sorted(run.glob("train/*/*/log.jsonl"))
                 for line in log.read_text().splitlines() if line.strip()]
        summary = json.loads((run / "summary.json").read_text())
        out[run.name] = {"timings": summary["timings"], "median_step_seconds": statistics.median(steps) if steps else None,
                         "steps": len(steps), "points": len(RunStore(run).points("mva", "val"))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu.json"))
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-gpu"))
    ap.add_argument("--demo-runs", nargs="*", help="summarise these finished demo runs instead of timing the sweep")
    args = ap.parse_args()
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.is_file() else {}
    if args.demo_runs is not None:
        result["demo"] = demo_numbers(args.demo_runs)
    else:
        result["sweep"] = sweep(SETTINGS["quick" if args.quick else "full"], Path(args.work))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    json.dump(result, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
