"""Interference diagnostics between value vectors (the MVA paper's heat map): cosine similarity and HSIC/CKA of
their weight updates, per module, per layer and overall, computed from the LoRA factors without forming ΔW.

cos(ΔW_i, ΔW_j) = <ΔW_i, ΔW_j>_F / (‖ΔW_i‖_F ‖ΔW_j‖_F) with <s_i B_i A_i, s_j B_j A_j>_F = s_i s_j tr((B_iᵀ B_j)(A_j A_iᵀ)).
A layer's (or the whole vector's) cosine concatenates its modules: Σ inner / sqrt(Σ ‖ΔW_i‖² · Σ ‖ΔW_j‖²).
HSIC / CKA use the rows of ΔW (all rows when d_out <= max_rows, else a fixed seeded sample); a layer's CKA is the
mean over its modules. Summaries: `cos` (whole vectors), `mean_abs_cos` and `cka` (means over modules).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .lora import LoraAdapter, LoraFactors
from .store import AdapterRef
from .train.decorrelation import PenaltySpec, layer_of, module_penalty


def frobenius_inner(f: LoraFactors, g: LoraFactors) -> float:
    """<s_f B_f A_f, s_g B_g A_g>_F from the factors (r × r products only)."""
    return float(f.scale * g.scale * torch.trace((f.B.double().T @ g.B.double()) @ (g.A.double() @ f.A.double().T)))


def pair_interference(a: LoraAdapter, b: LoraAdapter, sigma: float | str = "median", max_rows: int = 512,
                      seed: int = 0) -> dict:
    """Per-module, per-layer and overall cosine, HSIC and CKA between two value vectors' shared modules."""
    shared = sorted(set(a.modules) & set(b.modules))
    if not shared:
        raise ValueError(f"value vectors {a.name!r} and {b.name!r} share no module")
    gen = torch.Generator().manual_seed(seed)
    modules: dict[str, dict[str, float]] = {}
    for m in shared:
        f, g = a.modules[m], b.modules[m]
        f64 = LoraFactors(f.A.double(), f.B.double(), f.scale)
        g64 = LoraFactors(g.A.double(), g.B.double(), g.scale)
        d_out = f.B.shape[0]
        rows = torch.randperm(d_out, generator=gen)[:max_rows] if d_out > max_rows else None
        inner, nf, ng = frobenius_inner(f, g), frobenius_inner(f, f), frobenius_inner(g, g)
        modules[m] = {
            "inner": inner, "norm2_a": nf, "norm2_b": ng,
            "cos": inner / np.sqrt(nf * ng) if nf > 0 and ng > 0 else 0.0,
            "hsic": module_penalty(f64, g64, PenaltySpec("hsic", "delta_w", sigma), rows).item(),
            "cka": module_penalty(f64, g64, PenaltySpec("cka", "delta_w", sigma), rows).item(),
        }
    by_layer: dict[str, list[str]] = defaultdict(list)
    for m in shared:
        by_layer[layer_of(m)].append(m)
    return {
        "a": a.name, "b": b.name,
        "overall": {**_summary([modules[m] for m in shared]), "modules": len(shared)},
        "layers": {layer: _summary([modules[m] for m in ms]) for layer, ms in by_layer.items()},
        "modules": modules,
    }


