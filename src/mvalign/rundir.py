"""`RunDir`: the one owner of a run directory's layout, and its compatibility check.

RUN/
  config.yaml                  the resolved config the run was made with
  base.json                    fingerprint of the base model's weights every adapter and point here was made on
  versions.json                package versions, platform, seeds
  store.sqlite                 finished adapters and every evaluated point (`store.RunStore`)
  adapters/<method>/<name>/    PEFT LoRA adapters (safetensors), loadable with PeftModel.from_pretrained
  train/<method>/<name>/       log.jsonl per optimizer step, resumable checkpoint/
  rewards/<value>/             BT reward heads (unless the config puts them elsewhere)
  consistency/<value>.json     VC-soup scores of a value's training pairs; summary.json, consistency.png
  front-<method>.json          a method's evaluated front; front.json is the first method's (the contract)
  audit.json, labels.jsonl     the measures against people (`mvalign.audit`); a person's labels (`mvalign.labels`)
  presets.json                 named trade-offs saved by `mvalign pick --save-preset`, served by `mvalign serve`
  report.md, *.png             the report; summary.json of `mvalign run`; diagnostics/ of `mvalign diagnose`
  .locks/                      lock files: one process at a time trains an adapter or evaluates a method
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from filelock import FileLock, Timeout
from pydantic import ValidationError

from .config import ConfigError, RunConfig, config_yaml, load_config
from .errors import MvalignError, write_atomic
from .front import Front
from .store import ADAPTER_MARK, AdapterRef, RunStore

PACKAGES = ("mvalign", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors", "pydantic")
EVALUATION_ONLY = ("sweep", "report_to")
"""Config sections that change only how a run is evaluated: a run dir accepts new values for them (stored points
are keyed by their settings, so nothing stale is reused)."""
LOCATIONS = ("run_dir", "cache_dir")
"""Where the run and the cache live, not what they hold: a run dir moved or copied elsewhere carries on."""
PARTIAL = ".tmp", ".copy"
"""Suffixes of folders being written (never read as finished adapters)."""


class RunLockedError(MvalignError, RuntimeError):
    """Another process holds the lock of what this one was about to do."""


class BaseChangedError(ConfigError):
    """The base model's weights are not those the run directory's adapters and points were made on."""


class RunDir:
    """Every path of one run directory. Cheap to build; creates nothing until asked."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def of(cls, cfg: RunConfig) -> RunDir:
        return cls(cfg.run_dir)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    config_path = property(lambda self: self.root / "config.yaml")
    versions_path = property(lambda self: self.root / "versions.json")
    store_path = property(lambda self: self.root / "store.sqlite")
    base_path = property(lambda self: self.root / "base.json")
    summary_path = property(lambda self: self.root / "summary.json")
    report_path = property(lambda self: self.root / "report.md")
    diagnostics_dir = property(lambda self: self.root / "diagnostics")
    trackers_dir = property(lambda self: self.root / "trackers")
    consistency_dir = property(lambda self: self.root / "consistency")
    audit_path = property(lambda self: self.root / "audit.json")
    presets_path = property(lambda self: self.root / "presets.json")

    def store(self) -> RunStore:
        return RunStore(self.root)

    def adapter(self, ref: AdapterRef, check: bool = True) -> Path:
        """adapters/<group>/<name>/; `check`: one ConfigError when its mvalign_adapter.json names another adapter
        (swapped or copied in by hand: using it would mix values). Adapters from before the mark pass."""
        path = self.root / "adapters" / ref.group / ref.name
        try:
            made = json.loads((path / ADAPTER_MARK).read_text()) if check else None
        except (OSError, ValueError):
            made = None
        if isinstance(made, dict) and (made.get("group"), made.get("name")) != (ref.group, ref.name):
            raise ConfigError(f"{path}: holds the adapter trained as {made.get('group')}/{made.get('name')} "
                              f"({ADAPTER_MARK}), not {ref}; put the adapters back or retrain it with --force")
        return path

    def train_dir(self, ref: AdapterRef) -> Path:
        return self.root / "train" / ref.group / ref.name

    def reward(self, value: str) -> Path:
        return self.root / "rewards" / value

    def consistency(self, value: str) -> Path:
        return self.consistency_dir / f"{value}.json"

    def front(self, method: str | None = None) -> Path:
        """front-<method>.json, or the primary front.json when `method` is None."""
        return self.root / ("front.json" if method is None else f"front-{method}.json")

    def plot(self, kind: str, method: str) -> Path:
        """<kind>-<method>.png beside the report, e.g. front-mva.png, heatmap-mva.png."""
        return self.root / f"{kind}-{method}.png"

    def front_files(self) -> dict[str, Path]:
        """{label: path} of every front-*.json here, whoever put it there (`mvalign.methods.run_fronts` keeps the
        fronts of mvalign's methods)."""
        return {p.stem.removeprefix("front-"): p for p in sorted(self.root.glob("front-*.json"))}

    def read_front(self, method: str) -> Front:
        """A front-<method>.json (any format mvalign has written), or one clear error naming the file."""
        return Front.read(self.front(method), method)

    def write_front(self, front: Front, method: str, primary: bool = False) -> Path:
        """front-<method>.json, and front.json too for the run's primary method (each written atomically)."""
        targets = [self.front(method)] + ([self.front()] if primary else [])
        text = front.dumps()
        for path in targets:
            write_atomic(path, f"the {method} front", lambda tmp: tmp.write_text(text),
                         "its points are in the store: re-running rewrites it in seconds")
        return targets[0]

    @contextlib.contextmanager
    def lock(self, name: str, doing: str) -> Iterator[None]:
        """Hold .locks/<name>.lock while `doing` (e.g. "training dpo/helpful"); another process holding it is an
        error at once, never a wait or a race. The OS drops the lock of a killed process."""
        path = self.root / ".locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(path, timeout=0):
                yield
        except Timeout:
            raise RunLockedError(f"another process is {doing} in {self.root} (it holds {path}); wait for it to finish, "
                                 "then re-run: finished work is picked up, not redone") from None

    def check_base(self, model, name: str) -> str:
        """Record the base weights' fingerprint in base.json on first use; afterwards refuse different weights
        (a checkpoint replaced in place, e.g. by `combine --out` into the model folder). Returns the fingerprint."""
        return self.check_fingerprint(*base_identity(model), name)

    def check_fingerprint(self, now: str, dtype: str, name: str, where: str = "here") -> str:
        """`check_base` for a model loaded elsewhere (a Ray worker): its fingerprint and dtype (`base_identity`)."""
        path = self.base_path
        if not path.is_file():
            record = json.dumps({"model": name, "fingerprint": now, "dtype": dtype}, indent=2)
            write_atomic(path, "the base model's fingerprint", lambda tmp: tmp.write_text(record, encoding="utf-8"))
            return now
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            was = saved["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path}: unreadable ({e!r}); if the base model did not change, delete it and re-run") from None
        if was != now and saved.get("dtype", dtype) != dtype:
            raise BaseChangedError(
                f"{name}: the base model is loaded as {dtype} {where} but this run was made with {saved['dtype']} ({path}); "
                f"set model.dtype: {saved['dtype']} to carry on with this run (model.dtype auto means bfloat16 on CUDA, "
                "float32 elsewhere), or use a new run_dir")
        if was != now:
            raise BaseChangedError(
                f"{name}: the base model's weights changed since this run was made (fingerprint {now[:12]}… {where}, {path} "
                f"records {was[:12]}…); its adapters and points belong to the old weights. Restore the original model "
                "or use a new run_dir")
        return now

    def trained_methods(self) -> list[str]:
        """Methods with an adapters/<method>/ folder."""
        root = self.root / "adapters"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def adapter_names(self, method: str) -> list[str]:
        """Finished adapters of a method (folders being written are left out)."""
        root = self.root / "adapters" / method
        return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.endswith(PARTIAL)) if root.is_dir() else []

    def load_config(self) -> RunConfig:
        if self.root.is_file():
            raise ConfigError(f"{self.root} is a file; give the run directory (the config's run_dir) instead")
        if not self.config_path.is_file():
            raise ConfigError(f"{self.root}: not an mvalign run directory (no config.yaml); train a value vector first")
        try:
            cfg = load_config(self.config_path)
        except ConfigError as e:  # written by mvalign itself: most likely by another version of it
            made = "an unknown version"
            with contextlib.suppress(OSError, ValueError, AttributeError):
                made = "mvalign " + json.loads(self.versions_path.read_text(encoding="utf-8"))["mvalign"]
            now = package_versions().get("mvalign", "?")
            if made == f"mvalign {now}":
                raise
            raise ConfigError(f"{e}\n  this run was made by {made} ({self.versions_path}), this is mvalign {now}: use "
                              "that version for this run, or edit the fields named above in its config.yaml") from None
        cfg.run_dir = str(self.root.resolve())  # the run may have been moved since config.yaml was written
        return cfg

    def artifacts_of(self, methods: Sequence[str]) -> list[str]:
        """Methods among `methods` with anything trained or evaluated here."""
        store = self.store() if self.store_path.is_file() else None
        return [m for m in methods if (self.root / "adapters" / m).exists() or (self.root / "train" / m).exists()
                or (store is not None and (store.vectors(m) or store.points(m)))]

    def prepare(self, cfg: RunConfig, readers: Mapping[str, Sequence[str]],
                canonical: Callable[[RunConfig], dict] | None = None) -> RunDir:
        """Create the folder, write config.yaml and versions.json; refuse a run dir whose artifacts came from a
        different config.

        `readers`: config block -> the methods whose training reads it (from the method registry), e.g.
        {"methods.mva": ("mva", "mva-orth"), "methods.ric": ("ric",)}. Such a block may change while none of
        its readers has an adapter, checkpoint, vector or point here; `sweep` may always change; any other change
        (model, data, LoRA, training, ...) is refused. `canonical(cfg)`: the dump compared (default: the plain
        dump; the registry's fills in every method block, so defaults left out and an earlier config's top-level
        sections compare equal). config.yaml is rewritten only when the config changed, so a run made by an
        earlier version keeps its file (and stays usable from a read-only folder).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        canonical = canonical or (lambda c: c.model_dump(mode="json"))
        new = canonical(cfg)
        markers = ("config.yaml", "store.sqlite", "adapters", "train", "rewards", "consistency", ".locks", "base.json")
        if any(self.root.iterdir()) and not any((self.root / m).exists() for m in markers):
            raise ConfigError(f"run_dir {self.root} is a non-empty folder that is not an mvalign run; choose a new "
                              "or empty run_dir")
        moved_only, changed = False, []
        if self.config_path.is_file():
            # validated, so fields added (with defaults) by a newer mvalign do not count as changes
            try:
                raw = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
                old = canonical(RunConfig.model_validate(raw))
            except (yaml.YAMLError, ValidationError, TypeError) as e:
                first = str(e).strip().splitlines()[0]
                raise ConfigError(f"{self.config_path} is not an mvalign run config ({first}); choose another run_dir "
                                  "or move that file away") from None
            blocking = []
            here = cfg.model.device
            changed = _changed_sections(_identity(old, here), _identity(new, here))
            moved_only = bool(changed) and all(k in LOCATIONS for k in changed)
            for k in changed:
                if k in EVALUATION_ONLY or k in LOCATIONS:
                    continue
                made = self.artifacts_of(readers[k]) if k in readers else None
                if made is None:
                    blocking.append(k)
                elif made:
                    blocking.append(f"{k} (read by the {', '.join(made)} artifacts already there)")
            if blocking:
                raise ConfigError(
                    f"{self.root} was made with a different config (differs in: {', '.join(blocking)}). "
                    "Use a new run_dir, or delete the old run to start over; finished work there is kept until you do."
                )
        seeds = {"dpo": cfg.training.seed, "split": cfg.split.seed,  # "dpo": the training seed's earlier name
                 "per_value": {v.name: value_seed(cfg.training.seed, v.name) for v in cfg.values}}
        versions = json.dumps({**package_versions(), "seeds": seeds}, indent=2)
        # unchanged files are not rewritten, so a finished run stays usable from a read-only folder (also when it
        # was moved: load_config reads run_dir from where config.yaml is, not from its text)
        for path, content in ((self.config_path, config_yaml(cfg)), (self.versions_path, versions)):
            if path == self.config_path and path.is_file() and (moved_only or not changed):
                continue
            if not path.is_file() or path.read_text(encoding="utf-8") != content:
                write_atomic(path, "the run's record of its config",
                             lambda tmp, content=content: tmp.write_text(content, encoding="utf-8"))
        return self


def base_identity(model) -> tuple[str, str]:
    """(fingerprint, dtype) of a loaded base model's weights, LoRA parameters excluded (what base.json records)."""
    from .models import model_fingerprint

    dtype = str(next(p.dtype for n, p in model.named_parameters() if "lora_" not in n)).removeprefix("torch.")
    return model_fingerprint(model), dtype


