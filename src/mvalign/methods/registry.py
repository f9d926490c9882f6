"""The one list of method modules. A new method is a module in this package with `METHODS = [Method(...)]`, plus
its name here."""

from __future__ import annotations

from importlib import import_module

from .base import Method

MODULES = ("dpo", "mva", "vcsoup", "seqt", "lw", "modpo", "ric", "mod")


def _collect() -> dict[str, Method]:
    out: dict[str, Method] = {}
    for module in MODULES:
        for m in import_module(f"{__package__}.{module}").METHODS:
            if m.name in out:
                raise RuntimeError(f"method {m.name!r} is declared twice ({module})")
            out[m.name] = m
    for m in out.values():
        if m.vectors is not None and (m.vectors not in out or out[m.vectors].train is None):
            raise RuntimeError(f"method {m.name!r} evaluates the vectors of {m.vectors!r}, which trains nothing")
        if m.train is None and m.vectors is None:
            raise RuntimeError(f"method {m.name!r} neither trains nor names whose vectors it evaluates")
    return out


REGISTRY: dict[str, Method] = _collect()
