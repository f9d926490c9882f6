"""The methods, one module each, behind one registry (`registry.py`); the operations every caller uses.

    get_method("mva").train(...)         what a method trains     train_method(cfg, "mva")
    get_method("mva").candidates(...)    what it evaluates        mvalign.evaluate.evaluate_method(cfg, "mva")
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import ConfigError, RunConfig
from ..rundir import RunDir
from ..store import VectorRecord
from .base import Method
from .registry import REGISTRY

__all__ = ["Method", "get_method", "method_names", "methods_table", "prepare_run", "readers", "train_method"]


def method_names() -> list[str]:
    return list(REGISTRY)


def get_method(name: str) -> Method:
    if name not in REGISTRY:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def readers() -> dict[str, tuple[str, ...]]:
    """Config section -> the methods whose training reads it (for `RunDir.prepare`); each method's own block
    `methods.<name>` is read by that method."""
    out: dict[str, tuple[str, ...]] = {}
    for m in REGISTRY.values():
        for section in (*m.reads, f"methods.{m.name}"):
            out[section] = out.get(section, ()) + (m.name,)
    return out


def check_method_blocks(cfg: RunConfig) -> None:
    """Every `methods.<name>` block names a known method and validates against its settings."""
    for name in cfg.methods:
        if name not in REGISTRY:
            raise ConfigError(f"methods.{name}: no method named {name!r}; known: {', '.join(REGISTRY)}")
        REGISTRY[name].options(cfg)


def prepare_run(cfg: RunConfig) -> RunDir:
    """The run directory of `cfg`, created (or checked against the config it was made with); under a multi-process
    launch the main process first, then the others (which find it made)."""
    from ..devices import process_state

    check_method_blocks(cfg)
    with process_state(cfg.model.device).main_process_first():
        return RunDir.of(cfg).prepare(cfg, readers())


def train_method(cfg: RunConfig, method: str, values: Sequence[str] = (), *, force: bool = False,
                 progress: bool = True) -> list[VectorRecord]:
    """Train what `method` needs (skipping finished adapters); `values` restricts per-value methods. A method that
    evaluates another's vectors trains those."""
    m = get_method(method)
    for v in values:
        cfg.value(v)
    if not cfg.values:
        raise ConfigError("the config has no values to train")
    run = prepare_run(cfg)
    owner = get_method(m.source)
    return owner.train(cfg, run, tuple(values), force, progress)


def methods_table() -> str:
    """The README's methods table (Markdown), generated from the registry."""
    lines = ["| method | trains / evaluates | source | config it reads |", "|---|---|---|---|"]
    for m in REGISTRY.values():
        what = m.description if m.train else f"{m.description} (trains nothing: the {m.vectors} vectors)"
        reads = ", ".join([*m.reads, *([f"methods.{m.name}"] if m.settings else [])]) or "—"
        lines.append(f"| `{m.name}` | {what} | {m.paper} | {reads} |")
    return "\n".join(lines)
