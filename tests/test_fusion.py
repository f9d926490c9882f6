"""Decode-time fusion (`mod`, issue 36): the fused greedy responses and answer likelihoods equal a direct computation
on separately merged value models (weights from the float64 reference merge), step by step without a KV cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from common import TOY, expected_weights, save_random_adapter
from mvalign.combine import load_lora_adapter
from mvalign.fusion import FuseLogits, direction, generate_fused
from mvalign.generate import GenerationSettings, format_texts
from mvalign.likelihood import log_likelihoods
from mvalign.mixed import MixedLoRA

POINTS = [(1.0, 0.5), (0.2, 0.9), (2.0, 1.0), (1.0, -0.4), (0.0, 1.0)]  # (2, 1) is on (1, 0.5)'s ray


@pytest.fixture
def two(tmp_path, tiny_llama):
    return [save_random_adapter(tiny_llama, tmp_path / "helpful", 1, alpha=16.0),
            save_random_adapter(tiny_llama, tmp_path / "harmless", 2, r=8, alpha=24.0)]


def value_models(base, dirs):
    """π_k = W0 + ΔW_k, each merged separately from the raw files in float64 (`common.expected_weights`)."""
    models = []
    for k in range(len(dirs)):
        model = copy.deepcopy(base)
        ref = expected_weights(base, dirs, [float(k == j) for j in range(len(dirs))])
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(ref[name]).to(p.dtype))
        models.append(model.eval())
    return models


@torch.no_grad()
def fused_greedy(models, omega, tokenizer, text, max_new):
    """Direct: at every step each value model reads the whole sequence (no cache), logits fused as Σ ω_k logits_k
    in float64, argmax, stop at EOS."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    new = []
    for _ in range(max_new):
        seq = torch.cat([ids, torch.tensor([new], dtype=torch.long)], dim=1) if new else ids
        fused = sum(w * m(input_ids=seq).logits[0, -1].double() for w, m in zip(omega, models))
        tok = int(fused.argmax())
        if tok == tokenizer.eos_token_id:
            break
        new.append(tok)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_fuse_logits_processor_is_the_weighted_group_sum():
    scores = torch.randn(5, 7)
    out = FuseLogits([0, 0, 1, 2, 2], [0.5, 2.0, 1.0, -1.0, 3.0])(None, scores.clone())
    want0 = 0.5 * scores[0] + 2.0 * scores[1]
    want2 = -1.0 * scores[3] + 3.0 * scores[4]
    for r, want in ((0, want0), (1, want0), (2, scores[2]), (3, want2), (4, want2)):
        torch.testing.assert_close(out[r], want)


def test_fused_greedy_equals_direct_per_value_computation(tokenizer, tiny_llama, two):
    settings = GenerationSettings(max_new_tokens=10, batch_size=4)
    texts = format_texts(tokenizer, [t.prompt for t in TOY[:4]], use_chat_template=False)
    mixed = MixedLoRA(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in two])
    # 3 rows per pass: groups of 2 rows (or 1 where ω_k = 0) are never split
    got = generate_fused(mixed, tokenizer, POINTS, [texts] * len(POINTS), settings, rows_per_pass=3, chat=False)
    models = value_models(tiny_llama, two)
    for p, omega in enumerate(POINTS):
        want = [fused_greedy(models, omega, tokenizer, t, settings.max_new_tokens) for t in texts]
        assert got[p] == want, omega
    assert any(r for row in got for r in row)  # not all empty
    assert got[0] == got[2]  # one ray, one greedy generation
    assert got[0] != got[3] or got[0] != got[1]  # the weights matter


def test_fusion_refuses_zero_and_sampling(tokenizer, tiny_llama, two):
    mixed = MixedLoRA(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in two])
    with pytest.raises(ValueError, match="ω_k ≠ 0"):
        generate_fused(mixed, tokenizer, [(0.0, 0.0)], [["Q"]], GenerationSettings(max_new_tokens=2), 4, False)
    with pytest.raises(ValueError, match="greedy"):
        generate_fused(mixed, tokenizer, [(1.0, 0.0)], [["Q"]], GenerationSettings(do_sample=True), 4, False)
    assert direction((2.0, 1.0)) == direction((1.0, 0.5)) != direction((-2.0, -1.0))


