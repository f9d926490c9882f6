"""Baselines (seqt, lw, modpo, soup, MVA ablations) and `mvalign compare`: losses by hand, training on a tiny model."""

import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from typer.testing import CliRunner

from common import hypervolume_2d, write_builtin_config
from mvalign.cli import app
from mvalign.config import ConfigError, load_config
from mvalign.data import load_value_splits
from mvalign.methods import REGISTRY, get_method, method_names, train_method
from mvalign.methods.modpo import margins
from mvalign.methods.perweight import preference_weights
from mvalign.models import cache_root, load_model
from mvalign.rundir import RunDir
from mvalign.store import AdapterRef, RunStore
from mvalign.train.dpo import dpo_loss, loss_weighting_pair_weights, modpo_margins
from mvalign.train.logprobs import compute_logprobs
from mvalign.train.tokenize import tokenize_pairs

runner = CliRunner()


def _logps(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=g, dtype=torch.float64) * 20 + 1) for _ in range(4)]


def _hand_dpo(pc, pr, rc, rr, beta, margin=0.0, scale=1.0):
    z = scale * (beta * ((pc - rc) - (pr - rr)) - margin)
    return -math.log(1 / (1 + math.exp(-z)))


def test_loss_weighting_equals_weighted_sum_of_per_dataset_dpo_losses():
    pc, pr, rc, rr = _logps(5, 0)
    sizes, w, beta = [2, 3], [0.25, 0.75], 0.1
    weights = loss_weighting_pair_weights(sizes, w)
    assert weights.tolist() == pytest.approx([0.25 * 5 / 2] * 2 + [0.75 * 5 / 3] * 3)
    hand = [_hand_dpo(*(t[i].item() for t in (pc, pr, rc, rr)), beta) for i in range(5)]
    expected = 0.25 * sum(hand[:2]) / 2 + 0.75 * sum(hand[2:]) / 3
    assert dpo_loss(pc, pr, rc, rr, beta, weights=weights.double()).loss.item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="weights"):
        loss_weighting_pair_weights([2, 3], [1.0])
    with pytest.raises(ValueError, match="needs pairs"):
        loss_weighting_pair_weights([0, 3], [0.5, 0.5])


def test_modpo_margin_and_scale_against_hand_computation():
    pc, pr, rc, rr = _logps(4, 1)
    g = torch.Generator().manual_seed(2)
    other_c, other_r = torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g)
    w = {"helpful": 0.4, "harmless": 0.35, "honest": 0.25}  # trained on helpful; harmless and honest in the margin
    margins = modpo_margins(other_c, other_r, [w["harmless"], w["honest"]])
    for i in range(4):
        hand_m = 0.35 * (other_c[i, 0] - other_r[i, 0]).item() + 0.25 * (other_c[i, 1] - other_r[i, 1]).item()
        assert margins[i].item() == pytest.approx(hand_m, rel=1e-6)
    beta = 0.1
    out = dpo_loss(pc, pr, rc, rr, beta, margins=margins.double(), scale=1 / w["helpful"])
    hand = [_hand_dpo(*(t[i].item() for t in (pc, pr, rc, rr)), beta, margins[i].item(), 1 / 0.4) for i in range(4)]
    assert out.loss.item() == pytest.approx(sum(hand) / 4, rel=1e-9)
    with pytest.raises(ValueError, match="margin rewards"):
        modpo_margins(other_c, other_r, [0.5])


def test_preference_weights_default_and_validation(tmp_path, tiny_model_dir):
    cfg = load_config(write_builtin_config(tmp_path, tiny_model_dir, 8, sweep={"simplex_step": 0.25}))
    lw = get_method("lw")
    assert [tuple(w.values()) for w in preference_weights(cfg, "lw", lw.options(cfg))] == [
        (0.25, 0.75), (0.5, 0.5), (0.75, 0.25)]
    for bad in ({"helpful": 0.7, "harmless": 0.7}, {"helpful": 1.0, "honest": 0.0}, {"helpful": 1.5, "harmless": -0.5}):
        for section in ({"baselines": {"weights": [bad]}}, {"methods": {"lw": {"weights": [bad]}}}):  # earlier name too
            cfg = load_config(write_builtin_config(tmp_path, tiny_model_dir, 8, **section))
            with pytest.raises(ConfigError, match=r"methods.lw.weights\[0\]"):
                preference_weights(cfg, "lw", lw.options(cfg))


