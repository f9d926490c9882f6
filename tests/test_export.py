"""Exports: ONE stacked PEFT adapter that equals the exact combination (any ω, several ranks, GPT-2 Conv1D), refusal
of adapters it cannot represent, the model card, and destination checks."""

import copy
import json
import os
import stat

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from typer.testing import CliRunner

from common import assert_weights, expected_weights, make_gpt2, save_random_adapter, write_builtin_config
from mvalign.cli import app
from mvalign.combine import combine, stacked_factors
from mvalign.config import ConfigError
from mvalign.export import parse_weights, write_peft_adapter
from mvalign.lora import AdapterError, load_lora_adapter

runner = CliRunner()
IDS = torch.tensor([[5, 17, 23, 42, 8, 61, 3, 30], [9, 9, 14, 70, 2, 44, 19, 6]])


def _three(tmp_path, base):
    return [save_random_adapter(base, tmp_path / "helpful", 1),
            save_random_adapter(base, tmp_path / "harmless", 2, r=8, alpha=4.0),
            save_random_adapter(base, tmp_path / "honest", 3, r=2, alpha=16.0, targets=["q_proj", "v_proj", "down_proj"])]


@pytest.mark.parametrize("weights", [(1.3, -0.7, 2.0), (0.0, 1.0, 0.5), (-1.0, -2.5, 4.0)])
def test_stacked_peft_adapter_equals_the_exact_combination(tmp_path, tiny_llama, weights):
    dirs = _three(tmp_path, tiny_llama)
    adapters = [load_lora_adapter(p) for p in dirs]
    out = tmp_path / "export"
    out.mkdir()
    write_peft_adapter(stacked_factors(adapters, weights), out, str(tmp_path / "base"))
    peft = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), out).eval()
    merged = combine(copy.deepcopy(tiny_llama), adapters, weights).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=IDS).logits, merged(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)
    # merging the exported adapter gives the float64 reference W0 + Σ ω_k s_k B_k A_k read from the raw files
    assert_weights(peft.merge_and_unload(), expected_weights(tiny_llama, dirs, weights), atol=1e-5)
    ranks = json.loads((out / "adapter_config.json").read_text())
    zero_dropped = sum(r for (r, w) in zip((4, 8, 2), weights) if w != 0)
    assert ranks["lora_alpha"] == ranks["r"] and all(ranks["alpha_pattern"][k] == v for k, v in ranks["rank_pattern"].items())
    assert max([ranks["r"], *ranks["rank_pattern"].values()]) == zero_dropped


