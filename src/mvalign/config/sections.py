"""The data, model, reward and evaluation sections of the run configuration."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..errors import MvalignError

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ConfigError(MvalignError, ValueError):
    """A configuration file or value that cannot be used; the message names the field and what to do."""


class Strict(BaseModel):
    """A config section that rejects unknown fields, NaN and infinite numbers, and validates assignments."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)



class ModelConfig(Strict):
    name: str = Field(
        EMBEDDED_MODEL,
        description="Base causal LM: 'smollm2-135m-instruct' (embedded, offline), a local HF directory, "
        "a .gguf file, or a hub name (needs internet).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype the base weights are held in. auto: bfloat16 on a CUDA device that supports it, "
        "float32 elsewhere (CPU, MPS)."
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="Where training, reference log-probs, MODPO margins, the sweep and export run: auto (cuda, then "
        "mps, then cpu; under a multi-process launch each process its own cuda:<LOCAL_RANK>), cpu, cuda, cuda:N or mps. "
        "Not part of a run's identity: a run made on one device carries on on another (mvalign.devices).",
    )
    trust_remote_code: bool = Field(
        False, description="Allow custom modelling code from the model repo. Off unless you trust it."
    )
    chat_template: Literal["auto", "none"] = Field(
        "auto", description="'auto' formats prompts with the tokenizer's chat template when it has one; 'none' forces plain text."
    )


class DataSourceConfig(Strict):
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
    limit: int | None = Field(
        None,
        ge=1,
        description="Use at most this many training pairs (the first of the train split, in file order); val/test are not cut.",
    )
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


class RewardConfig(Strict):
    """One measure of a value (`mvalign.measures`): a response judge, a rate on labelled prompts, or a likelihood."""

    kind: Literal["hf", "bt-head", "callable", "rate", "truthfulqa-mc"] = Field(
        "bt-head", description="Response judges: 'hf' (a sequence-classification reward model), 'bt-head' (a "
        "Bradley-Terry head on a frozen sentence encoder, trained by `mvalign reward train`), 'callable' (a Python "
        "function f(prompt, response) -> float named by `function`). 'rate': the share of the eval prompts labelled "
        "`on` where the response does the right thing (harmful: refuses; benign: complies), by `detector`. "
        "'truthfulqa-mc': TruthfulQA multiple-choice on the combined model's log-likelihoods (`metric` mc1 | mc2; no "
        "generation, audit only)."
    )
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]+$", description="The measure's name in fronts and reports (default from its "
        "kind: bt-head, hf, callable, refusal-<detector> / compliance-<detector>, truthfulqa-<metric>).")
    detector: Literal["string", "learned"] = Field(
        "string", description="rate: refusal detector — 'string' (XSTest's rule) or 'learned' (logistic head on the "
        "MiniLM embedding fitted on XSTest's human labels, mvalign.rewards.detectors).")
    on: Literal["harmful", "benign"] = Field(
        "harmful", description="rate: the labelled prompts it is computed on: harmful (refusal rate) or benign "
        "(compliance rate).")
    max_repetition: float | None = Field(
        None, gt=0, le=1, description="rate: a response whose repeated-trigram share (`mvalign.judges.repetition`) "
        "exceeds this does the right thing neither way, so a looping apology ('I'm sorry. I'm sorry. …') is no "
        "refusal and a loop no compliance; default off (the detector alone). Its default name ends in -loopfree.")
    labels: str | None = Field(
        None, description="rate: CSV/JSONL with `prompt` and `label` columns (harmful/unsafe or benign/safe) labelling "
        "eval prompts; default: the labels the data carries (the built-in data's categories).")
    metric: Literal["mc1", "mc2"] = Field("mc2", description="truthfulqa-mc: MC1 or MC2.")
    questions: int = Field(40, ge=1, description="truthfulqa-mc: questions per split (val / test by question hash).")
    function: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="callable: 'package.module:function', imported from the environment.")
    version: str = Field(
        "1", description="callable: part of the judge's identity (cached scores, stored points): change it when the "
        "function's behaviour changes.")
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
    device: str | None = Field(
        None, pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="Where this reward model (hf model or bt-head encoder) runs; default: model.device. Not part of a "
        "run's identity.",
    )

    @model_validator(mode="after")
    def _rate_only(self) -> RewardConfig:
        if self.max_repetition is not None and self.kind != "rate":
            raise ValueError(f"max_repetition applies to kind: rate only, not kind: {self.kind}; remove it")
        return self


class RaySettings(Strict):
    address: str | None = Field(
        None, description="null: start a private local Ray cluster bound to 127.0.0.1; else the address of an existing "
        "cluster ('auto', 'ray://host:10001'), whose workers see the same model, adapters and cache paths.")
    workers: int = Field(2, ge=1, description="Ray workers (actors); each loads the base model and adapters once.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker reserves (and its torch threads).")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs each worker reserves (e.g. 1, or 0.5 to share one).")
    restarts: int = Field(2, ge=0, description="Workers started in place of dead ones during one sweep; a dead "
                          "worker's unfinished task is re-queued either way.")


