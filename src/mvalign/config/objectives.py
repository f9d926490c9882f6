"""The sections that shape what is learned: LoRA shape and training (`training`, every method's optimiser); and the
settings of the methods that have some (`methods.<name>` blocks: MVA's decorrelation, VC-soup's consistency filter,
the per-weight baselines'), each validated by its method (`mvalign.methods`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .sections import Strict


class LoraSettings(Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="lora_alpha; the update is scaled by s = alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1,
        description="Names (suffixes) of the linear modules that get an adapter.",
    )


class TrainingSettings(Strict):
    """How every adapter is trained: DPO value vectors, and the SFT / per-weight models of the methods that train
    other things (their own `methods.<name>` block may override steps, batch or lr)."""

    beta: float = Field(0.1, gt=0, description="DPO temperature beta.")
    lr: float = Field(5e-4, gt=0, description="AdamW learning rate for the LoRA parameters.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant_with_warmup", description="Learning-rate schedule (transformers.get_scheduler)."
    )
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training pairs (ignored when max_steps is set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to train; overrides epochs.")
    batch_size: int = Field(4, ge=1, description="Pairs per micro-batch (each pair is two sequences).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(256, ge=8, description="Max tokens of prompt + response; responses are cut at the end.")
    max_prompt_length: int = Field(128, ge=4, description="Max prompt tokens; longer prompts keep their last tokens.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="bf16 runs forward/backward under bf16 autocast; auto picks bf16 where the device computes it "
        "natively (a bf16 CUDA GPU; a CPU with AVX-512 or aarch64 BF16) and fp32 elsewhere, where emulated bf16 is "
        "many times slower.")
    seed: int = Field(
        0, description="Seed for LoRA init, data order and dropout; each value uses its own seed derived from this one "
        "and the value's name, so value vectors never share their initialisation."
    )
    save_every: int = Field(50, ge=1, description="Write a resumable checkpoint every this many optimizer steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the gradient norm (> 0); null disables clipping.")
    eval_pairs: int | None = Field(
        64, ge=1, description="Validation pairs scored after training (implicit-reward accuracy); null uses all."
    )

    @model_validator(mode="after")
    def _prompt_fits(self) -> TrainingSettings:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})")
        return self


DPOSettings = TrainingSettings
"""The `training` section's earlier name (it was called `dpo`)."""


class DecorrelationSettings(Strict):
    """`methods.mva` (read by mva and mva-orth; formerly the top-level `decorrelation` section)."""

    alpha: float = Field(
        0.1, ge=0, description="Weight α of the penalty added to each later value's DPO loss (0.1 with cka: see bench/README.md)."
    )
    penalty: Literal["hsic", "cka", "orth", "orth-normalised"] = Field(
        "cka", description="hsic: raw HSIC (tiny; scale α to it); cka: normalised HSIC in [0, 1], scale-free; "
        "orth: squared Frobenius overlap (the paper's ablation); orth-normalised: that overlap divided by the "
        "vectors' own, in [0, 1]."
    )
    target: Literal["delta_w", "lora_A"] = Field(
        "delta_w", description="delta_w: rows of ΔW = s·B·A (the paper); lora_A: rows of the A factors paired by rank "
        "index (the authors' released approximation)."
    )
    sigma: float | Literal["median"] = Field(
        "median", description="RBF bandwidth σ, or 'median' for the median heuristic per matrix (reference: 1.0)."
    )
    rows: int = Field(
        128, ge=2, description="delta_w: ΔW rows sampled per step (same rows for both vectors; all rows when d_out is smaller)."
    )
    denominator: Literal["n-1", "n"] = Field(
        "n-1", description="hsic: tr(K H L H) divided by (n − 1)² or by n² (the authors' code); no effect on cka."
    )