def test_stacked_export_gpt2_conv1d_and_auto_peft_loading(tmp_path, tokenizer):
    base = make_gpt2(len(tokenizer))
    base_dir = tmp_path / "gpt2"
    base.save_pretrained(base_dir)
    dirs = [save_random_adapter(base, tmp_path / f"a{i}", i, r=2 + 2 * i, targets=["c_attn", "c_proj"],
                                fan_in_fan_out=True) for i in range(2)]
    weights = (1.7, -0.4)
    out = tmp_path / "export"
    out.mkdir()
    write_peft_adapter(stacked_factors([load_lora_adapter(p) for p in dirs], weights), out, str(base_dir))
    auto = AutoPeftModelForCausalLM.from_pretrained(out).eval()
    merged = combine(copy.deepcopy(base), [load_lora_adapter(p) for p in dirs], weights).eval()
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=IDS).logits, merged(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bias", "modules_to_save", "embedding"])
def test_adapters_that_are_not_plain_lora_are_refused(tmp_path, tiny_llama, kind):
    kw = {"bias": {"bias": "all"}, "modules_to_save": {"modules_to_save": ["lm_head"]},
          "embedding": {"target_modules": ["q_proj", "embed_tokens"]}}[kind]
    cfg = LoraConfig(r=2, lora_alpha=4, **({"target_modules": ["q_proj"]} | kw))
    get_peft_model(copy.deepcopy(tiny_llama), cfg).save_pretrained(tmp_path / kind)
    with pytest.raises(AdapterError, match=str(tmp_path / kind)):
        load_lora_adapter(tmp_path / kind)


def test_weights_text_rejects_duplicates_unknown_values_and_non_finite_numbers():
    assert parse_weights("helpful=1,harmless=-0.5", ["helpful", "harmless"]) == {"helpful": 1.0, "harmless": -0.5}
    with pytest.raises(ConfigError, match="'helpful' is given twice"):
        parse_weights("helpful=1,helpful=2", ["helpful", "harmless"])
    with pytest.raises(ConfigError, match="'../dpo/helpful' is not a value of this run"):
        parse_weights("../dpo/helpful=1", ["helpful", "harmless"])
    for bad in ("nan", "inf", "-inf", "1e999"):
        with pytest.raises(ConfigError, match=f"'helpful={bad}': the weight of 'helpful' must be a finite number"):
            parse_weights(f"helpful={bad}", ["helpful", "harmless"])


def test_combine_peft_export_with_card_and_destination_checks(tmp_path, tiny_model_dir):
    path = write_builtin_config(tmp_path, tiny_model_dir, 8)
    assert runner.invoke(app, ["train", str(path)]).exit_code == 0
    run, out = tmp_path / "run", tmp_path / "export"
    args = ["combine", str(run), "--weights", "helpful=1.5,harmless=-0.5", "--format", "peft"]
    done = runner.invoke(app, [*args, "--out", str(out)])
    assert done.exit_code == 0, done.output
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["library_name"] == "peft" and header["base_model"] == tiny_model_dir.name  # no local paths
    assert {"mvalign", "dpo", "helpful", "harmless"} <= set(header["tags"])
    assert "helpful = 1.5, harmless = -0.5" in card and "combine" in card and "## Training data" in card, card
    auto = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # the base path is recorded in the adapter config
    merged = tmp_path / "merged"
    assert runner.invoke(app, [*args[:-2], "--out", str(merged)]).exit_code == 0
    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(merged).eval()
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=IDS).logits, full(input_ids=IDS).logits, atol=1e-5, rtol=1e-5)
    assert yaml.safe_load((merged / "README.md").read_text().split("---")[1])["library_name"] == "transformers"
    # destinations: a non-empty folder needs --overwrite; the run dir, the base model's folder and a file never
    before = (out / "adapter_model.safetensors").read_bytes()
    for dest, msg in [(out, "not empty"), (run / "x", "inside the run directory"), (tiny_model_dir, "base model's own"),
                      (out / "README.md", "is a file")]:
        refused = runner.invoke(app, [*args, "--out", str(dest)])
        assert refused.exit_code == 1 and msg in refused.output, (dest, refused.output)
    assert (out / "adapter_model.safetensors").read_bytes() == before
    again = runner.invoke(app, [*args, "--out", str(out), "--overwrite"])
    assert again.exit_code == 0 and (out / "adapter_model.safetensors").read_bytes() == before
    # issue 33: --overwrite never deletes a folder holding the run, the base model or the cache; no symlinks
    (tmp_path / "link").symlink_to(out)
    for dest, msg in [(tmp_path, "holds the run directory"), (tiny_model_dir.parent, "holds the base model"),
                      (tmp_path / "link", "is a symbolic link")]:
        refused = runner.invoke(app, [*args, "--out", str(dest), "--overwrite"])
        assert refused.exit_code == 1 and msg in refused.output, (dest, refused.output)
    assert (run / "store.sqlite").is_file() and (tiny_model_dir / "config.json").is_file()
    old = os.umask(0o022)
    try:
        assert runner.invoke(app, [*args, "--out", str(tmp_path / "shared")]).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755  # the umask's mode, not mkdtemp's 0700
    assert str(tmp_path) not in (tmp_path / "shared" / "README.md").read_text()  # no local paths in the card


def test_push_to_hub_offline_is_refused_and_the_export_kept(tmp_path, tiny_model_dir, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    path = write_builtin_config(tmp_path, tiny_model_dir, 8)
    assert runner.invoke(app, ["train", str(path), "--value", "helpful"]).exit_code == 0
    out = tmp_path / "export"
    pushed = runner.invoke(app, ["combine", str(tmp_path / "run"), "--weights", "helpful=2", "--format", "peft",
                                 "--out", str(out), "--push-to-hub", "someone/mvalign-test"])
    assert pushed.exit_code == 1 and "offline" in pushed.output and str(out) in pushed.output
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
