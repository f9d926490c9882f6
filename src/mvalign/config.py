"""The one typed run configuration, loadable from YAML.

Every field documents itself (``mvalign config --show`` prints the defaults with these descriptions as comments).
Relative paths in a YAML file are resolved against the directory of that file, so a config can be run from anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the field and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    name: str = Field(
        EMBEDDED_MODEL,
        description="Base causal LM: 'smollm2-135m-instruct' (embedded, offline), a local HF directory, "
        "a .gguf file, or a hub name (needs internet).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype the base weights are held in."
    )
    trust_remote_code: bool = Field(False, description="Allow custom modelling code from the model repo. Off unless you trust it.")
    chat_template: Literal["auto", "none"] = Field(
        "auto", description="'auto' formats prompts with the tokenizer's chat template when it has one; 'none' forces plain text."
    )


class DataSourceConfig(_Strict):
    format: Literal["generic", "hh-rlhf", "pku-saferlhf", "truthfulqa", "builtin"] = Field(
        "generic", description="Dataset layout: generic prompt/chosen/rejected table, Anthropic HH-RLHF transcripts, "
        "PKU-SafeRLHF rows, TruthfulQA judge files, or the built-in helpful/harmless dataset (no files)."
    )
    part: Literal["policy", "reward", "all"] = Field(
        "policy", description="builtin: which disjoint share of its prompts: 'policy' (DPO and evaluation) or 'reward' "
        "(training reward heads)."
    )
    path: list[str] = Field(
        default_factory=list,
        description="Files (JSONL/JSON/CSV/Parquet, optionally .gz) or, for truthfulqa, the folder holding "
        "finetune_truth.jsonl and finetune_info.jsonl. Several files are concatenated.",
    )
    hub_name: str | None = Field(None, description="A `datasets` hub name instead of files (needs internet or a local HF cache).")
    hub_split: str = Field("train", description="Split of the hub dataset to read.")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
        description="generic format: which source column holds prompt, chosen and rejected.",
    )
    value: str | None = Field(
        None, description="pku-saferlhf: 'helpful' (better_response_id) or 'harmless' (safer_response_id); "
        "truthfulqa: 'honest' (truth labels) or 'helpful' (info labels). Defaults to the value's name."
    )
    single_turn_only: bool = Field(False, description="hh-rlhf: keep only dialogues with one human turn.")
    rows: tuple[int, int | None] | None = Field(
        None, description="Use only valid pairs [start, end) in source order, before splitting (end null = to the "
        "end): carves disjoint parts of one file, e.g. reward-head data vs DPO data."
    )
    limit: int | None = Field(None, ge=1, description="Use at most this many training pairs (the first of the train split, in file order); val/test are not cut.")
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="A row with empty text, chosen == rejected or an unparsable transcript: 'error' stops "
        "with the file and line, 'skip' drops it and reports the count."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _has_source(self) -> DataSourceConfig:
        if not self.path and not self.hub_name and self.format != "builtin":
            raise ValueError("give either `path` (files) or `hub_name` (a datasets hub name)")
        return self


class RewardConfig(_Strict):
    kind: Literal["hf", "bt-head"] = Field(
        "bt-head", description="'hf': a sequence-classification reward model; 'bt-head': a Bradley-Terry head on a "
        "frozen sentence encoder, trained by `mvalign reward train`. Used by evaluation and VC scoring."
    )
    path: str | None = Field(
        None, description="hf: local directory or hub name of the reward model. bt-head: folder of a trained head "
        "(default RUN/rewards/<value>)."
    )
    data: DataSourceConfig | None = Field(
        None, description="bt-head: preference pairs to train the head on; keep them disjoint from the DPO data "
        "(its train split trains the head, its val split measures held-out pair accuracy)."
    )
    encoder: str = Field("all-MiniLM-L6-v2", description="bt-head: frozen encoder (packaged MiniLM or a local folder).")
    epochs: int = Field(30, ge=1, description="bt-head: training epochs.")
    cost: bool = Field(False, description="The model scores cost (lower is better): its scores are negated.")


class SweepSettings(_Strict):
    strategy: Literal["grid", "simplex", "list", "adaptive"] = Field(
        "grid", description="grid: every combination of `grid` values per value (MVA extrapolation box); simplex: "
        "weights on the simplex in steps of `simplex_step` (soups); list: exactly `points`; adaptive: `budget` of the "
        "grid's points, chosen where the front has its largest gaps (mvalign.search)."
    )
    budget: int = Field(25, ge=2, description="adaptive: weight vectors evaluated on val (the seed grid included).")
    grid: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 11)],
        description="Weights tried per value (reference: 0.1, 0.2, ..., 1.0, i.e. bound C = 1; any reals allowed).",
    )
    simplex_step: float = Field(0.1, gt=0, le=1, description="simplex: step of the weights (soup methods always use it).")
    combination: Literal["exact", "factorwise"] = Field(
        "exact", description="exact: W0 + Σ ω s B A. factorwise: average A and B separately (only to reproduce the "
        "reference soups; not the exact combination)."
    )
    points: list[dict[str, float]] = Field(default_factory=list, description="list: explicit weight vectors {value: ω}.")
    val_prompts: int = Field(48, ge=1, description="Held-out validation prompts per point (selection).")
    test_prompts: int = Field(48, ge=1, description="Held-out test prompts for the selected (Pareto) points.")
    max_new_tokens: int = Field(48, ge=1, description="Generated tokens per response.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Seed for prompt selection, sampling and bootstrap.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for the 95% intervals.")
    reference_point: list[float] | None = Field(
        None, description="Hypervolume reference point (one per value); default: per-value minimum over base and candidates."
    )


class ValueConfig(_Strict):
    name: str = Field(description="Value name, e.g. helpful, harmless, honest. Used in weights and file names.")
    data: DataSourceConfig = Field(description="Where this value's preference pairs come from.")
    reward: RewardConfig | None = Field(None, description="How this value is measured on generated responses.")

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"value name {v!r} must be non-empty and use only letters, digits, '-' and '_'")
        return v


class SplitConfig(_Strict):
    train: float = Field(0.8, gt=0, le=1, description="Fraction of prompts for training.")
    val: float = Field(0.1, ge=0, lt=1, description="Fraction of prompts for validation (selection).")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction of prompts for the final report.")
    seed: int = Field(0, description="Split seed; the split is a hash of (seed, prompt), so pairs sharing a prompt share a split.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {self.train}+{self.val}+{self.test}")
        return self


class LoraSettings(_Strict):
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="lora_alpha; the update is scaled by s = alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Names (suffixes) of the linear modules that get an adapter.",
    )


class DPOSettings(_Strict):
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
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 runs forward/backward under bf16 autocast.")
    seed: int = Field(
        0, description="Seed for LoRA init, data order and dropout; each value uses its own seed derived from this one "
        "and the value's name, so value vectors never share their initialisation."
    )
    save_every: int = Field(50, ge=1, description="Write a resumable checkpoint every this many optimizer steps.")
    max_grad_norm: float | None = Field(1.0, description="Clip the gradient norm; null disables clipping.")
    eval_pairs: int | None = Field(
        64, ge=1, description="Validation pairs scored after training (implicit-reward accuracy); null uses all."
    )

    @model_validator(mode="after")
    def _prompt_fits(self) -> DPOSettings:
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length ({self.max_length})")
        return self


class DecorrelationSettings(_Strict):
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


class ConsistencySettings(_Strict):
    mode: Literal["threshold", "quantile", "soft"] = Field(
        "threshold", description="VC-soup data operator: keep VC >= tau, keep the top `quantile` share, or keep all "
        "pairs weighting each DPO loss by (1 + VC) / 2."
    )
    tau: float = Field(0.0, ge=-1, le=1, description="threshold: minimum value consistency (reference default 0).")
    quantile: float = Field(0.5, gt=0, le=1, description="quantile: share of pairs kept (highest VC first).")
    text: Literal["response", "prompt+response"] = Field(
        "response", description="What the reward models score: the response alone (reference) or prompt + response."
    )


class BaselineSettings(_Strict):
    weights: list[dict[str, float]] = Field(
        default_factory=list, description="lw / modpo: preference weight vectors w (w_k >= 0, sum 1), one trained "
        "model each; empty = the simplex points at sweep.simplex_step with every w_k > 0."
    )
    steps_per_model: int | None = Field(
        None, ge=1, description="lw / modpo: optimizer steps of each per-weight model (null = dpo.max_steps). For a "
        "budget matched to n value vectors of S steps, use n·S / len(weights)."
    )
    modpo_margin: Literal["implicit", "reward"] = Field(
        "implicit", description="modpo: the other values' rewards in the margin: implicit DPO rewards β·log π_j/π_ref "
        "of their dpo vectors (default; keeps the evaluation judges out of training) or their reward models."
    )


class MVAConfig(BaseModel):
    """Top-level configuration of one mvalign run."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    values: list[ValueConfig] = Field(default_factory=list, description="One entry per value, in training order.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Deterministic train/val/test split.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA value-vector shape.")
    dpo: DPOSettings = Field(default_factory=DPOSettings, description="DPO training of each value vector.")
    sweep: SweepSettings = Field(default_factory=SweepSettings, description="Evaluation of weight vectors ω.")
    consistency: ConsistencySettings = Field(
        default_factory=ConsistencySettings, description="VC-soup: value-consistency filtering of the training pairs."
    )
    decorrelation: DecorrelationSettings = Field(
        default_factory=DecorrelationSettings, description="MVA: penalty between each new value vector and the earlier ones."
    )
    baselines: BaselineSettings = Field(
        default_factory=BaselineSettings, description="The one-model-per-weight baselines (lw, modpo)."
    )
    run_dir: str = Field("runs/mvalign", description="Run directory: config, adapters, logs, checkpoints, store.")
    cache_dir: str = Field(
        "~/.cache/mvalign", description="Shared cache: converted embedded model, reference log-probs (env MVALIGN_CACHE_DIR overrides)."
    )

    @model_validator(mode="after")
    def _unique_values(self) -> MVAConfig:
        names = [v.name for v in self.values]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"value names must be unique; repeated: {dupes}")
        return self

    def value(self, name: str) -> ValueConfig:
        for v in self.values:
            if v.name == name:
                return v
        raise ConfigError(f"no value named {name!r} in the config; known values: {[v.name for v in self.values]}")


