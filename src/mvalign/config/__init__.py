"""The one typed run configuration, loadable from YAML.

Every field documents itself (``mvalign config --show`` prints the defaults with these descriptions as comments).
Relative paths in a YAML file are resolved against the directory of that file, so a config can be run from anywhere.
The sections live in ``sections.py`` (model, data, rewards, split, sweep) and ``objectives.py`` (LoRA, DPO,
decorrelation, consistency, baselines); everything is importable from ``mvalign.config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .objectives import (
    METHOD_ALIASES,
    ConsistencySettings,
    DecorrelationSettings,
    DPOSettings,
    LoraSettings,
    ModpoSettings,
    PaperDecorrelationSettings,
    PerWeightSettings,
    TrainingSettings,
    method_aliases,
)
from .sections import (
    EMBEDDED_MODEL,
    AnchorFile,
    AuditSettings,
    ConfigError,
    DataSourceConfig,
    ModelConfig,
    RewardConfig,
    SplitConfig,
    SweepSettings,
    ValueConfig,
)

__all__ = [
    "EMBEDDED_MODEL",
    "AnchorFile",
    "AuditSettings",
    "ConfigError",
    "ConsistencySettings",
    "DPOSettings",
    "DataSourceConfig",
    "DecorrelationSettings",
    "METHOD_ALIASES",
    "ModpoSettings",
    "PaperDecorrelationSettings",
    "PerWeightSettings",
    "TrainingSettings",
    "LoraSettings",
    "MVAConfig",
    "RunConfig",
    "ModelConfig",
    "RewardConfig",
    "SplitConfig",
    "SweepSettings",
    "ValueConfig",
    "describe_defaults",
    "config_yaml",
    "dump_config",
    "load_config",
    "resolve_anchors",
]

MAX_LATTICE = 200_000
"""Grid points a grid or adaptive sweep may enumerate (10 weights per value and 7 values would be 10⁷)."""


class RunConfig(BaseModel):
    """Top-level configuration of one mvalign run."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    values: list[ValueConfig] = Field(default_factory=list, description="One entry per value, in training order.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Deterministic train/val/test split.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA value-vector shape.")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, validation_alias=AliasChoices("training", "dpo"),
        description="How every adapter is trained: the DPO objective's β and the optimiser (also read by methods that "
        "train with SFT). Earlier configs call it `dpo`.")
    sweep: SweepSettings = Field(default_factory=SweepSettings, description="Evaluation of weight vectors ω.")
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Each method's own settings, by name (mva, vcsoup, lw, modpo, ric); each "
        "method validates its block and hands it to its training (`mvalign methods` lists them). Earlier configs' "
        "top-level `decorrelation`, `consistency` and `baselines` sections are read as methods.mva, methods.vcsoup "
        "and methods.lw + methods.modpo."
    )
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Checking the measures: anchors, "
                                 "the trust floor, contract probes (`mvalign judges audit`).")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list, description="Experiment trackers (through accelerate) that receive training metrics, "
        "every evaluated point and the fronts' hypervolume; files under RUN/trackers/. wandb / mlflow need their "
        "packages installed.")
    run_dir: str = Field("runs/mvalign", description="Run directory: config, adapters, logs, checkpoints, store.")
    cache_dir: str = Field(
        "~/.cache/mvalign",
        description="Shared cache: converted embedded model, reference log-probs (env MVALIGN_CACHE_DIR overrides).",
    )

    @model_validator(mode="before")
    @classmethod
    def _earlier_sections(cls, raw: Any) -> Any:
        return method_aliases(raw) if isinstance(raw, dict) else raw

    @model_validator(mode="after")
    def _unique_values(self) -> RunConfig:
        names = [v.name for v in self.values]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"value names must be unique; repeated: {dupes}")
        lattice = len(self.sweep.grid) ** len(names)
        lattice_search = self.sweep.strategy in ("grid", "adaptive") or (self.sweep.strategy == "bo" and self.sweep.bo_snap)
        if lattice_search and lattice > MAX_LATTICE:
            raise ValueError(f"sweep.grid: {len(self.sweep.grid)} weights per value and {len(names)} values make "
                             f"{lattice:,} grid points (at most {MAX_LATTICE:,}); give fewer grid weights, or "
                             "sweep.strategy list with the points to try")
        if self.sweep.strategy in ("grid", "adaptive", "bo") and not any(self.sweep.grid):
            raise ValueError(f"sweep.grid: every weight is 0 ({self.sweep.grid}), so every candidate is the base model; "
                             "add nonzero weights, e.g. [0, 0.5, 1]")
        if self.sweep.strategy == "list" and self.sweep.points and not any(any(p.values()) for p in self.sweep.points):
            raise ValueError("sweep.points: every point is all zeros (the base model); give at least one nonzero weight")
        ref = self.sweep.reference_point
        if ref is not None and names and len(ref) != len(names):
            raise ValueError(f"sweep.reference_point has {len(ref)} numbers; give one per value {names}")
        return self

    def value(self, name: str) -> ValueConfig:
        for v in self.values:
            if v.name == name:
                return v
        raise ConfigError(f"no value named {name!r} in the config; known values: {[v.name for v in self.values]}")


