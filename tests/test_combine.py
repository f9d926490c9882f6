import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from common import assert_weights, expected_weights, make_gpt2, make_llama, save_random_adapter
from mvalign.combine import AdapterError, CombinedModel, combine, factorwise_delta, load_lora_adapter


@pytest.fixture
def two_adapters(tmp_path, tiny_llama):
    return [save_random_adapter(tiny_llama, tmp_path / "helpful", 1),
            save_random_adapter(tiny_llama, tmp_path / "harmless", 2, r=8, alpha=4.0)]


def test_combine_two_adapters_extrapolated_weights(tiny_llama, two_adapters):
    weights = (1.3, -0.2)
    expected = expected_weights(tiny_llama, two_adapters, weights)
    model = combine(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in two_adapters], weights)
    assert_weights(model, expected)


def test_combine_three_adapters_by_name(tmp_path, tiny_llama, two_adapters):
    third = save_random_adapter(tiny_llama, tmp_path / "honest", 3, targets=["q_proj", "v_proj", "down_proj"])
    dirs = [*two_adapters, third]
    weights = {"helpful": 0.7, "harmless": 1.5, "honest": -0.4}
    expected = expected_weights(tiny_llama, dirs, list(weights.values()))
    model = combine(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in dirs], weights)
    assert_weights(model, expected)


def test_single_adapter_matches_peft_merge(tiny_llama, two_adapters):
    """Scale and orientation agree with PEFT's own merge for ω = 1."""
    peft_merged = PeftModel.from_pretrained(copy.deepcopy(tiny_llama), two_adapters[1]).merge_and_unload()
    ours = combine(copy.deepcopy(tiny_llama), [load_lora_adapter(two_adapters[1])], [1.0])
    for (n, a), (_, b) in zip(ours.named_parameters(), peft_merged.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=n)


def test_gpt2_conv1d_fan_in_fan_out(tmp_path, tokenizer):
    base = make_gpt2(len(tokenizer))
    dirs = [save_random_adapter(base, tmp_path / f"a{i}", i, targets=["c_attn", "c_proj"], fan_in_fan_out=True)
            for i in range(2)]
    weights = (0.5, 2.0)
    model = combine(copy.deepcopy(base), [load_lora_adapter(p) for p in dirs], weights)
    assert_weights(model, expected_weights(base, dirs, weights))


def test_in_place_moves_between_points_and_reset(tiny_llama, two_adapters):
    model = copy.deepcopy(tiny_llama)
    combined = CombinedModel(model, [load_lora_adapter(p) for p in two_adapters])
    for weights in [(0.1, 0.9), (1.0, 1.0), (2.5, -1.0), (0.3, 0.3), (-0.7, 1.2)]:
        combined.set_weights(weights)
        assert_weights(model, expected_weights(tiny_llama, two_adapters, weights))
    combined.reset()
    assert_weights(model, expected_weights(tiny_llama, two_adapters, (0.0, 0.0)))


def test_bfloat16_base_is_rebuilt_from_originals(tiny_llama, two_adapters):
    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    w0 = {n: p.clone() for n, p in model.named_parameters()}
    combined = CombinedModel(model, [load_lora_adapter(p) for p in two_adapters])
    combined.set_weights((1.7, 0.4))
    first = {n: p.clone() for n, p in model.named_parameters()}
    expected = expected_weights(tiny_llama, two_adapters, (1.7, 0.4))
    assert_weights(model, expected, atol=2e-2)  # bf16 rounding of W0 + ΔW
    assert any(not torch.equal(first[n], w0[n]) for n in w0)
    combined.set_weights((0.2, -0.3))
    combined.set_weights((1.7, 0.4))  # path-independent: identical to the first visit, bit for bit
    assert all(torch.equal(p, first[n]) for n, p in model.named_parameters())
    combined.reset()
    assert all(torch.equal(p, w0[n]) for n, p in model.named_parameters())