def _summary(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    inner = sum(r["inner"] for r in rows)
    na, nb = sum(r["norm2_a"] for r in rows), sum(r["norm2_b"] for r in rows)
    return {
        "cos": inner / np.sqrt(na * nb) if na > 0 and nb > 0 else 0.0,
        "mean_abs_cos": float(np.mean([abs(r["cos"]) for r in rows])),
        "cka": float(np.mean([r["cka"] for r in rows])),
        "hsic": float(np.mean([r["hsic"] for r in rows])),
    }


def interference_report(adapters: Sequence[LoraAdapter], **kw) -> dict:
    """All pairs of value vectors, plus value × value matrices of the overall measures."""
    names = [a.name for a in adapters]
    pairs = [pair_interference(a, b, **kw) for a, b in itertools.combinations(adapters, 2)]
    matrix = {k: np.eye(len(names)).tolist() for k in ("cos", "mean_abs_cos", "cka")}
    for p in pairs:
        i, j = names.index(p["a"]), names.index(p["b"])
        for k in matrix:
            matrix[k][i][j] = matrix[k][j][i] = p["overall"][k]
    return {"values": names, "pairs": pairs, "matrix": matrix}


def plot_interference(report: dict, path: str | Path, title: str = "") -> Path:
    """PNG: value × value matrices (|cos| per module, CKA) and a layer × pair heat map of cos and CKA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, pairs = report["values"], report["pairs"]
    layers = sorted(
        {layer for p in pairs for layer in p["layers"]}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else s)
    )
    labels = [f"{p['a']}–{p['b']}" for p in pairs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.2 + 0.25 * len(pairs)), gridspec_kw={"width_ratios": [1, 1, 3]})
    for ax, key, label in [(axes[0], "mean_abs_cos", "mean |cos| over modules"), (axes[1], "cka", "mean CKA over modules")]:
        m = np.array(report["matrix"][key])
        im = ax.imshow(m, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i, j in itertools.product(range(len(names)), repeat=2):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", color="w" if m[i, j] < 0.6 else "k", fontsize=8)
        ax.set_title(label, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    grid = np.array([[p["layers"][layer][k] for layer in layers] for p in pairs for k in ("cos", "cka")])
    im = axes[2].imshow(grid, aspect="auto", cmap="coolwarm", vmin=-1, vmax=1)
    axes[2].set_yticks(range(2 * len(pairs)), [f"{lab} {k}" for lab in labels for k in ("cos", "CKA")], fontsize=8)
    axes[2].set_xticks(range(len(layers)), layers, fontsize=7)
    axes[2].set_xlabel("layer")
    axes[2].set_title("per layer", fontsize=9)
    fig.colorbar(im, ax=axes[2], fraction=0.02)
    fig.suptitle(title or "value-vector interference", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def diagnose_run(run_dir: str | Path, method: str, out_dir: str | Path | None = None) -> tuple[Path, Path, dict]:
    """Write diagnostics/interference-<method>.json and .png for the value vectors of one method of a run."""
    from .config import ConfigError
    from .lora import load_lora_adapter
    from .rundir import RunDir

    run = RunDir(run_dir)
    names = run.adapter_names(method)
    if len(names) < 2:
        raise ConfigError(f"{run.root / 'adapters' / method}: diagnostics need at least two trained value vectors, found {names}")
    report = interference_report([load_lora_adapter(run.adapter(AdapterRef(method, n)), n) for n in names])
    report["method"] = method
    out = Path(out_dir) if out_dir else run.diagnostics_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"interference-{method}.json"
    json_path.write_text(json.dumps(report, indent=1))
    png = plot_interference(report, out / f"interference-{method}.png", title=f"value-vector interference ({method})")
    return json_path, png, report


def diagnose_methods(run_dir: str | Path, method: str | None = None,
                     out_dir: str | Path | None = None) -> list[tuple[Path, Path, dict]]:
    """`diagnose_run` for one method, or for every method trained in the run whose adapters are value vectors (the
    registry's `kind`: not seqt's stages, lw / modpo's per-weight models or ric's single model)."""
    from .config import ConfigError
    from .methods import REGISTRY
    from .rundir import RunDir

    trained = RunDir(run_dir).trained_methods()
    methods = [method] if method else [m for m in trained if m in REGISTRY and REGISTRY[m].kind == "value-vectors"]
    if not methods:
        raise ConfigError(f"{run_dir}: no trained value vectors; run `mvalign train` first")
    return [diagnose_run(run_dir, m, out_dir) for m in methods]
