import copy
import json

import numpy as np
import pytest
import torch

from common import TOY
from mvalign.config import DPOSettings, LoraSettings
from mvalign.lora import LoraFactors, add_value_adapter, load_lora_adapter
from mvalign.train.decorrelation import (
    DecorrelationLoss,
    PenaltySpec,
    cka,
    hsic,
    layer_of,
    median_sigma,
    module_penalty,
    sqdist_from_gram,
    trainable_lora_factors,
)
from mvalign.train.logprobs import reference_logprobs
from mvalign.train.losses import PenaltyTerm, dpo_objective
from mvalign.train.tokenize import tokenize_pairs
from mvalign.train.trainer import train_adapter, trainable_state


def hsic_loops(X, Y, sigma):
    """Direct O(n²) reference: explicit kernels by double loop, explicit H, tr(K H L H) / (n − 1)²."""
    n = X.shape[0]
    K = np.zeros((n, n))
    L = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            K[a, b] = np.exp(-np.sum((X[a] - X[b]) ** 2) / (2 * sigma**2))
            L[a, b] = np.exp(-np.sum((Y[a] - Y[b]) ** 2) / (2 * sigma**2))
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def hsic_numpy(X, Y, sigma):
    """Independent vectorised numpy version from the formula (broadcast distances, centring by H)."""
    def gram(Z):
        d = ((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1)
        return np.exp(-d / (2 * sigma**2))
    n = X.shape[0]
    H = np.eye(n) - 1.0 / n
    return float(np.sum((H @ gram(X) @ H) * gram(Y))) / (n - 1) ** 2


@pytest.mark.parametrize("sigma", [0.5, 1.0, 3.0])
def test_hsic_matches_direct_and_numpy(sigma):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 5))
    Y = X @ rng.normal(size=(5, 7)) * 0.3 + rng.normal(size=(12, 7)) * 0.5
    ours = hsic(torch.tensor(X), torch.tensor(Y), sigma).item()
    assert ours == pytest.approx(hsic_loops(X, Y, sigma), rel=1e-9, abs=1e-12)
    assert ours == pytest.approx(hsic_numpy(X, Y, sigma), rel=1e-9, abs=1e-12)


def test_hsic_independent_near_zero_and_self_high():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 8, generator=g, dtype=torch.float64)
    Y = torch.randn(200, 8, generator=g, dtype=torch.float64)
    assert cka(X, X, "median").item() == pytest.approx(1.0, abs=1e-6)
    assert cka(X, Y, "median").item() < 0.1  # biased estimator: O(1/n) above 0
    assert hsic(X, X, "median").item() > 10 * abs(hsic(X, Y, "median").item())
    assert cka(X, torch.tanh(X) * 2 + 0.01 * Y, "median").item() > 0.9  # nonlinear dependence is seen


def test_median_sigma_is_median_pairwise_distance():
    X = torch.randn(9, 4, dtype=torch.float64)
    D = sqdist_from_gram(X @ X.T)
    pairwise = [np.linalg.norm(X[a] - X[b]) for a in range(9) for b in range(9) if a != b]
    assert median_sigma(D).item() == pytest.approx(float(torch.tensor(pairwise).median()), rel=1e-9)


def random_factors(seed, d_out=24, d_in=10, r=3, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(r, d_in, generator=g, dtype=torch.float64),
                       torch.randn(d_out, r, generator=g, dtype=torch.float64), scale)


@pytest.mark.parametrize("kind", ["hsic", "cka"])
@pytest.mark.parametrize("sigma", [1.0, "median"])
def test_delta_w_from_factors_equals_explicit(kind, sigma):
    f, h = random_factors(1), random_factors(2, scale=0.5)
    dense_f, dense_h = f.scale * f.B @ f.A, h.scale * h.B @ h.A
    explicit = (cka if kind == "cka" else hsic)(dense_f, dense_h, sigma)
    spec = PenaltySpec(kind=kind, target="delta_w", sigma=sigma)
    assert module_penalty(f, h, spec).item() == pytest.approx(explicit.item(), rel=1e-9, abs=1e-15)
    rows = torch.tensor([0, 5, 7, 11, 20])
    sampled = (cka if kind == "cka" else hsic)(dense_f[rows], dense_h[rows], sigma)
    assert module_penalty(f, h, spec, rows).item() == pytest.approx(sampled.item(), rel=1e-9, abs=1e-15)