def _identity(dump: dict, device: str) -> dict:
    """A config dump without where the work runs (model.device, values.*.reward.device: a run made on one device
    carries on on another) and without how it is checked (audit, values.*.audits / anchor), with model.dtype 'auto'
    resolved for `device` here (base.json's fingerprint, which holds the dtypes, guards the rest)."""
    from .devices import DeviceError, resolve_device, resolve_dtype

    out = json.loads(json.dumps(dump))
    model = out.get("model") or {}
    model.pop("device", None)
    if model.get("dtype") == "auto":
        with contextlib.suppress(DeviceError):  # a bad device is reported, with its field, where the model loads
            model["dtype"] = str(resolve_dtype("auto", resolve_device(device))).removeprefix("torch.")
    out.pop("audit", None)  # checking the measures changes no trained or stored work (config.yaml is not rewritten)
    for v in out.get("values") or []:
        if isinstance(v.get("reward"), dict):
            v["reward"].pop("device", None)
        v.pop("audits", None)  # audit scores are stored beside the primaries, keyed by their own identity
        v.pop("anchor", None)
    return out


def _changed_sections(old: dict, new: dict) -> list[str]:
    """Top-level keys that differ; the per-method `methods` block is compared per method ("methods.<name>")."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k == "methods":
            o, n = old.get(k) or {}, new.get(k) or {}
            out += [f"methods.{m}" for m in sorted(set(o) | set(n)) if o.get(m) != n.get(m)]
        elif old.get(k) != new.get(k):
            out.append(k)
    return out


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def value_seed(seed: int, value: str) -> int:
    """Seed of one value's LoRA init, data order and dropout: sha256(f"{seed}:{value}") mod 2³¹.

    Reproducible from the config seed, and different per value, so two value vectors never share their random
    A-factor initialisation by accident (which would correlate them before any training)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{value}".encode()).digest()[:4], "big") % 2**31
