"""mva-paper: MVA as the authors' released code trains it (raw HSIC on lora_A rows by rank index, σ = 1, / n², α = 10),
checked against a direct numpy computation and end to end on a tiny run."""

import json

import numpy as np
import pytest
import torch

from mvalign.config import PaperDecorrelationSettings, load_config
from mvalign.lora import LoraFactors, load_lora_adapter
from mvalign.methods import get_method, train_method
from mvalign.methods.mva import penalty_spec
from mvalign.rundir import RunDir
from mvalign.store import AdapterRef, RunStore
from mvalign.testing import write_builtin_config
from mvalign.train.decorrelation import DecorrelationLoss, module_penalty


def hsic_authors(X: np.ndarray, Y: np.ndarray, sigma: float) -> float:
    """Direct: RBF kernels by double loop, explicit centring matrix, tr(K H L H) / n² (the authors' denominator)."""
    n = X.shape[0]
    K = np.array([[np.exp(-np.sum((X[a] - X[b]) ** 2) / (2 * sigma**2)) for b in range(n)] for a in range(n)])
    L = np.array([[np.exp(-np.sum((Y[a] - Y[b]) ** 2) / (2 * sigma**2)) for b in range(n)] for a in range(n)])
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / n**2


def test_paper_settings_are_the_authors_code():
    dc = PaperDecorrelationSettings()
    assert (dc.alpha, dc.penalty, dc.target, dc.sigma, dc.denominator) == (10.0, "hsic", "lora_A", 1.0, "n")
    spec = penalty_spec(dc, "mva-paper")
    assert (spec.kind, spec.target, spec.sigma, spec.denominator) == ("hsic", "lora_A", 1.0, "n")
    # a user may still change a field of the block; the rest keep the authors' values
    assert PaperDecorrelationSettings.model_validate({"alpha": 1}).target == "lora_A"


@pytest.mark.parametrize("scale", [0.05, 0.5])
def test_paper_penalty_equals_direct_hsic_on_lora_a(scale):
    g = torch.Generator().manual_seed(3)
    r, d_in, d_out = 6, 20, 12
    new = LoraFactors(scale * torch.randn(r, d_in, generator=g, dtype=torch.float64),
                      torch.randn(d_out, r, generator=g, dtype=torch.float64), 2.0)
    old = LoraFactors(scale * torch.randn(r, d_in, generator=g, dtype=torch.float64),
                      torch.randn(d_out, r, generator=g, dtype=torch.float64), 2.0)
    ours = module_penalty(new, old, penalty_spec(PaperDecorrelationSettings(), "mva-paper")).item()
    direct = hsic_authors(new.A.numpy(), old.A.numpy(), 1.0)
    assert ours == pytest.approx(direct, rel=1e-10)
    # B and the scale do not enter the lora_A penalty
    other_b = LoraFactors(new.A, torch.zeros_like(new.B), 7.0)
    assert module_penalty(other_b, old, penalty_spec(PaperDecorrelationSettings(), "mva-paper")).item() == pytest.approx(ours)


def test_mva_paper_trains_end_to_end(tmp_path, tiny_model_dir):
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, dpo={"max_steps": 3, "batch_size": 4, "max_length": 96,
                                                                 "max_prompt_length": 64, "eval_pairs": 4})
    cfg = load_config(path)
    records = train_method(cfg, "mva-paper", progress=False)
    assert [r.name for r in records] == ["helpful", "harmless"]
    run = RunDir.of(cfg)
    # the first vector is the plain DPO vector (trained once, reused); the second is trained against it
    helpful = run.adapter(AdapterRef("mva-paper", "helpful")) / "adapter_model.safetensors"
    assert helpful.read_bytes() == (run.adapter(AdapterRef("dpo", "helpful")) / "adapter_model.safetensors").read_bytes()
    rec = RunStore(run.root).get_vector(AdapterRef("mva-paper", "harmless"))
    assert rec.metrics["penalty"] == "hsic"
    assert rec.metrics["penalty_settings"] == "hsic on lora_A, sigma 1.0, alpha 10, / n^2"
    log = [json.loads(line) for line in (run.train_dir(AdapterRef("mva-paper", "harmless")) / "log.jsonl").open()]
    assert len(log) == 3 and all(row["loss"] == pytest.approx(row["dpo_loss"] + 10 * row["hsic_total"], abs=1e-5)
                                 for row in log)
    # the logged total is the sum over modules of the direct formula at the vectors' state: check it on the trained
    # vectors against the numpy computation, module by module
    frozen = load_lora_adapter(run.adapter(AdapterRef("mva-paper", "helpful")), "helpful")
    trained = load_lora_adapter(run.adapter(AdapterRef("mva-paper", "harmless")), "harmless")
    direct = sum(hsic_authors(trained.modules[m].A.double().numpy(), frozen.modules[m].A.double().numpy(), 1.0)
                 for m in trained.modules)
    spec = penalty_spec(get_method("mva-paper").options(cfg), "mva-paper")
    loss = DecorrelationLoss([frozen], spec, 10.0)
    ours = sum(module_penalty(trained.modules[m], loss.frozen[0].modules[m], spec).item() for m in trained.modules)
    assert ours == pytest.approx(direct, rel=1e-6)