class PaperDecorrelationSettings(DecorrelationSettings):
    """`methods.mva-paper`: MVA as the authors' released code trains it (raw HSIC on the lora_A rows paired by rank
    index, RBF σ = 1, divided by n², α = 10); the same fields as `methods.mva`, with those defaults."""

    alpha: float = Field(10.0, ge=0, description="Weight α of the HSIC penalty (the authors' code: 10).")
    penalty: Literal["hsic", "cka", "orth", "orth-normalised"] = Field("hsic", description="The authors' code: raw HSIC.")
    target: Literal["delta_w", "lora_A"] = Field("lora_A", description="The authors' code: lora_A rows by rank index.")
    sigma: float | Literal["median"] = Field(1.0, description="RBF bandwidth (the authors' code: 1.0).")
    denominator: Literal["n-1", "n"] = Field("n", description="The authors' code divides tr(K H L H) by n².")


class ConsistencySettings(Strict):
    """`methods.vcsoup` (formerly the top-level `consistency` section)."""

    mode: Literal["threshold", "quantile", "soft"] = Field(
        "threshold", description="VC-soup data operator: keep VC >= tau, keep the top `quantile` share, or keep all "
        "pairs weighting each DPO loss by (1 + VC) / 2."
    )
    tau: float = Field(0.0, ge=-1, le=1, description="threshold: minimum value consistency (reference default 0).")
    quantile: float = Field(0.5, gt=0, le=1, description="quantile: share of pairs kept (highest VC first).")
    text: Literal["response", "prompt+response"] = Field(
        "response", description="What the reward models score: the response alone (reference) or prompt + response."
    )


class PerWeightSettings(Strict):
    """`methods.lw`: one model per preference weight (formerly the top-level `baselines` section)."""

    weights: list[dict[str, float]] = Field(
        default_factory=list, description="Preference weight vectors w (w_k >= 0, sum 1), one trained model each; "
        "empty = the simplex points at sweep.simplex_step with every w_k > 0."
    )
    steps_per_model: int | None = Field(
        None, ge=1, description="Optimizer steps of each per-weight model (null = training.max_steps). For a budget "
        "matched to n value vectors of S steps, use n·S / len(weights)."
    )


class ModpoSettings(PerWeightSettings):
    """`methods.modpo` (formerly the top-level `baselines` section, whose `modpo_margin` is `margin` here)."""

    margin: Literal["implicit", "reward"] = Field(
        "implicit", description="The other values' rewards in the margin: implicit DPO rewards β·log π_j/π_ref of "
        "their dpo vectors (default; keeps the evaluation judges out of training) or their reward models."
    )


METHOD_ALIASES = {"decorrelation": ("mva",), "consistency": ("vcsoup",), "baselines": ("lw", "modpo")}
"""Top-level sections of earlier configs and the `methods.<name>` blocks they now are (read by `RunConfig`)."""


def method_aliases(raw: dict) -> dict:
    """An earlier config's top-level method sections moved to their `methods.<name>` blocks (`baselines` to both
    lw and modpo, its `modpo_margin` to modpo's `margin`); one section given both ways is an error."""
    if not any(section in raw for section in METHOD_ALIASES):
        return raw
    raw = dict(raw)
    if not isinstance(raw.get("methods") or {}, dict):
        raise ValueError(f"methods: expected a mapping of method names to settings, got {type(raw['methods']).__name__}")
    methods = dict(raw.get("methods") or {})
    for section, names in METHOD_ALIASES.items():
        if section not in raw:
            continue
        block = raw.pop(section)
        if not isinstance(block, dict):
            raise ValueError(f"{section}: expected a mapping of settings, got {type(block).__name__}")
        for name in names:
            if name in methods:
                raise ValueError(f"{section} (the earlier name of methods.{name}) and methods.{name} are both given; "
                                 f"keep methods.{name}")
            part = {k: v for k, v in block.items() if k != "modpo_margin"}
            if name == "modpo" and "modpo_margin" in block:
                part["margin"] = block["modpo_margin"]
            methods[name] = part
    if methods:
        raw["methods"] = methods
    return raw


