"""Devices: `model.device` / `reward.device` resolution, dtype auto, runs that move between devices, and every
stage running where the config says (on the CPU here; the same test runs on CUDA where torch sees a GPU)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import PreTrainedModel

from common import write_builtin_config
from mvalign import devices
from mvalign.config import ConfigError, load_config
from mvalign.devices import DeviceError, resolve_device, resolve_dtype
from mvalign.models import cache_root, load_model
from mvalign.rundir import BaseChangedError


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch believing in two CUDA devices with bf16 (only the resolution logic runs; nothing is moved)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for name in ("LOCAL_RANK", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, fake_cuda):
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process of a multi-process launch takes its own GPU
    assert resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "3")  # more processes than GPUs: shared round-robin
    assert resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # accelerate launch --cpu
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_explicit_devices_and_one_line_errors(monkeypatch, fake_cuda):
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"model.device is 'cuda:2' but torch sees 2 CUDA device\(s\)"):
        resolve_device("cuda:2")
    with pytest.raises(DeviceError, match="values.harmless.reward.device: 'gpu' is not a device"):
        resolve_device("gpu", "values.harmless.reward.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="sees no CUDA device.*use auto or cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(devices, "mps_available", lambda: False)
    with pytest.raises(DeviceError, match="no usable MPS backend"):
        resolve_device("mps")


def test_dtype_auto_is_bf16_on_capable_cuda_only(monkeypatch, fake_cuda):
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float32


def test_precision_auto_trains_bf16_only_where_the_device_computes_it(monkeypatch, fake_cuda, tmp_path, tokenizer,
                                                                      tiny_llama):
    """`training.precision: auto` is bf16 autocast on a bf16 CUDA device or a CPU whose oneDNN has a bf16 path, fp32
    elsewhere (emulated bf16 measured 33x slower per step on an AVX2-only CPU); the trainer follows the resolution:
    an auto run gives exactly the weights of the explicit precision it resolved to."""
    import copy

    from common import TOY
    from mvalign.config import DPOSettings, LoraSettings
    from mvalign.lora import add_value_adapter
    from mvalign.train.logprobs import reference_logprobs
    from mvalign.train.losses import dpo_objective
    from mvalign.train.tokenize import tokenize_pairs
    from mvalign.train.trainer import train_adapter, trainable_state

    assert devices.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert devices.resolve_precision("auto", torch.device("mps")) == "fp32"
    assert devices.resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"
    assert devices.resolve_precision("bf16", torch.device("mps")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert devices.resolve_precision("auto", torch.device("cuda", 0)) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # training below runs on the CPU

    toks = tokenize_pairs(tokenizer, TOY, 64, 40)
    ref = reference_logprobs(tiny_llama, toks, tokenizer.pad_token_id, tmp_path / "cache")

    def weights(precision: str, name: str) -> dict:
        model = add_value_adapter(copy.deepcopy(tiny_llama), LoraSettings(r=4, alpha=8, dropout=0.0), seed=0)
        settings = DPOSettings(lr=1e-2, max_steps=2, batch_size=2, scheduler="constant", precision=precision)
        train_adapter(model, dpo_objective(toks, *ref, settings.beta), settings, tmp_path / name,
                      tokenizer.pad_token_id, progress=False)
        return trainable_state(model)

    fp32, bf16 = weights("fp32", "fp32"), weights("bf16", "bf16")
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)  # the two precisions are distinguishable
    for native, want in ((False, fp32), (True, bf16)):
        monkeypatch.setattr(devices, "native_bf16", lambda device, native=native: native)
        got = weights("auto", f"auto-{native}")
        assert all(torch.equal(got[k], want[k]) for k in want), f"auto with native bf16 {native}"
        rows = [json.loads(line) for line in (tmp_path / f"auto-{native}" / "log.jsonl").read_text().splitlines()]
        assert [r["bf16"] for r in rows] == [float(native)] * 2  # the log says what auto resolved to


def test_config_rejects_unknown_devices(tmp_path, tiny_model_dir):
    path = write_builtin_config(tmp_path, tiny_model_dir, 8)
    raw = yaml.safe_load(path.read_text())
    raw["model"]["device"] = "gpu0"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="model.device"):
        load_config(path)


def test_a_run_moves_between_devices_but_not_between_dtypes(tmp_path, tiny_model_dir):
    from mvalign.methods import prepare_run

    path = write_builtin_config(tmp_path, tiny_model_dir, 8, model={"name": str(tiny_model_dir), "device": "cpu",
                                                                      "dtype": "float32"})
    cfg = load_config(path)
    run = prepare_run(cfg)
    model, _ = load_model(cfg.model, cache_root(cfg.cache_dir))
    run.check_base(model, cfg.model.name)
    assert json.loads(run.base_path.read_text())["dtype"] == "float32"
    (run.root / "adapters" / "dpo").mkdir(parents=True)  # something made, so config changes are checked
    moved = cfg.model_copy(deep=True)
    moved.model.device = "auto"  # where it runs is not what it is; dtype auto is float32 on this CPU
    moved.model.dtype = "auto"
    moved.values[0].reward.device = "cpu"
    prepare_run(moved)
    changed = cfg.model_copy(deep=True)
    changed.model.dtype = "bfloat16"
    with pytest.raises(ConfigError, match="differs in: model"):
        prepare_run(changed)
    half, _ = load_model(changed.model, cache_root(cfg.cache_dir))
    with pytest.raises(BaseChangedError, match="loaded as bfloat16 here but this run was made with float32.*"
                                               "set model.dtype: float32"):
        run.check_base(half, cfg.model.name)


def _spy(monkeypatch):
    """Record every device a stage resolved (the spec it asked for), every `place` and the device of the inputs of
    every forward pass of a whole model (causal LM or reward encoder)."""
    seen = {"specs": [], "placed": [], "forward": set()}
    resolve = devices.resolve_device

    def spy_resolve(spec="auto", field="model.device"):
        seen["specs"].append((field, spec))
        return resolve(spec, field)

    def spy_place(module, device, stage):
        seen["placed"].append((stage, torch.device(device)))
        return module.to(device)

    def forward_hook(module, args, output):
        if isinstance(module, PreTrainedModel):
            t = output[0] if isinstance(output, tuple) else next(iter(output.values()))
            seen["forward"].add((type(module).__name__, t.device))

    for mod in ("mvalign.models", "mvalign.rewards.bt_head", "mvalign.rewards.hf", "mvalign.track", "mvalign.devices"):
        module = __import__(mod, fromlist=["x"])
        if hasattr(module, "resolve_device"):
            monkeypatch.setattr(module, "resolve_device", spy_resolve)
        if hasattr(module, "place"):
            monkeypatch.setattr(module, "place", spy_place)
    handle = torch.nn.modules.module.register_module_forward_hook(forward_hook)
    return seen, handle


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_every_stage_runs_on_the_configured_device(tmp_path, tiny_model_dir, monkeypatch):
    """Reward heads (encoder), MVA's training with its HSIC penalty, the reference log-probs, MODPO's reward margins,
    VC-soup's consistency scoring, the sweep (mixed-ω and merged) and export all resolve the configured device (no
    stage falls back to `auto`) and every forward pass of a model runs there. On the CPU this checks that no stage
    ignores the config; where torch sees CUDA the same test runs everything on the GPU."""
    from mvalign.export import combine_run
    from mvalign.pipeline import run_pipeline

    sweep = {"grid": [0.5, 1.0], "simplex_step": 0.5, "val_prompts": 3, "test_prompts": 2, "max_new_tokens": 3,
             "bootstrap": 100}
    path = write_builtin_config(tmp_path, tiny_model_dir, 8, sweep=sweep, model={"name": str(tiny_model_dir),
                                "device": DEVICE}, baselines={"modpo_margin": "reward", "steps_per_model": 1,
                                                              "weights": [{"helpful": 0.5, "harmless": 0.5}]})
    cfg = load_config(path)
    seen, handle = _spy(monkeypatch)
    try:
        run_pipeline(cfg, ("mva", "modpo", "vcsoup"), progress=False)
        merged = cfg.model_copy(deep=True)
        merged.sweep.mixed_batching = False
        merged.sweep.max_new_tokens = 2  # new points: the merged path generates rather than reusing stored ones
        from mvalign.evaluate import evaluate_method

        assert evaluate_method(merged, "vcsoup", progress=False, primary=False).settings.mixed_batching is None
        combine_run(tmp_path / "run", "helpful=0.5,harmless=1.5", tmp_path / "export", method="mva")
    finally:
        handle.remove()
    want = resolve_device(DEVICE)
    assert seen["specs"] and {spec for _, spec in seen["specs"]} == {DEVICE}, seen["specs"]
    stages = {stage for stage, _ in seen["placed"]}
    assert stages == {"base model", "reward encoder"}, stages
    assert all(d == want for _, d in seen["placed"]), seen["placed"]
    kinds = {name for name, _ in seen["forward"]}
    assert {"LlamaForCausalLM", "BertModel"} <= kinds, kinds
    assert {d for _, d in seen["forward"]} == {want}, seen["forward"]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["dtype" if "dtype" in config else "torch_dtype"] == str(resolve_dtype("auto", want)).removeprefix("torch.")