def test_seqt_continues_stage_one_on_the_second_value(tmp_path, tiny_model_dir):
    path = write_builtin_config(tmp_path, tiny_model_dir, 8)
    cfg = load_config(path)
    stages = train_method(cfg, "seqt")
    run = tmp_path / "run"
    assert [r.name for r in stages] == ["helpful", "harmless"]
    # stage 1 is the plain DPO vector of the first value, byte for byte
    dpo_file = RunDir(run).adapter(AdapterRef("dpo", "helpful")) / "adapter_model.safetensors"
    stage_one = RunDir(run).adapter(AdapterRef("seqt", "helpful")) / "adapter_model.safetensors"
    assert stage_one.read_bytes() == dpo_file.read_bytes()
    # stage 2 trained on the second value's pairs, starting from stage 1 (not from a fresh init)
    harmless_train = load_value_splits(cfg.value("harmless").data, "harmless", cfg.split.seed, cfg.split.train, cfg.split.val)[
        "train"
    ]
    assert stages[1].train_pairs == len(harmless_train) and stages[1].metrics["continued_from"] == "helpful"
    one = load_file(str(dpo_file))
    two = load_file(str(RunDir(run).adapter(AdapterRef("seqt", "harmless")) / "adapter_model.safetensors"))
    steps, lr = cfg.training.max_steps, cfg.training.lr
    for name, a in one.items():
        if "lora_A" in name:  # random init of stage 1; a fresh adapter would draw different values
            assert (two[name] - a).abs().max().item() <= 1.5 * lr * steps
            assert a.abs().max().item() > 100 * lr * steps


def test_modpo_implicit_margins_match_peft_log_probs(tmp_path, tiny_model_dir):
    cfg = load_config(write_builtin_config(tmp_path, tiny_model_dir, 8))
    train_method(cfg, "dpo", ["harmless"])
    run = tmp_path / "run"
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    pairs = load_value_splits(cfg.value("helpful").data, "helpful", cfg.split.seed, cfg.split.train, cfg.split.val)["train"][:6]
    tok = tokenize_pairs(tokenizer, pairs, cfg.training.max_length, cfg.training.max_prompt_length, True)
    w = {"helpful": 0.3, "harmless": 0.7}
    assert get_method("modpo").options(cfg).margin == "implicit"  # the default
    got = margins(cfg, RunDir(run), model, tok, tokenizer.pad_token_id, pairs, ["harmless"], w, tmp_path / "c")
    fresh, _ = load_model(cfg.model, cache_root(cfg.cache_dir))
    peft = PeftModel.from_pretrained(fresh, RunDir(run).adapter(AdapterRef("dpo", "harmless")))
    pc, pr = compute_logprobs(peft, tok, tokenizer.pad_token_id)
    with peft.disable_adapter():
        rc, rr = compute_logprobs(peft, tok, tokenizer.pad_token_id)
    expected = 0.7 * cfg.training.beta * ((pc - rc) - (pr - rr))
    assert torch.allclose(got, expected, atol=1e-5) and expected.abs().max() > 0
    # only the pairs a step-limited training visits: the same numbers there, NaN elsewhere
    part = margins(cfg, RunDir(run), model, tok, tokenizer.pad_token_id, pairs, ["harmless"], w, tmp_path / "c", [4, 1])
    assert torch.allclose(part[[1, 4]], expected[[1, 4]], atol=1e-5) and part[[0, 2, 3, 5]].isnan().all()