def test_fused_likelihood_equals_direct(tokenizer, tiny_llama, two):
    mixed = MixedLoRA(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in two])
    models = value_models(tiny_llama, two)
    seqs = []
    for pair in TOY[:5]:
        p = tokenizer(pair.prompt)["input_ids"]
        a = tokenizer(" " + pair.chosen, add_special_tokens=False)["input_ids"]
        seqs.append((p + a, len(p)))
    for omega in [(1.0, 0.5), (2.0, 1.0), (0.7, -0.3)]:  # scale matters here (a temperature), unlike greedy
        got = log_likelihoods(mixed.model, seqs, batch_size=2, mixed=mixed, weights=omega,
                              pad_id=tokenizer.pad_token_id, fused=True)
        want = []
        for ids, n in seqs:
            with torch.no_grad():
                x = torch.tensor([ids])
                fused = sum(w * m(input_ids=x).logits[0].double() for w, m in zip(omega, models))
                logp = torch.log_softmax(fused, dim=-1)
            want.append(sum(logp[t - 1, ids[t]].item() for t in range(n, len(ids))))
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-3)
    assert not np.allclose(log_likelihoods(mixed.model, seqs, mixed=mixed, weights=(1.0, 0.5), fused=True),
                           log_likelihoods(mixed.model, seqs, mixed=mixed, weights=(2.0, 1.0), fused=True))


def test_mod_method_end_to_end(tmp_path, tiny_model_dir):
    """`mod` on a tiny run: its points are stored apart from the weight combinations of the same vectors; at ω = e_k
    the fusion is value model k alone, so its responses equal mva-nohsic's there; pick refuses to export or preset
    a fusion; serve refuses the method."""
    from typer.testing import CliRunner

    from mvalign.cli import app
    from mvalign.config import ConfigError, load_config
    from mvalign.evaluate import evaluate_method
    from mvalign.methods import get_method, train_method
    from mvalign.pick import pick_run
    from mvalign.rundir import RunDir
    from mvalign.serve import load_server
    from mvalign.store import RunStore
    from mvalign.testing import write_builtin_config

    sweep = {"grid": [0.0, 1.0, 2.0], "val_prompts": 4, "test_prompts": 3, "max_new_tokens": 6, "bootstrap": 100,
             "rows_per_pass": 5}
    dpo = {"max_steps": 4, "lr": 0.05, "batch_size": 4, "max_length": 96, "max_prompt_length": 64, "eval_pairs": 4}
    cfg = load_config(write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep, dpo=dpo))
    train_method(cfg, "mod", progress=False)  # trains the dpo vectors it fuses
    fused = evaluate_method(cfg, "mod", progress=False, primary=False)
    plain = evaluate_method(cfg, "mva-nohsic", progress=False, primary=False)
    assert fused.settings.candidates == "grid, decode-time fusion"
    store = RunStore(RunDir.of(cfg).root)
    recs = {}
    for r in store.points("dpo", "val"):
        recs.setdefault(tuple(sorted(r.label.items())), []).append(r)
    assert len(recs) == 8 and all(len(v) == 2 for v in recs.values())  # each ω twice: fused and merged
    for label, (a, b) in recs.items():
        if sorted(w for _, w in label) == [0.0, 1.0]:  # ω = e_k: the fusion is one value model
            assert a.responses == b.responses, label
    assert any(a.responses != b.responses for a, b in recs.values())
    assert {tuple(sorted(p.weights.items())) for p in fused.points if p.split == "val"} == set(recs)
    assert plain.hypervolume.val is not None

    answer = pick_run(RunDir.of(cfg).root, "helpful", [], None, ["mod"], 0)
    assert answer["method"] == "mod" and answer["exportable"] is False
    assert get_method("mod").fused and not get_method("mod").exportable and get_method("mva-nohsic").exportable
    with pytest.raises(ConfigError, match="decode-time"):
        load_server(RunDir.of(cfg).root, "mod")
    out = CliRunner().invoke(app, ["pick", str(RunDir.of(cfg).root), "--maximize", "helpful", "--method", "mod",
                                   "--export", str(tmp_path / "x")])
    assert out.exit_code == 1 and "decode-time fusion" in out.output and not (tmp_path / "x").exists()