def _resolve_paths(cfg: MVAConfig, base: Path) -> MVAConfig:
    def res(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    for v in cfg.values:
        v.data.path = [res(p) for p in v.data.path]
        if v.reward and v.reward.path and (base / Path(v.reward.path).expanduser()).exists():
            v.reward.path = res(v.reward.path)
        if v.reward and v.reward.data:
            v.reward.data.path = [res(p) for p in v.reward.data.path]
    model_path = base / cfg.model.name
    if model_path.exists():
        cfg.model.name = str(model_path.resolve())
    cfg.run_dir = res(cfg.run_dir)
    return cfg


def load_config(path: str | Path) -> MVAConfig:
    """Read a YAML config; relative paths are taken relative to the file's directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(raw).__name__}")
    try:
        cfg = MVAConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid config"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return _resolve_paths(cfg, path.parent.resolve())


def dump_config(cfg: MVAConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def describe_defaults() -> str:
    """The default config as YAML, each field preceded by its description as a comment."""
    example = MVAConfig(
        values=[ValueConfig(name="helpful", data=DataSourceConfig(format="hh-rlhf", path=["data/helpful.jsonl.gz"]))]
    )
    return _commented_yaml(example, indent=0)


def _commented_yaml(model: BaseModel, indent: int) -> str:
    pad = "  " * indent
    out: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if field.description:
            out.append(f"{pad}# {field.description}")
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:")
            out.append(_commented_yaml(value, indent + 1))
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            out.append(f"{pad}{name}:")
            for item in value:
                body = _commented_yaml(item, indent + 2).splitlines()
                first = next(i for i, line in enumerate(body) if not line.strip().startswith("#"))
                body[first] = f"{pad}  - " + body[first].lstrip()
                out.extend(body)
        else:
            dumped = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False).strip()
            out.append(f"{pad}{dumped[1:-1] if dumped.startswith('{') else dumped}")
    return "\n".join(out)
