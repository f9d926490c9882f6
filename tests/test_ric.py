"""Rewards-in-Context: the paper's preference-to-reward mapping, reward tags in the prompt, the SFT loss, and the
method end to end on the tiny model."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from common import TOY, naive_response_logprob, write_builtin_config
from mvalign.cli import app
from mvalign.config import load_config
from mvalign.methods import get_method
from mvalign.methods.ric import normalise, reward_tags, target_rewards, with_tags
from mvalign.rundir import RunDir
from mvalign.store import AdapterRef, RunStore
from mvalign.train.losses import SFTTerm
from mvalign.train.tokenize import collate_sequences, tokenize_sequences

runner = CliRunner()


def paper_mapping(rewards_list, preference):
    """Independent vectorised reference of the paper's preference-to-reward mapping (the rule its code calls
    'linf'): low/high = per-value min/max, targets low + min(n·w, 1)·(high − low), the argmax value at its high,
    rounded to one decimal."""
    z = np.asarray(rewards_list, dtype=float)
    w = np.asarray(preference, dtype=float)
    low, high = z.min(axis=1), z.max(axis=1)
    target = low + np.minimum(len(w) * w, 1.0) * (high - low)
    target[np.argmax(w)] = high[np.argmax(w)]
    return np.round(target, 1)


@pytest.mark.parametrize("w", [(0.0, 1.0), (0.2, 0.8), (0.5, 0.5), (0.7, 0.3), (1.0, 0.0), (0.4, 0.6)])
def test_target_rewards_match_the_papers_mapping(w):
    g = np.random.default_rng(0)
    raw = {"helpful": g.normal(0.3, 2.0, 200), "harmless": g.normal(-1.0, 0.5, 200)}
    z, stats = normalise(raw, 1)
    expected = paper_mapping([z["helpful"], z["harmless"]], np.array(w))
    got = target_rewards(dict(zip(("helpful", "harmless"), w)), stats, 1)
    assert [got["helpful"], got["harmless"]] == pytest.approx(list(expected), abs=1e-9)


def test_target_rewards_hand_computation():
    stats = {"a": {"low": -1.2, "high": 2.3}, "b": {"low": -0.8, "high": 1.5}, "c": {"low": -2.0, "high": 1.0}}
    # w = (0.2, 0.5, 0.3): top is b -> 1.5; a: -1.2 + min(0.6, 1) * 3.5 = 0.9; c: -2.0 + min(0.9, 1) * 3.0 = 0.7
    assert target_rewards({"a": 0.2, "b": 0.5, "c": 0.3}, stats, 1) == pytest.approx({"a": 0.9, "b": 1.5, "c": 0.7})
    # equal weights: every value asks for its maximum
    assert target_rewards({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, stats, 1) == pytest.approx({"a": 2.3, "b": 1.5, "c": 1.0})


def test_normalise_is_a_rounded_z_score():
    r = np.array([1.0, 2.0, 4.0, 7.0])
    z, stats = normalise({"v": r}, 2)
    expected = np.round((r - 3.5) / np.sqrt(np.mean((r - 3.5) ** 2)), 2)
    assert z["v"].tolist() == expected.tolist()
    assert stats["v"]["low"] == expected.min() and stats["v"]["high"] == expected.max() and stats["v"]["mean"] == 3.5


def test_reward_tags_and_where_they_go():
    tags = reward_tags({"helpful": 0.62, "harmless": -0.04}, 1)
    assert tags == "<helpful: 0.6> <harmless: 0.0>"  # -0.0 is written as 0.0
    assert with_tags("Tell me a joke.", tags) == "Tell me a joke.\n" + tags
    dialogue = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Greet me."})
    tagged = with_tags(dialogue, tags)
    assert tagged[2]["content"] == "Greet me.\n" + tags and tagged[:2] == dialogue[:2]
    assert dialogue[2]["content"] == "Greet me."  # the original is untouched


def test_sft_loss_is_the_token_mean_response_nll(tokenizer, tiny_llama):
    examples = [(p.prompt, p.chosen) for p in TOY[:3]] + [(TOY[-1].prompt, TOY[-1].rejected)]
    seqs = tokenize_sequences(tokenizer, examples, 64, 40)
    batch = collate_sequences(seqs, tokenizer.pad_token_id)
    loss, logs = SFTTerm()(tiny_llama, batch, torch.arange(len(seqs)), 0)
    total = sum(naive_response_logprob(tiny_llama, s.prompt, s.response) for s in seqs)
    tokens = sum(len(s.response) for s in seqs)
    assert loss.item() == pytest.approx(-total / tokens, abs=1e-5) and logs["sft_loss"] == pytest.approx(loss.item())


def test_ric_trains_one_model_and_evaluates_prompt_transforms(tmp_path, tiny_model_dir):
    sweep = {"simplex_step": 0.5, "val_prompts": 4, "test_prompts": 3, "max_new_tokens": 4, "bootstrap": 100}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep)
    refused = runner.invoke(app, ["train", str(path), "--method", "ric", "--value", "helpful"])
    assert refused.exit_code == 1 and "ric trains one model" in refused.output
    result = runner.invoke(app, ["run", str(path), "--method", "ric"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    cfg = load_config(path)
    rec = RunStore(run).get_vector(AdapterRef("ric", "ric"))
    # matched budget: n_values x dpo.max_steps steps at 2 x dpo.batch_size responses; chosen + rejected of every pair
    assert rec.steps == 2 * cfg.training.max_steps and rec.train_pairs == 2 * 2 * 8
    stats = json.loads(rec.metrics["reward_stats"])
    assert set(stats) == {"helpful", "harmless"} and all(s["low"] < s["high"] for s in stats.values())
    front = json.loads((run / "front-ric.json").read_text())
    val = [p for p in front["points"] if p["split"] == "val"]
    assert sorted(tuple(p["weights"].values()) for p in val) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert front["settings"]["candidates"].startswith("ric:") and front["training"]["steps"] == rec.steps
    # every candidate is the same adapter with its own prompt: stored under its own key, with its own targets
    plan = get_method("ric").plan(cfg, RunDir(run))
    keys = [c.prompt.key for c in plan.source.run(lambda cs: [])]
    assert len(set(keys)) == 3 and all(k.startswith("ric:<helpful: ") for k in keys)
    assert len({p.settings_key for p in RunStore(run).points("ric", "val")}) == 3
    again = runner.invoke(app, ["run", str(path), "--method", "ric"])  # resumable: nothing retrained
    assert again.exit_code == 0 and RunStore(run).get_vector(AdapterRef("ric", "ric")).created == rec.created