def test_lora_a_target_and_orthogonality():
    f, h = random_factors(1), random_factors(2, scale=0.5)
    spec = PenaltySpec(kind="hsic", target="lora_A", sigma=1.0)
    assert module_penalty(f, h, spec).item() == pytest.approx(hsic_loops(f.A.numpy(), h.A.numpy(), 1.0), rel=1e-9)
    orth_a = module_penalty(f, h, PenaltySpec(kind="orth", target="lora_A"))
    assert orth_a.item() == pytest.approx(torch.linalg.matrix_norm(f.A @ h.A.T).item() ** 2, rel=1e-9)
    dense_f, dense_h = f.scale * f.B @ f.A, h.scale * h.B @ h.A
    orth_w = module_penalty(f, h, PenaltySpec(kind="orth", target="delta_w"))
    assert orth_w.item() == pytest.approx(torch.linalg.matrix_norm(dense_f.T @ dense_h).item() ** 2, rel=1e-9)


def test_normalised_orthogonality_is_scale_free_and_in_unit_interval():
    f, h = random_factors(1), random_factors(2, scale=0.5)
    dense_f, dense_h = f.scale * f.B @ f.A, h.scale * h.B @ h.A
    fro2 = lambda m: torch.linalg.matrix_norm(m).item() ** 2  # noqa: E731
    explicit = fro2(dense_f.T @ dense_h) / (fro2(dense_f.T @ dense_f) * fro2(dense_h.T @ dense_h)) ** 0.5
    spec = PenaltySpec(kind="orth-normalised", target="delta_w")
    value = module_penalty(f, h, spec).item()
    assert value == pytest.approx(explicit, rel=1e-9) and 0 < value < 1
    g = LoraFactors(f.A * 3.0, f.B * 7.0, f.scale)
    assert module_penalty(g, h, spec).item() == pytest.approx(value, rel=1e-6)
    assert module_penalty(f, f, spec).item() == pytest.approx(1.0, rel=1e-9)
    a_spec = PenaltySpec(kind="orth-normalised", target="lora_A")
    a_explicit = fro2(f.A @ h.A.T) / (fro2(f.A @ f.A.T) * fro2(h.A @ h.A.T)) ** 0.5
    assert module_penalty(f, h, a_spec).item() == pytest.approx(a_explicit, rel=1e-9)


def test_layer_of():
    assert layer_of("model.layers.17.self_attn.q_proj") == "17"
    assert layer_of("transformer.h.0.attn.c_attn") == "0"


def _train(tokenizer, tiny_llama, tmp_path, name, extra=None, seed=0):
    model = add_value_adapter(copy.deepcopy(tiny_llama), LoraSettings(r=4, alpha=8, dropout=0.0), seed=seed)
    toks = tokenize_pairs(tokenizer, TOY, 64, 40)
    ref = reference_logprobs(model, toks, tokenizer.pad_token_id, tmp_path / "cache")
    settings = DPOSettings(lr=2e-2, max_steps=10, batch_size=4, scheduler="constant")
    objective = dpo_objective(toks, *ref, settings.beta, extra=[PenaltyTerm(extra)] if extra else [])
    train_adapter(model, objective, settings, tmp_path / name, tokenizer.pad_token_id, progress=False)
    model.save_pretrained(tmp_path / f"{name}-adapter")
    return model