def test_every_method_trains_evaluates_and_compares(tmp_path, tiny_model_dir):
    sweep = {"grid": [0.5, 1.0], "simplex_step": 0.5, "val_prompts": 4, "test_prompts": 3, "max_new_tokens": 4,
             "bootstrap": 100}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep,
                                baselines={"weights": [{"helpful": 0.5, "harmless": 0.5}], "steps_per_model": 2})
    methods = method_names()
    args = ["run", str(path)] + [a for m in methods for a in ("--method", m)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    fronts = {m: json.loads((run / f"front-{m}.json").read_text()) for m in methods}

    def val_weights(m):
        return sorted(tuple(p["weights"].values()) for p in fronts[m]["points"] if p["split"] == "val")
    box = [(0.5, 0.5), (0.5, 1.0), (1.0, 0.5), (1.0, 1.0)]
    simplex = [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert val_weights("dpo") == [(0.0, 1.0), (1.0, 0.0)]
    assert val_weights("soup") == val_weights("vcsoup") == val_weights("mva-convex") == simplex
    assert val_weights("mva") == val_weights("mva-nohsic") == val_weights("mva-orth") == box
    assert val_weights("seqt") == [(1.0, 0.0), (1.0, 1.0)]
    assert val_weights("lw") == val_weights("modpo") == [(0.5, 0.5)]
    assert val_weights("ric") == simplex  # one model, one prompt transform per simplex w
    # methods sharing vectors share evaluations: dpo, soup and mva-nohsic stored under "dpo"
    stored = {tuple(sorted(p.label.items())) for p in RunStore(run).points("dpo", "val")}
    assert len(stored) == 6
    assert fronts["soup"]["training"] == fronts["mva-nohsic"]["training"] == fronts["dpo"]["training"]
    assert fronts["lw"]["training"]["steps"] == 2 and fronts["mva"]["training"]["adapters"] == 2
    assert all(f["training"]["tokens"] > 0 for f in fronts.values())
    orth = RunStore(run).get_vector(AdapterRef("mva-orth", "harmless"))
    assert orth.metrics["penalty"] == "orth-normalised"

    diagnosed = runner.invoke(app, ["diagnose", str(run)])  # every method whose adapters are value vectors
    assert diagnosed.exit_code == 0, diagnosed.output
    own_value_vectors = [m.name for m in REGISTRY.values() if m.kind == "value-vectors" and m.train is not None]
    assert sorted(p.name for p in (run / "diagnostics").glob("*.json")) == sorted(
        f"interference-{m}.json" for m in own_value_vectors)

    out = tmp_path / "cmp"
    compared = runner.invoke(app, ["compare", str(run), "--out", str(out)])
    assert compared.exit_code == 0, compared.output
    table = json.loads((out / "compare.json").read_text())
    assert sorted(r["method"] for r in table["rows"]) == sorted(methods)
    tests = [tuple(p["rewards"][v] for v in ("helpful", "harmless")) for f in fronts.values() for p in f["points"]
             if p["split"] == "test"]
    base = fronts["dpo"]["base"]["rewards"]
    ref = [min([t[i] for t in tests] + [base[v]]) for i, v in enumerate(("helpful", "harmless"))]
    assert table["reference_point"] == pytest.approx(ref)
    for row in table["rows"]:
        pts = [tuple(p["rewards"][v] for v in ("helpful", "harmless")) for p in fronts[row["method"]]["points"]
               if p["split"] == "test"]
        assert row["hypervolume_test"] == pytest.approx(hypervolume_2d(pts, ref), abs=1e-9)
        assert row["best"]["helpful"] == pytest.approx(max(p[0] for p in pts))
    assert (out / "compare.png").stat().st_size > 1000 and "| mva |" in (out / "compare.md").read_text()
    bad = runner.invoke(app, ["compare", str(run), "--reference", "1,2,3"])
    assert bad.exit_code == 1 and "--reference" in bad.output


def test_modpo_reward_margins_are_the_other_judges_score_gaps(tmp_path, tiny_model_dir):
    from mvalign.rewards import load_reward_models

    cfg = load_config(write_builtin_config(tmp_path, tiny_model_dir, 8, baselines={"modpo_margin": "reward"}))
    run = tmp_path / "run"
    model, tokenizer = load_model(cfg.model, cache_root(cfg.cache_dir))
    pairs = load_value_splits(cfg.value("helpful").data, "helpful", cfg.split.seed, cfg.split.train, cfg.split.val)["train"][:5]
    tok = tokenize_pairs(tokenizer, pairs, cfg.training.max_length, cfg.training.max_prompt_length, True)
    w = {"helpful": 0.6, "harmless": 0.4}
    margin = get_method("modpo").options(cfg).margin  # "reward", given under the earlier name baselines.modpo_margin
    assert margin == "reward"
    got = margins(cfg, RunDir(run), model, tok, tokenizer.pad_token_id, pairs, ["harmless"], w, tmp_path / "c",
                  margin=margin)
    judge = load_reward_models(cfg)["harmless"]
    prompts = [p.prompt for p in pairs]
    gap = judge.score(prompts, [p.chosen for p in pairs]) - judge.score(prompts, [p.rejected for p in pairs])
    assert torch.allclose(got, 0.4 * torch.as_tensor(gap, dtype=torch.float32), atol=1e-6) and gap.std() > 0
    part = margins(cfg, RunDir(run), model, tok, tokenizer.pad_token_id, pairs, ["harmless"], w, tmp_path / "c", [3, 0],
                   margin)
    assert torch.allclose(part[[0, 3]], got[[0, 3]], atol=1e-6) and part[[1, 2, 4]].isnan().all()
