import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from common import TOY, make_gpt2, naive_response_logprob
from mvalign.config import DPOSettings, LoraSettings
from mvalign.lora import add_value_adapter
from mvalign.train.dpo import dpo_loss
from mvalign.train.logprobs import compute_logprobs, pair_logprobs, reference_logprobs
from mvalign.train.losses import PenaltyTerm, dpo_objective
from mvalign.train.tokenize import collate_pairs, tokenize_pairs
from mvalign.train.trainer import train_adapter, trainable_state


def test_tokenize_masks_and_truncation(tokenizer):
    (tp,) = tokenize_pairs(tokenizer, [TOY[-1]], max_length=40, max_prompt_length=20)
    prompt_text = tokenizer.apply_chat_template(TOY[-1].messages, tokenize=False, add_generation_prompt=True)
    full_prompt = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    assert len(full_prompt) > 20 and list(tp.prompt) == full_prompt[-20:]  # long prompts keep their end
    assert tokenizer.decode(tp.chosen) == "Good morning!<eos>" and tp.rejected[-1] == tokenizer.eos_token_id
    batch = collate_pairs([tp], tokenizer.pad_token_id)
    row = batch["input_ids"][0][batch["response_mask"][0].bool()]
    assert row.tolist() == list(tp.chosen)
    (short,) = tokenize_pairs(tokenizer, [TOY[-1]], max_length=24, max_prompt_length=20)
    assert len(short.prompt) + len(short.chosen) == 24