MVAConfig = RunConfig
"""The run config's earlier name (it configures every method, not only MVA); kept so existing code keeps working."""


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    def res(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    for v in cfg.values:
        v.data.path = [res(p) for p in v.data.path]
        for r in (v.reward, v.train_judge, *v.audits):
            if r and r.path and (base / Path(r.path).expanduser()).exists():
                r.path = res(r.path)
            if r and r.data:
                r.data.path = [res(p) for p in r.data.path]
            if r and r.labels:
                r.labels = res(r.labels)
    for a in cfg.audit.anchors:
        a.path = res(a.path)
    resolve_anchors(cfg, base)
    model_path = base / cfg.model.name
    if model_path.exists():
        cfg.model.name = str(model_path.resolve())
    cfg.run_dir = res(cfg.run_dir)
    return cfg


def resolve_anchors(cfg: RunConfig, base: Path) -> RunConfig:
    """audit.xstest / audit.truthfulqa: 'auto' becomes shared/data/<name> in the nearest folder above `base` that has
    it (the project keeps ../shared/data beside its checkout), else null; a given folder is taken relative to base."""
    for name in ("xstest", "truthfulqa"):
        folder = getattr(cfg.audit, name)
        if folder == "auto":
            found = [d / "shared" / "data" / name for d in base.parents if (d / "shared" / "data" / name).is_dir()]
            setattr(cfg.audit, name, str(found[0].resolve()) if found else None)
        elif folder is not None:
            q = Path(folder).expanduser()
            setattr(cfg.audit, name, str(q if q.is_absolute() else (base / q).resolve()))
    return cfg


def load_config(path: str | Path) -> RunConfig:
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
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: invalid config"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    return _resolve_paths(cfg, path.parent.resolve())


def config_yaml(cfg: RunConfig) -> str:
    """The config as the YAML text a run directory stores (and `load_config` reads back)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg), encoding="utf-8")


def describe_defaults(method_settings: dict[str, BaseModel] | None = None) -> str:
    """The default config as YAML, each field preceded by its description as a comment; `method_settings`: the
    default settings of each method block (`methods.<name>`) to show under `methods`."""
    example = RunConfig(
        values=[ValueConfig(name="helpful", data=DataSourceConfig(format="hh-rlhf", path=["data/helpful.jsonl.gz"]))]
    )
    text = _commented_yaml(example, indent=0)
    if not method_settings:
        return text
    blocks = [f"  # {(type(s).__doc__ or '').strip().splitlines()[0]}\n  {name}:\n{_commented_yaml(s, 2)}"
              for name, s in method_settings.items()]
    return text.replace("methods: {}", "methods:\n" + "\n".join(blocks))


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
