"""The CLI end to end on a tiny local model: config, data, train (resume/skip), combine into a loadable checkpoint."""

import json

import pytest
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from common import assert_weights, expected_weights, write_builtin_config
from mvalign.cli import app
from mvalign.config import ConfigError, RunConfig, load_config
from mvalign.models import ModelLoadError, format_prompt, load_model
from mvalign.store import AdapterRef, RunStore

runner = CliRunner()


def write_value_data(path, flavour):
    rows = [{"prompt": f"Question {i} about {flavour}?", "chosen": f"A {flavour} answer {i}.", "rejected": "No."}
            for i in range(40)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path.name


@pytest.fixture
def run_config(tmp_path, tiny_model_dir):
    cfg = {
        "model": {"name": str(tiny_model_dir)},
        "values": [{"name": v, "data": {"path": write_value_data(tmp_path / f"{v}.jsonl", v), "limit": 8}}
                   for v in ("helpful", "harmless")],
        "lora": {"r": 2, "alpha": 4, "dropout": 0.0},
        "dpo": {"max_steps": 2, "batch_size": 4, "max_length": 64, "max_prompt_length": 32, "eval_pairs": 4},
        "run_dir": "run",
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_config_show_is_valid_yaml_config():
    result = runner.invoke(app, ["config", "--show"])
    assert result.exit_code == 0
    assert "# DPO temperature beta." in result.output
    cfg = RunConfig.model_validate(yaml.safe_load(result.output))
    assert cfg.training.beta == 0.1 and cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    # every method block with settings is shown, documented, with its defaults
    from mvalign.methods import REGISTRY

    blocks = {m.section.removeprefix("methods.") for m in REGISTRY.values() if m.section}
    assert set(cfg.methods) == blocks and cfg.methods["mva"]["penalty"] == "cka"
    assert "# `methods.mva` (read by mva and mva-orth" in result.output


def test_config_errors_name_the_field(tmp_path, run_config):
    raw = yaml.safe_load(run_config.read_text())
    raw["dpo"]["betta"] = 0.2
    raw["lora"]["r"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["config", "--check", str(bad)])
    assert result.exit_code == 1
    assert "dpo.betta: Extra inputs are not permitted" in result.output and "lora.r:" in result.output
    raw = yaml.safe_load(run_config.read_text())
    raw["values"][1]["name"] = "helpful"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="value names must be unique"):
        load_config(bad)
    cfg = load_config(run_config)
    assert cfg.run_dir == str((tmp_path / "run").resolve())  # relative to the config file
    with pytest.raises(ConfigError, match="no value named 'honest'"):
        cfg.value("honest")


def test_unknown_model_is_one_clear_error(tmp_path):
    from mvalign.config import ModelConfig

    with pytest.raises(ModelLoadError, match="not a model directory or .gguf file"):
        load_model(ModelConfig(name=str(tmp_path / "missing-model")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(ModelConfig(name=str(tmp_path / "empty")))


def test_format_prompt_chat_and_plain(tokenizer):
    assert format_prompt(tokenizer, "Hi") == "<user>Hi<eos><assistant>"
    dialogue = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Q"})
    assert (
        format_prompt(tokenizer, dialogue, use_chat_template=False) == "\n\nHuman: Hi\n\nAssistant: Yo\n\nHuman: Q\n\nAssistant:"
    )


def test_train_skip_and_combine_end_to_end(tmp_path, run_config, tiny_model_dir):
    result = runner.invoke(app, ["train", str(run_config), "--value", "helpful", "--value", "harmless"])
    assert result.exit_code == 0, result.output
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [s["value"] for s in summaries] == ["helpful", "harmless"]
    assert all(s["steps"] == 2 and s["train_pairs"] == 8 and 0 <= s["val_accuracy"] <= 1 for s in summaries)
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and "torch" in json.loads((run / "versions.json").read_text())
    store = RunStore(run)
    created = store.get_vector(AdapterRef("dpo", "helpful")).created

    # PEFT loads the adapter
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    PeftModel.from_pretrained(base, run / "adapters" / "dpo" / "helpful")

    # re-running skips finished vectors
    again = runner.invoke(app, ["train", str(run_config), "--value", "helpful"])
    assert again.exit_code == 0 and store.get_vector(AdapterRef("dpo", "helpful")).created == created

    out = tmp_path / "merged"
    result = runner.invoke(app, ["combine", str(run), "--weights", "helpful=0.8,harmless=1.2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dirs = [run / "adapters" / "dpo" / "helpful", run / "adapters" / "dpo" / "harmless"]
    assert_weights(merged, expected_weights(base, dirs, [0.8, 1.2]))
    assert json.loads((out / "mvalign_combination.json").read_text())["weights"] == {"helpful": 0.8, "harmless": 1.2}
    delta = sum((a - b).abs().sum().item() for a, b in zip(merged.parameters(), base.parameters()))
    assert delta > 0

    bad = runner.invoke(app, ["combine", str(run), "--weights", "helpful=0.8,honest=1", "--out", str(out)])
    assert bad.exit_code == 1 and "'honest' is not a value of this run" in bad.output
    bad = runner.invoke(app, ["combine", str(run), "--weights", "helpful:0.8", "--out", str(out)])
    assert bad.exit_code == 1 and "is not NAME=NUMBER" in bad.output


def test_run_dir_with_other_config_is_refused(tmp_path, run_config):
    assert runner.invoke(app, ["train", str(run_config), "--value", "helpful"]).exit_code == 0
    raw = yaml.safe_load(run_config.read_text())
    raw["dpo"]["beta"] = 0.5
    run_config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(run_config), "--value", "harmless"])
    assert result.exit_code == 1 and "different config (differs in: training)" in result.output  # dpo's new name
    assert (tmp_path / "run" / "adapters" / "dpo" / "helpful" / "adapter_model.safetensors").is_file()  # finished work kept
    raw["dpo"]["beta"] = 0.1
    raw["sweep"] = {"grid": [0.5, 2.0]}  # evaluation settings may change on a finished run
    run_config.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["train", str(run_config), "--value", "helpful"]).exit_code == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["sweep"]["grid"] == [0.5, 2.0]


def test_method_only_sections_may_change_until_their_methods_have_artifacts(tmp_path, run_config):
    assert runner.invoke(app, ["train", str(run_config), "--value", "helpful"]).exit_code == 0
    raw = yaml.safe_load(run_config.read_text())
    raw["decorrelation"] = {"alpha": 0.3}
    raw["baselines"] = {"steps_per_model": 3}
    run_config.write_text(yaml.safe_dump(raw))
    # only dpo vectors exist: neither section has been read by any trained artifact yet
    result = runner.invoke(app, ["train", str(run_config), "--method", "mva"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["methods"]["mva"]["alpha"] == 0.3
    raw["decorrelation"] = {"alpha": 0.5}
    run_config.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["train", str(run_config), "--value", "harmless"])
    assert result.exit_code == 1
    assert "differs in: methods.mva (read by the mva artifacts already there)" in result.output
    raw["decorrelation"] = {"alpha": 0.3}
    raw["baselines"] = {"steps_per_model": 1}  # no lw / modpo model yet: accepted
    run_config.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["train", str(run_config), "--value", "harmless"]).exit_code == 0


def test_bad_data_fails_before_training(tmp_path, run_config):
    (tmp_path / "harmless.jsonl").write_text(json.dumps({"prompt": "Hi", "chosen": "same", "rejected": "same"}) + "\n")
    result = runner.invoke(app, ["train", str(run_config), "--value", "harmless"])
    assert result.exit_code == 1 and "harmless.jsonl:1: chosen == rejected" in result.output
    assert not (tmp_path / "run" / "adapters" / "dpo" / "harmless").exists()


def test_mva_method_reuses_first_vector_and_diagnoses(tmp_path, run_config):
    raw = yaml.safe_load(run_config.read_text())
    raw["decorrelation"] = {"alpha": 2.0, "penalty": "cka", "target": "delta_w"}
    run_config.write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["train", str(run_config), "--value", "helpful"]).exit_code == 0  # plain DPO first
    result = runner.invoke(app, ["train", str(run_config), "--method", "mva"])
    assert result.exit_code == 0, result.output
    summaries = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [(s["method"], s["value"]) for s in summaries] == [("mva", "helpful"), ("mva", "harmless")]
    assert summaries[0]["reused"] == "dpo" and summaries[1]["decorrelated_against"] == "helpful"
    run = tmp_path / "run"
    log = [json.loads(line) for line in (run / "train" / "mva" / "harmless" / "log.jsonl").read_text().splitlines()]
    assert "cka_total" in log[-1] and "cka/layer1" in log[-1]
    assert not (run / "train" / "mva" / "helpful").exists()  # reused, not retrained

    result = runner.invoke(app, ["diagnose", str(run), "--method", "mva"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "diagnostics" / "interference-mva.json").read_text())
    assert report["values"] == ["harmless", "helpful"] and len(report["pairs"]) == 1
    assert (run / "diagnostics" / "interference-mva.png").stat().st_size > 1000
    bad = runner.invoke(app, ["diagnose", str(run), "--method", "dpo"])
    assert bad.exit_code == 1 and "at least two trained value vectors" in bad.output
    combined = runner.invoke(app, ["combine", str(run), "--weights", "helpful=1,harmless=1", "--out", str(tmp_path / "m")])
    assert combined.exit_code == 0 and json.loads((tmp_path / "m" / "mvalign_combination.json").read_text())["method"] == "mva"


def test_run_pipeline_reward_cli_and_report_on_tiny_model(tmp_path, tiny_model_dir):
    sweep = {"grid": [0.5, 2.0], "val_prompts": 4, "test_prompts": 3, "max_new_tokens": 4, "bootstrap": 100}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep)
    trained = runner.invoke(app, ["reward", "train", str(path)])
    assert trained.exit_code == 0, trained.output
    heads = [json.loads(line) for line in trained.stdout.splitlines() if line.startswith("{")]
    assert [h["value"] for h in heads] == ["helpful", "harmless"] and all(h["train_pairs"] == 60 for h in heads)
    evaluated = runner.invoke(app, ["reward", "eval", str(path)])
    assert evaluated.exit_code == 0, evaluated.output
    rows = [json.loads(line) for line in evaluated.stdout.splitlines() if line.startswith("{")]
    assert [r["data"] for r in rows] == ["helpful", "harmless"] and all(0 <= r["helpful"] <= 1 for r in rows)

    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    front = json.loads((run / "front.json").read_text())
    val = [p for p in front["points"] if p["split"] == "val"]
    assert sorted(tuple(p["weights"].values()) for p in val) == [(0.5, 0.5), (0.5, 2.0), (2.0, 0.5), (2.0, 2.0)]
    assert sum(p["pareto"] for p in val) == sum(p["split"] == "test" for p in front["points"])
    assert front["hypervolume"]["val"] >= 0 and len(front["reference_point"]) == 2
    assert (run / "report.md").read_text().startswith("# mvalign report")
    rewritten = runner.invoke(app, ["report", str(run)])
    assert rewritten.exit_code == 0 and (run / "front-mva.png").is_file()
    elsewhere = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "copy")])
    assert elsewhere.exit_code == 0 and (tmp_path / "copy" / "explorer.html").stat().st_size > 1_000_000  # plotly inlined


def test_run_dir_from_an_older_config_without_new_fields_is_accepted(tmp_path, run_config):
    assert runner.invoke(app, ["train", str(run_config), "--value", "helpful"]).exit_code == 0
    saved = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(saved.read_text())
    del old["methods"]  # as written by a version that did not know this section
    for v in old["values"]:
        del v["data"]["rows"]
    saved.write_text(yaml.safe_dump(old))
    assert runner.invoke(app, ["train", str(run_config), "--value", "harmless"]).exit_code == 0