class Wrapped(torch.nn.Module):
    """Like DDP's wrapper: the model is `.module` and none of its attributes show (the full-forward path)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, **kwargs):
        return self.module(**kwargs)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "peft", "wrapped"])
def test_sequence_logprobs_match_naive(tokenizer, tiny_llama, arch):
    model = {"llama": tiny_llama, "gpt2": make_gpt2(len(tokenizer)), "wrapped": Wrapped(tiny_llama),
             "peft": add_value_adapter(copy.deepcopy(tiny_llama), LoraSettings(r=2, alpha=4, dropout=0.0), 0)}[arch]
    model.eval()
    toks = tokenize_pairs(tokenizer, TOY[:3] + TOY[-1:], 64, 40)
    chosen, rejected = compute_logprobs(model, toks, tokenizer.pad_token_id, batch_size=4)
    model = getattr(model, "module", model)
    for i, tp in enumerate(toks):
        assert chosen[i].item() == pytest.approx(naive_response_logprob(model, tp.prompt, tp.chosen), abs=1e-4)
        assert rejected[i].item() == pytest.approx(naive_response_logprob(model, tp.prompt, tp.rejected), abs=1e-4)


def test_dpo_loss_hand_computation():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    rc, rr = torch.tensor([-1.2, -2.0]), torch.tensor([-1.4, -1.5])
    # logits: 0.1 * ((-1.0 + 1.2) - (-1.5 + 1.4)) = 0.03 and 0.1 * ((0) - (0.5)) = -0.05
    nll = [math.log1p(math.exp(-0.03)), math.log1p(math.exp(0.05))]
    out = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert out.loss.item() == pytest.approx(sum(nll) / 2, abs=1e-6)
    assert out.accuracy.item() == 0.5
    assert out.chosen_rewards.tolist() == pytest.approx([0.02, 0.0], abs=1e-6)
    weighted = dpo_loss(pc, pr, rc, rr, beta=0.1, weights=torch.tensor([2.0, 0.0]))
    assert weighted.loss.item() == pytest.approx(2 * nll[0] / 2, abs=1e-6)
    margin = dpo_loss(pc, pr, rc, rr, beta=0.1, margins=torch.tensor([0.03, -0.05]))
    assert margin.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # margins cancel the logits exactly


def test_reference_cache_equals_recomputation(tmp_path, tokenizer, tiny_llama):
    toks = tokenize_pairs(tokenizer, TOY, 64, 40)
    base_c, base_r = compute_logprobs(tiny_llama, toks, tokenizer.pad_token_id)
    peft = add_value_adapter(copy.deepcopy(tiny_llama), LoraSettings(r=2, alpha=4, dropout=0.0), 0)
    with torch.no_grad():  # make the adapter non-zero: the reference must still be the base model
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_()
    assert not torch.allclose(compute_logprobs(peft, toks, tokenizer.pad_token_id)[0], base_c)
    c1, r1 = reference_logprobs(peft, toks, tokenizer.pad_token_id, tmp_path)
    files = list((tmp_path / "ref_logps").glob("*.safetensors"))
    assert len(files) == 1
    torch.testing.assert_close(c1, base_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(r1, base_r, atol=1e-5, rtol=0)
    cached = load_file(files[0])
    assert torch.equal(cached["chosen"], c1)
    c2, _ = reference_logprobs(peft, toks, tokenizer.pad_token_id, tmp_path)  # served from the cache
    assert torch.equal(c2, c1)
    reference_logprobs(peft, toks[:-1], tokenizer.pad_token_id, tmp_path)  # other data: another entry
    assert len(list((tmp_path / "ref_logps").glob("*.safetensors"))) == 2


def _setup(tokenizer, tiny_llama, tmp_path, dropout=0.0):
    model = add_value_adapter(copy.deepcopy(tiny_llama), LoraSettings(r=4, alpha=8, dropout=dropout), seed=0)
    toks = tokenize_pairs(tokenizer, TOY, 64, 40)
    ref = reference_logprobs(model, toks, tokenizer.pad_token_id, tmp_path / "cache")
    return model, toks, ref


def test_dpo_steps_raise_reward_accuracy(tmp_path, tokenizer, tiny_llama):
    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    before = dpo_loss(*compute_logprobs(model, toks, tokenizer.pad_token_id), *ref, 0.1)
    settings = DPOSettings(lr=2e-2, max_steps=15, batch_size=4, scheduler="constant", save_every=100)
    result = train_adapter(
        model, dpo_objective(toks, *ref, settings.beta), settings, tmp_path / "run", tokenizer.pad_token_id, progress=False
    )
    after = dpo_loss(*compute_logprobs(model, toks, tokenizer.pad_token_id), *ref, 0.1)
    assert before.accuracy.item() == 0.0  # policy == reference at init: every implicit reward is 0
    assert after.accuracy.item() >= 0.8 and after.loss.item() < before.loss.item() - 0.05
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 16)) and result.steps == 15
    assert {"loss", "dpo_loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "lr"} <= log[0].keys()


def _killed_at_step_3(model, toks, ref, settings, out, pad_id) -> None:
    """Train with batch_size 2 until a KeyboardInterrupt in the third micro-batch (step 3), as a kill would."""
    calls = {"n": 0}

    def crash_at_step_3(m, micro):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return torch.zeros(()), {}

    with pytest.raises(KeyboardInterrupt):
        train_adapter(model, dpo_objective(toks, *ref, settings.beta, extra=[PenaltyTerm(crash_at_step_3)]), settings,
                      out, pad_id, progress=False)


def test_resume_continues_exactly(tmp_path, tokenizer, tiny_llama):
    settings = DPOSettings(lr=1e-2, max_steps=4, batch_size=2, save_every=2, scheduler="linear")
    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path, dropout=0.1)
    train_adapter(
        model, dpo_objective(toks, *ref, settings.beta), settings, tmp_path / "straight", tokenizer.pad_token_id, progress=False
    )
    straight = trainable_state(model)

    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path, dropout=0.1)
    _killed_at_step_3(model, toks, ref, settings, tmp_path / "killed", tokenizer.pad_token_id)
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["step"] == 2
    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path, dropout=0.1)  # a fresh process
    result = train_adapter(
        model, dpo_objective(toks, *ref, settings.beta), settings, tmp_path / "killed", tokenizer.pad_token_id, progress=False
    )
    assert result.steps == 4
    resumed = trainable_state(model)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0, msg=name)


def test_a_checkpoint_resumes_only_on_its_own_examples(tmp_path, tokenizer, tiny_llama):
    """A checkpoint of a training on some examples (e.g. VC-soup's pairs before its judges were refit) is refused,
    with its folder named, by a training on other examples; the same examples resume it; a checkpoint from before the
    digest was recorded still resumes. The digest is recomputed here from the token ids, independently."""
    import hashlib

    from mvalign.train.trainer import CheckpointError, examples_digest

    settings = DPOSettings(lr=1e-2, max_steps=4, batch_size=2, save_every=2, scheduler="linear")
    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    _killed_at_step_3(model, toks, ref, settings, tmp_path / "run", tokenizer.pad_token_id)
    state_path = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    lines = "".join(json.dumps([list(t.prompt), list(t.chosen), list(t.rejected)], separators=(",", ":")) + "\n"
                    for t in toks)
    assert state == {"step": 2, "examples_sha256": hashlib.sha256(lines.encode()).hexdigest()}

    fewer = toks[1:]  # one pair filtered out
    model, _, _ = _setup(tokenizer, tiny_llama, tmp_path)
    assert examples_digest(fewer) != examples_digest(toks)
    with pytest.raises(CheckpointError, match=r"checkpoint .*run/checkpoint \(step 2\) was trained on other examples.*"
                                              r"Delete .* to retrain from step 0"):
        train_adapter(model, dpo_objective(fewer, ref[0][1:], ref[1][1:], settings.beta), settings, tmp_path / "run",
                      tokenizer.pad_token_id, progress=False)
    assert json.loads(state_path.read_text()) == state  # the refused checkpoint is left as it was

    state_path.write_text(json.dumps({"step": 2}))  # written before the digest existed
    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    assert train_adapter(model, dpo_objective(toks, *ref, settings.beta), settings, tmp_path / "run",
                         tokenizer.pad_token_id, progress=False).steps == 4
    rows = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4]  # resumed at step 3 (the killed run logged 1-2)
    assert json.loads(state_path.read_text())["examples_sha256"] == state["examples_sha256"]


def test_a_non_finite_step_is_refused_and_not_applied(tmp_path, tokenizer, tiny_llama):
    """A loss that turns NaN at step 3 stops training with one line naming the step; the weights stay those after
    step 2 (equal to a 2-step run) and the checkpoint of step 2 is intact."""
    from mvalign.train.trainer import DivergedError

    settings = DPOSettings(lr=1e-2, max_steps=2, batch_size=2, save_every=2, scheduler="constant")
    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    train_adapter(model, dpo_objective(toks, *ref, settings.beta), settings, tmp_path / "two", tokenizer.pad_token_id,
                  progress=False)
    two = trainable_state(model)

    def nan_at_step_3(m, micro):
        return torch.tensor(float("nan") if micro == 2 else 0.0), {}

    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    longer = settings.model_copy(update={"max_steps": 4})
    with pytest.raises(DivergedError, match=r"step 3 of 4 gave non-finite loss = nan.*last checkpoint: step 2"):
        train_adapter(model, dpo_objective(toks, *ref, settings.beta, extra=[PenaltyTerm(nan_at_step_3)]), longer,
                      tmp_path / "nan", tokenizer.pad_token_id, progress=False)
    now = trainable_state(model)
    for name in two:
        torch.testing.assert_close(now[name], two[name], atol=1e-6, rtol=0, msg=name)
        assert torch.isfinite(now[name]).all()
    assert json.loads((tmp_path / "nan" / "checkpoint" / "state.json").read_text())["step"] == 2

    def nan_gradient_at_step_3(m, micro):  # a finite loss (0) whose gradient is NaN: d√u/du = ∞ at u = 0, times 0
        lora = sum((p.float() ** 2).sum() for n, p in m.named_parameters() if "lora_A" in n)
        return torch.sqrt(lora * 0.0) if micro == 2 else torch.zeros(()), {}

    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    unclipped = longer.model_copy(update={"max_grad_norm": None})
    with pytest.raises(DivergedError, match=r"step 3 of 4 gave non-finite gradient"):
        train_adapter(model, dpo_objective(toks, *ref, settings.beta, extra=[PenaltyTerm(nan_gradient_at_step_3)]),
                      unclipped, tmp_path / "nan-grad", tokenizer.pad_token_id, progress=False)
    assert all(torch.isfinite(v).all() for v in trainable_state(model).values())


def test_gradient_accumulation_matches_large_batch(tmp_path, tokenizer, tiny_llama):
    states = []
    for batch, accum in [(4, 1), (2, 2)]:
        model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
        settings = DPOSettings(lr=1e-2, max_steps=1, batch_size=batch, grad_accum=accum, max_grad_norm=None)
        train_adapter(
            model,
            dpo_objective(toks, *ref, settings.beta),
            settings,
            tmp_path / f"b{batch}",
            tokenizer.pad_token_id,
            progress=False,
        )
        states.append(trainable_state(model))
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], atol=1e-6, rtol=1e-5, msg=name)


def test_pair_weights_and_extra_loss_reach_the_update(tmp_path, tokenizer, tiny_llama):
    settings = DPOSettings(lr=1e-2, max_steps=2, batch_size=4)
    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    start = trainable_state(model)
    zero = dpo_objective(toks, *ref, settings.beta, weights=torch.zeros(len(toks)))
    train_adapter(model, zero, settings, tmp_path / "w0", tokenizer.pad_token_id, progress=False)
    assert all(torch.equal(v, start[k]) for k, v in trainable_state(model).items())  # weight 0: no gradient at all

    def a_norm(m, micro):
        term = sum((p ** 2).sum() for n, p in m.named_parameters() if "lora_A" in n)
        return term, {"a_norm": term.item()}

    model, toks, ref = _setup(tokenizer, tiny_llama, tmp_path)
    zero = dpo_objective(toks, *ref, settings.beta, weights=torch.zeros(len(toks)), extra=[PenaltyTerm(a_norm)])
    train_adapter(model, zero, settings, tmp_path / "extra", tokenizer.pad_token_id, progress=False)
    assert any(not torch.equal(v, start[k]) for k, v in trainable_state(model).items())
    log = [json.loads(line) for line in (tmp_path / "extra" / "log.jsonl").read_text().splitlines()]
    assert "a_norm" in log[-1] and log[-1]["loss"] == pytest.approx(log[-1]["dpo_loss"] + log[-1]["a_norm"], abs=1e-5)


def test_pair_logprobs_splits_chosen_and_rejected(tokenizer, tiny_llama):
    toks = tokenize_pairs(tokenizer, TOY[:2], 64, 40)
    c, r = pair_logprobs(tiny_llama, collate_pairs(toks, tokenizer.pad_token_id))
    assert c[1].item() == pytest.approx(naive_response_logprob(tiny_llama, toks[1].prompt, toks[1].chosen), abs=1e-4)
    assert r[0].item() == pytest.approx(naive_response_logprob(tiny_llama, toks[0].prompt, toks[0].rejected), abs=1e-4)


def test_reference_only_for_the_pairs_training_visits(tmp_path, tokenizer, tiny_llama):
    """A step-limited training reads max_steps × batch pairs of the first epoch's permutation: only those get
    reference log-probs (the rest NaN), equal to computing every pair; an epoch or more reads every pair."""
    import numpy as np

    from mvalign.train.trainer import visited_pairs

    toks = tokenize_pairs(tokenizer, TOY * 5, 64, 40)  # 45 pairs
    s = DPOSettings(max_steps=3, batch_size=4, grad_accum=2, seed=7)
    used = visited_pairs(s, len(toks))
    assert used == sorted(np.random.default_rng([7, 0]).permutation(45)[: 3 * 2 * 4].tolist())
    assert visited_pairs(s, len(toks), world_size=2) == list(range(45))  # 12 micro-batches of 4: a whole epoch
    assert visited_pairs(DPOSettings(epochs=1, batch_size=4), len(toks)) == list(range(45))
    full_c, full_r = compute_logprobs(tiny_llama, toks, tokenizer.pad_token_id)
    c, r = reference_logprobs(tiny_llama, toks, tokenizer.pad_token_id, tmp_path, only=used)
    rest = sorted(set(range(45)) - set(used))
    assert torch.isnan(c[rest]).all() and torch.isnan(r[rest]).all()
    torch.testing.assert_close(c[used], full_c[used], atol=1e-5, rtol=1e-6)  # other batches: fp32 reassociation
    torch.testing.assert_close(r[used], full_r[used], atol=1e-5, rtol=1e-6)
    all_c, _ = reference_logprobs(tiny_llama, toks, tokenizer.pad_token_id, tmp_path)  # another cache entry
    assert not torch.isnan(all_c).any() and len(list((tmp_path / "ref_logps").glob("*.safetensors"))) == 2
