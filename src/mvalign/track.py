"""Experiment trackers (`report_to: [tensorboard | wandb | mlflow]`) through accelerate's tracker API.

Each adapter's training logs one row per optimizer step (the same numbers as its log.jsonl: DPO / SFT losses,
accuracy, margins, the decorrelation penalty per layer and in total, lr, grad norm, tokens) as tracker run
`train-<method>-<adapter>`; each method's evaluation logs every point (ω or preference label, split, per-value
mean reward and bootstrap interval) and the front's hypervolume as run `eval-<method>`. Files go under
RUN/trackers/ (tensorboard event files; wandb / mlflow write where their own settings say).
"""

from __future__ import annotations

from accelerate import Accelerator

from .config import ConfigError, RunConfig
from .devices import accelerator_kwargs, resolve_device
from .front import Front
from .rundir import RunDir


def make_accelerator(cfg: RunConfig, run: RunDir, name: str) -> Accelerator:
    """An Accelerator on `model.device` whose trackers (if `cfg.report_to` names any) log to run `name` under RUN/trackers/."""
    device = accelerator_kwargs(resolve_device(cfg.model.device))
    if not cfg.report_to:
        return Accelerator(**device)
    run.trackers_dir.mkdir(parents=True, exist_ok=True)
    try:
        acc = Accelerator(**device, log_with=list(cfg.report_to),
                          project_dir=str(run.trackers_dir))
        acc.init_trackers(name)
    except (ImportError, ModuleNotFoundError, ValueError) as e:
        raise ConfigError(f"report_to {cfg.report_to}: {e}; install the tracker's package (e.g. "
                          "`pip install tensorboard`) or remove it from report_to") from None
    return acc


def finish(acc: Accelerator) -> None:
    """Close the trackers of an adapter's training. Not `end_training`, which also ends the process group that
    the next adapter of a multi-process launch still needs."""
    for tracker in acc.trackers:
        tracker.finish()


def log_front(cfg: RunConfig, run: RunDir, label: str, front: Front) -> None:
    """Every point of an evaluated front (one step each: val points, then test) and its hypervolume."""
    if not cfg.report_to:
        return
    acc = make_accelerator(cfg, run, f"eval-{label}")
    points = sorted(front.points, key=lambda p: p.split != "val")
    for step, p in enumerate(points):
        row: dict[str, float] = {f"weight/{k}": float(w) for k, w in p.weights.items()}
        for v, r in p.rewards.items():
            lo, hi = p.ci95[v]
            row |= {f"{p.split}/{v}": r, f"{p.split}/{v}_ci_low": lo, f"{p.split}/{v}_ci_high": hi}
        row[f"{p.split}/pareto"] = float(p.pareto)
        acc.log(row, step=step)
    acc.log({"hypervolume/val": front.hypervolume.val, "hypervolume/test": front.hypervolume.test},
            step=len(points))
    acc.end_training()
