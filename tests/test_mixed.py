"""Mixed-ω batching (issue 14): every batch row computed at its own ω equals the merged model at that ω — checked
against weights merged independently in float64 (`common.expected_weights`), for negative and > 1 weights, three
adapters with different ranks / targets, and GPT-2's Conv1D; greedy responses identical to the one-point path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from common import TOY, expected_weights, make_gpt2, save_random_adapter
from mvalign.combine import CombinedModel, load_lora_adapter
from mvalign.generate import GenerationSettings, format_texts, generate_responses
from mvalign.mixed import MixedLoRA, generate_mixed

POINTS = [(1.0, -0.5, 2.0), (0.0, 0.0, 0.0), (0.3, 1.7, -1.2), (2.5, 0.0, 0.9)]


@pytest.fixture
def three(tmp_path, tiny_llama):
    return [save_random_adapter(tiny_llama, tmp_path / "helpful", 1),
            save_random_adapter(tiny_llama, tmp_path / "harmless", 2, r=8, alpha=4.0),
            save_random_adapter(tiny_llama, tmp_path / "honest", 3, targets=["q_proj", "v_proj", "down_proj"])]


def merged_logits(base, dirs, weights, ids, mask):
    """Logits of the model whose weights are set to the float64 reference merge (cast to float32)."""
    model = copy.deepcopy(base)
    ref = expected_weights(base, dirs, weights)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(ref[name]).to(p.dtype))
        return model(input_ids=ids, attention_mask=mask).logits


def batch(seed: int, rows: int, vocab: int, length: int = 12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # one left-padded row
    return ids, mask


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_each_row_equals_the_merged_model_at_its_weights(tmp_path, tokenizer, tiny_llama, three, arch):
    if arch == "gpt2":
        base = make_gpt2(len(tokenizer))
        dirs = [save_random_adapter(base, tmp_path / f"g{i}", i, r=2 + 2 * i, targets=["c_attn", "c_proj"],
                                    fan_in_fan_out=True) for i in range(3)]
    else:
        base, dirs = tiny_llama, three
    ids, mask = batch(0, len(POINTS), len(tokenizer))
    mixed = MixedLoRA(copy.deepcopy(base), [load_lora_adapter(p) for p in dirs])
    with torch.no_grad(), mixed.rows(POINTS):
        got = mixed.model(input_ids=ids, attention_mask=mask).logits
    for i, w in enumerate(POINTS):
        want = merged_logits(base, dirs, w, ids[i : i + 1], mask[i : i + 1])[0]
        rows = mask[i].bool()
        np.testing.assert_allclose(got[i][rows].numpy(), want[rows].numpy(), rtol=0, atol=2e-5, err_msg=f"row {i} ω={w}")
    with torch.no_grad():  # outside the context the model is the base model again
        plain = mixed.model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(plain, base(input_ids=ids, attention_mask=mask).logits, rtol=0, atol=0)


def test_a_huge_weight_changes_only_its_own_row(tiny_llama, three):
    ids, mask = batch(1, 3, tiny_llama.config.vocab_size)
    mixed = MixedLoRA(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in three])
    with torch.no_grad():
        with mixed.rows([(0.5, 0.5, 0.5), (1e30, 0.0, 0.0), (0.0, 1.0, 0.0)]):
            huge = mixed.model(input_ids=ids, attention_mask=mask).logits
        with mixed.rows([(0.5, 0.5, 0.5), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0)]):
            sane = mixed.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(huge[[0, 2]], sane[[0, 2]], rtol=0, atol=1e-6)
    assert not torch.isfinite(huge[1]).all()


def test_row_weights_must_match_the_batch(tiny_llama, three):
    mixed = MixedLoRA(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in three])
    with pytest.raises(ValueError, match="rows × 3"), mixed.rows([(1.0, 2.0)]):
        pass
    ids, mask = batch(2, 4, tiny_llama.config.vocab_size)
    with pytest.raises(RuntimeError, match="4 rows but 2 row weights"), torch.no_grad(), mixed.rows([(1, 0, 0)] * 2):
        mixed.model(input_ids=ids, attention_mask=mask)


def test_greedy_responses_equal_the_one_point_path(tokenizer, tiny_llama, three):
    settings = GenerationSettings(max_new_tokens=8, batch_size=4)
    adapters = [load_lora_adapter(p) for p in three]
    combined = CombinedModel(copy.deepcopy(tiny_llama), adapters)
    prompts = [p.prompt for p in TOY]
    want = []
    for w in POINTS:
        combined.set_weights(w)
        want.append(generate_responses(combined.model, tokenizer, prompts, settings))
    texts = format_texts(tokenizer, prompts)
    mixed = MixedLoRA(copy.deepcopy(tiny_llama), adapters)
    for rows in (5, 36):  # a pass smaller than one prompt's points, and every row in one pass
        got = generate_mixed(mixed, tokenizer, POINTS, [texts] * len(POINTS), settings, rows, chat=True)
        assert got == want
    assert any(a != b for a, b in zip(want[0], want[1]))  # the points really differ