class SweepSettings(Strict):
    strategy: Literal["grid", "simplex", "list", "adaptive", "bo"] = Field(
        "grid", description="grid: every combination of `grid` values per value (MVA extrapolation box); simplex: "
        "weights on the simplex in steps of `simplex_step` (soups); list: exactly `points`; adaptive: `budget` of the "
        "grid's points, chosen where the front has its largest gaps (mvalign.search); bo: `budget` points, "
        "`bo_batch` per round, by BoTorch's noisy expected hypervolume improvement (mvalign.bo; the `bo` extra)."
    )
    budget: int = Field(25, ge=2, description="adaptive, bo: weight vectors evaluated on val (the first design "
                        "included).")
    bo_batch: int = Field(4, ge=1, description="bo: points proposed per round, generated together (one mixed-ω pass "
                          "when at most points_per_pass).")
    bo_initial: int | None = Field(None, ge=1, description="bo: points of the first (Sobol) design [default: "
                                   "2·(values + 1), at least bo_batch].")
    bo_snap: bool = Field(True, description="bo: propose only points of the lattice gridⁿ (comparable point for "
                          "point with the dense sweep); false: anywhere in the box [min grid, max grid]ⁿ.")
    bo_stop_at_noise: bool = Field(False, description="bo: stop before `budget` when the next batch's expected "
                                   "hypervolume improvement is below the hypervolume's own noise (one standard error; "
                                   "with a few dozen prompts that is often right after the first design).")
    grid: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 11)], min_length=1,
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
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch (one point at a time).")
    mixed_batching: bool = Field(
        True, description="Generate many points per generate call, each batch row at its own ω (exact combination and "
        "greedy decoding only; mvalign.mixed). Off: one point at a time on the model merged in place (the reference).")
    rows_per_pass: int = Field(64, ge=1, description="Mixed batching: (point, prompt) rows per generate call, i.e. the "
                               "KV-cache rows held at once; lower it when memory is short.")
    points_per_pass: int = Field(16, ge=1, description="Mixed batching: points generated together before they are "
                                 "scored and stored (at most this many are redone after a kill).")
    racing: Literal["auto", "on", "off"] = Field(
        "auto", description="Drop candidates dominated with paired confidence after a share of the val prompts and "
        "finish only the rest (mvalign.race). auto: on for 16 or more fixed candidates (grid / simplex / list); off "
        "reproduces the full evaluation of every candidate.")
    @field_validator("racing", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        """YAML 1.1 reads an unquoted on / off as true / false; they mean the same here."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    racing_first: int = Field(8, ge=2, description="Racing: val prompts in the first share, at least an eighth of "
                              "them; every later round adds as many.")
    racing_z: float = Field(2.5, gt=0, description="Racing: a candidate is dropped when another beats it on every "
                            "value by more than z predictive standard errors of the paired mean difference over all "
                            "val prompts (mvalign.race; higher z keeps more).")
    backend: Literal["local", "ray"] = Field(
        "local", description="local: generate in this process. ray: on Ray workers (`sweep.ray`, extra mvalign[ray]); "
        "this process still scores and alone writes the store (mvalign.scaleout).")
    ray: RaySettings = Field(default_factory=RaySettings, description="The Ray backend's cluster and workers.")
    do_sample: bool = Field(False, description="Sample instead of greedy decoding.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Seed for prompt selection, sampling and bootstrap.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for the 95% intervals.")
    reference_point: list[float] | None = Field(
        None, description="Hypervolume reference point (one per value); default: per-value minimum over base and candidates."
    )


class ValueConfig(Strict):
    name: str = Field(description="Value name, e.g. helpful, harmless, honest. Used in weights and file names.")
    data: DataSourceConfig = Field(description="Where this value's preference pairs come from.")
    reward: RewardConfig | None = Field(
        None, description="The primary measure: defines this value's axis of the front (a response judge or a rate).")
    audits: list[RewardConfig] = Field(
        default_factory=list, description="Audit measures: scored on the same points, compared with the primary "
        "(agreement, disputed points), never part of the front's axes.")
    train_judge: RewardConfig | None = Field(
        None, description="The judge methods use inside training (VC-soup consistency, MODPO margins, RiC tags); "
        "default: `reward`. Reports say when it is also the judge of the front.")
    anchor: Literal["auto", "harmless", "helpful", "honest", "none"] = Field(
        "auto", description="Which human-labelled anchors and contract probes apply to this value's measures "
        "(auto: from the name — harmless/safe, helpful, honest/truthful; else none).")

    @field_validator("name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError(f"value name {v!r} must be non-empty and use only letters, digits, '-' and '_'")
        return v


class AnchorFile(Strict):
    path: str = Field(description="CSV/JSONL with prompt, response, label (1: good for the value, 0: bad).")
    value: str = Field(description="The value whose measures it anchors.")


class AuditSettings(Strict):
    floor: float = Field(0.6, ge=0, le=1, description="A measure whose anchor interval's lower bound (accuracy or "
                         "AUC) is at or below this is marked untrusted.")
    xstest: str | None = Field(
        "auto", description="Folder of XSTest (xstest_prompts.csv, completions_*.csv); auto: ../shared/data/xstest "
        "beside the working directory or the config when present; null: not used.")
    truthfulqa: str | None = Field("auto", description="Folder of TruthfulQA (finetune_truth.jsonl, TruthfulQA.csv); "
                                   "auto / null as for xstest. Also where truthfulqa-mc reads its questions.")
    anchors: list[AnchorFile] = Field(default_factory=list, description="Your own human-labelled anchor files.")
    max_items: int = Field(600, ge=10, description="Anchor items scored per set (a seeded sample when larger).")
    probes: bool = Field(True, description="Run the contract probes before any sweep (a failing measure stops it).")


class SplitConfig(Strict):
    train: float = Field(0.8, gt=0, le=1, description="Fraction of prompts for training.")
    val: float = Field(0.1, ge=0, lt=1, description="Fraction of prompts for validation (selection).")
    test: float = Field(0.1, ge=0, lt=1, description="Fraction of prompts for the final report.")
    seed: int = Field(
        0, description="Split seed; the split is a hash of (seed, prompt), so pairs sharing a prompt share a split."
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {self.train}+{self.val}+{self.test}")
        return self