def test_factorwise_mode_differs_from_exact(tiny_llama, two_adapters):
    module = "model.layers.0.self_attn.q_proj"
    f1 = load_lora_adapter(two_adapters[0]).modules[module]
    f2 = type(f1)(f1.A.flip(0), f1.B.flip(1) * 0.5, f1.scale)  # same rank and scale, different factors
    # one adapter at ω = 1: factor-wise equals exact
    torch.testing.assert_close(factorwise_delta([f1], [1.0]), f1.scale * f1.B @ f1.A)
    # two adapters at (0.5, 0.5): factor-wise is s (B1+B2)/2 (A1+A2)/2 ...
    soup = factorwise_delta([f1, f2], [0.5, 0.5])
    torch.testing.assert_close(soup, f1.scale * (0.5 * f1.B + 0.5 * f2.B) @ (0.5 * f1.A + 0.5 * f2.A))
    # ... which is not the exact average of the two updates (cross terms)
    exact = 0.5 * f1.scale * (f1.B @ f1.A) + 0.5 * f2.scale * (f2.B @ f2.A)
    assert (soup - exact).abs().max() > 1e-4
    model = copy.deepcopy(tiny_llama)
    combined = CombinedModel(model, [load_lora_adapter(p) for p in two_adapters[:1]], mode="factorwise")
    combined.set_weights([0.5])  # one adapter: s (0.5 B)(0.5 A) = 0.25 ΔW
    assert_weights(model, expected_weights(tiny_llama, two_adapters[:1], [0.25]))
    other_rank = load_lora_adapter(two_adapters[1]).modules[module]
    with pytest.raises(AdapterError, match="equal rank and scale"):
        factorwise_delta([f1, other_rank], [0.5, 0.5])


def test_mismatched_and_bad_inputs(tmp_path, tokenizer, tiny_llama, two_adapters):
    gpt2_adapter = save_random_adapter(make_gpt2(len(tokenizer)), tmp_path / "gpt2", 0, targets=["c_attn"])
    with pytest.raises(AdapterError, match="does not exist in the base model"):
        CombinedModel(copy.deepcopy(tiny_llama), [load_lora_adapter(gpt2_adapter)])
    other_shape = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], init_lora_weights=False)
    bigger = make_llama(len(tokenizer))
    bigger.model.layers[0].self_attn.q_proj = torch.nn.Linear(32, 48, bias=False)
    get_peft_model(bigger, other_shape).save_pretrained(tmp_path / "bigger")
    with pytest.raises(AdapterError, match="does not fit weight"):
        CombinedModel(copy.deepcopy(tiny_llama), [load_lora_adapter(tmp_path / "bigger")])
    combined = CombinedModel(copy.deepcopy(tiny_llama), [load_lora_adapter(p) for p in two_adapters])
    with pytest.raises(AdapterError, match="unknown value vectors"):
        combined.set_weights({"helpful": 1.0, "honesty": 1.0})
    with pytest.raises(AdapterError, match="finite weights"):
        combined.set_weights((float("nan"), 1.0))
    with pytest.raises(AdapterError, match="finite weights"):
        combined.set_weights((1.0,))
    with pytest.raises(AdapterError, match="not a PEFT adapter directory"):
        load_lora_adapter(tmp_path)


def test_huge_weights_do_not_damage_the_model(tiny_llama, two_adapters):
    """After ω = ±1e6 (or 1e30), later points and ω = 0 are exact: moves beyond SAFE_OMEGA rebuild from W0."""
    from mvalign.combine import CombinedModel

    original = {n: p.detach().clone() for n, p in tiny_llama.named_parameters()}
    combined = CombinedModel(tiny_llama, [load_lora_adapter(p) for p in two_adapters])
    combined.set_weights((0.5, 1.0))
    for huge in [(1e6, -1e6), (1e30, 2.0), (3.0, -40.0)]:
        combined.set_weights(huge)
    combined.set_weights((0.7, 1.2))
    assert_weights(tiny_llama, expected_weights(_base_from(original, tiny_llama), two_adapters, (0.7, 1.2)))
    combined.reset()
    for n, p in tiny_llama.named_parameters():
        torch.testing.assert_close(p, original[n], atol=1e-6, rtol=0, msg=n)


def _base_from(state, model):
    base = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in base.named_parameters():
            p.copy_(state[n])
    return base