def test_penalty_trains_only_the_new_vector_and_lowers_similarity(tmp_path, tokenizer, tiny_llama):
    base_state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    _train(tokenizer, tiny_llama, tmp_path, "first")
    frozen = load_lora_adapter(tmp_path / "first-adapter", "first")
    frozen_before = {m: (f.A.clone(), f.B.clone()) for m, f in frozen.modules.items()}
    file_before = (tmp_path / "first-adapter" / "adapter_model.safetensors").read_bytes()

    spec = PenaltySpec(kind="cka", target="delta_w", sigma="median")
    loss = DecorrelationLoss([frozen], spec, alpha=5.0)
    plain = _train(tokenizer, tiny_llama, tmp_path, "plain", seed=1)
    decor = _train(tokenizer, tiny_llama, tmp_path, "decor", extra=loss, seed=1)

    # earlier vector bit-identical (tensors and file), base weights untouched, the new vector moved
    for m, f in frozen.modules.items():
        assert torch.equal(f.A, frozen_before[m][0]) and torch.equal(f.B, frozen_before[m][1])
    assert (tmp_path / "first-adapter" / "adapter_model.safetensors").read_bytes() == file_before
    assert all(torch.equal(v, base_state[k]) for k, v in tiny_llama.state_dict().items())
    assert any(v.abs().sum() > 0 for k, v in trainable_state(decor).items() if "lora_B" in k)

    # per-layer penalty logged next to the DPO loss
    log = [json.loads(line) for line in (tmp_path / "decor" / "log.jsonl").read_text().splitlines()]
    assert {"cka_total", "cka/layer0", "cka/layer1", "dpo_loss"} <= log[-1].keys()
    assert log[-1]["loss"] == pytest.approx(log[-1]["dpo_loss"] + 5.0 * log[-1]["cka_total"], abs=1e-4)

    def mean_cka(model):
        live = trainable_lora_factors(model)
        return np.mean([module_penalty(live[m], frozen.modules[m], spec).item() for m in live])

    with torch.no_grad():
        assert mean_cka(decor) < mean_cka(plain) - 0.05


def test_diagnostics_from_factors_match_dense(tmp_path, tokenizer, tiny_llama):
    from mvalign.diagnose import interference_report, plot_interference

    _train(tokenizer, tiny_llama, tmp_path, "one")
    _train(tokenizer, tiny_llama, tmp_path, "two", seed=3)
    a, b = load_lora_adapter(tmp_path / "one-adapter", "one"), load_lora_adapter(tmp_path / "two-adapter", "two")
    report = interference_report([a, b, load_lora_adapter(tmp_path / "one-adapter", "same")])
    dense = {m: (f.scale * f.B @ f.A, b.modules[m].scale * b.modules[m].B @ b.modules[m].A) for m, f in a.modules.items()}
    pair = report["pairs"][0]
    for m, (x, y) in dense.items():
        cos = (x * y).sum() / (x.norm() * y.norm())
        assert pair["modules"][m]["cos"] == pytest.approx(cos.item(), abs=1e-5)
        assert pair["modules"][m]["cka"] == pytest.approx(cka(x.double(), y.double(), "median").item(), abs=1e-6)
    flat_x = torch.cat([x.flatten() for x, _ in dense.values()])
    flat_y = torch.cat([y.flatten() for _, y in dense.values()])
    assert pair["overall"]["cos"] == pytest.approx((flat_x @ flat_y / (flat_x.norm() * flat_y.norm())).item(), abs=1e-5)
    assert set(pair["layers"]) == {"0", "1"}
    assert report["matrix"]["cos"][0][2] == pytest.approx(1.0, abs=1e-9)  # a vector against itself
    assert report["matrix"]["cka"][0][2] == pytest.approx(1.0, abs=1e-6)
    png = plot_interference(report, tmp_path / "heat.png")
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("kind, target", [("hsic", "delta_w"), ("cka", "delta_w"), ("cka", "lora_A"), ("orth", "delta_w"),
                                          ("orth", "lora_A"), ("orth-normalised", "delta_w")])
def test_batched_loss_equals_sum_of_module_penalties(tmp_path, tokenizer, tiny_llama, kind, target):
    _train(tokenizer, tiny_llama, tmp_path, "first")
    frozen = load_lora_adapter(tmp_path / "first-adapter", "first")
    model = add_value_adapter(
        copy.deepcopy(tiny_llama),
        LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]),
        5,
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    spec = PenaltySpec(kind=kind, target=target, sigma="median")
    loss, logs = DecorrelationLoss([frozen, frozen], spec, alpha=0.5)(model, 0)
    live = trainable_lora_factors(model)
    per_module = {m: module_penalty(live[m], frozen.modules[m], spec) for m in live if m in frozen.modules}
    assert set(per_module) == set(frozen.modules)  # up_proj is not in the frozen adapter: skipped
    expected = 2 * sum(v.item() for v in per_module.values())
    assert loss.item() == pytest.approx(0.5 * expected, rel=1e-5)
    assert logs[f"{kind}_total"] == pytest.approx(expected, rel=1e-5)
    layer0 = 2 * sum(v.item() for m, v in per_module.items() if ".0." in m)
    assert logs[f"{kind}/layer0"] == pytest.approx(layer0, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n and "up_proj" not in n)
