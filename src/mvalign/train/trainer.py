"""The training loop for one LoRA adapter: resumable, seedable, accelerate-ready; the loss is the sum of the
objective's terms (`train.losses`), so the loop knows no method and no particular loss.

Data order and dropout are functions of (seed, step), so a run resumed from a checkpoint continues exactly as the
uninterrupted run would have. A checkpoint records the SHA-256 of its training examples' token ids
(`examples_digest`: integers, so the same on every device) and is resumed only by a training on the same examples.

Under `accelerate launch` each process takes every world_size-th micro-batch of the same stream; gradients are
synchronised on the last micro-batch of each optimizer step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..config import TrainingSettings
from ..devices import accelerator_kwargs, resolve_precision
from ..errors import MvalignError, writing
from ..faults import reached
from .losses import Objective


@dataclass
class TrainResult:
    steps: int
    """Optimizer steps done in total (including steps before a resume)."""
    seconds: float
    """Wall time of the steps run in this call."""
    seconds_per_step: float
    """seconds / steps run in this call (NaN when none ran)."""
    last: dict[str, float]
    """Metrics of the last logged step."""


def total_steps(settings: TrainingSettings, n_pairs: int, world_size: int = 1) -> int:
    """max_steps, else ceil(epochs · ceil(n / batch_size) / (grad_accum · world_size))."""
    if settings.max_steps is not None:
        return settings.max_steps
    micro_per_epoch = math.ceil(n_pairs / settings.batch_size)
    return max(1, math.ceil(settings.epochs * micro_per_epoch / (settings.grad_accum * world_size)))


def micro_batch_indices(n_pairs: int, batch_size: int, seed: int, micro: int) -> np.ndarray:
    """Pair indices of global micro-batch number `micro`: epoch e uses the permutation drawn from rng(seed, e)."""
    per_epoch = math.ceil(n_pairs / batch_size)
    epoch, pos = divmod(micro, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_pairs)
    return order[pos * batch_size : (pos + 1) * batch_size]


def visited_pairs(settings: TrainingSettings, n_pairs: int, world_size: int = 1) -> list[int]:
    """Indices of the pairs a training with these settings reads (every process together), in ascending order."""
    micros = total_steps(settings, n_pairs, world_size) * settings.grad_accum * world_size
    if micros >= math.ceil(n_pairs / settings.batch_size):  # a whole epoch: every pair
        return list(range(n_pairs))
    return sorted(i for m in range(micros) for i in micro_batch_indices(n_pairs, settings.batch_size, settings.seed, m))


def examples_digest(examples) -> str:
    """SHA-256 of the training examples' token ids (each a frozen dataclass of int tuples, in training order).

    Covers what the loop reads by index: the pairs or sequences, hence the data, its filtering (VC-soup's consistency
    selection), prompt tags (RiC), the tokenizer and the length limits. Float inputs given beside the examples (pair
    weights, margins, reference log-probs) are not covered: they differ across devices in their last bits, and a
    checkpoint made on a GPU resumes on a CPU by design."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(dataclasses.astuple(e) if dataclasses.is_dataclass(e) else e, separators=(",", ":")).encode())
        h.update(b"\n")
    return h.hexdigest()


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(folder: Path, model, optimizer, scheduler, step: int, digest: str) -> None:
    """Write checkpoint.tmp, then swap it in; a failed write (full disk) leaves the previous checkpoint whole."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(tmp, f"the step-{step} checkpoint", f"the last complete checkpoint, {folder}, is kept"):
            tmp.mkdir(parents=True)
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, "examples_sha256": digest}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


class CheckpointError(MvalignError, RuntimeError):
    """A training checkpoint that cannot be resumed from."""


class DivergedError(MvalignError, FloatingPointError):
    """A training step whose loss or gradient is not finite: it is not applied."""


def _load_checkpoint(folder: Path, model, optimizer, scheduler, digest: str) -> int:
    missing = [f for f in ("trainable.safetensors", "optimizer.pt", "state.json") if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: incomplete checkpoint (missing {', '.join(missing)}); delete that folder to "
                              "restart this adapter's training from step 0")
    try:
        state = json.loads((folder / "state.json").read_text())
        step = int(state["step"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}/state.json: unreadable ({type(e).__name__}: {e}); delete {folder} to restart") from None
    # a checkpoint written before the digest was recorded has none and is resumed as before
    if state.get("examples_sha256", digest) != digest:
        raise CheckpointError(
            f"checkpoint {folder} (step {step}) was trained on other examples than this training's (token-id SHA-256 "
            f"{str(state['examples_sha256'])[:12]}… vs {digest[:12]}…): the data, its filter or tags (e.g. refit judges), "
            f"the tokenizer or the length limits changed since. Delete {folder} to retrain from step 0, or restore what "
            "changed to resume")
    params = dict(model.named_parameters())
    try:
        saved = load_file(str(folder / "trainable.safetensors"))
    except Exception as e:  # truncated / corrupt file
        raise CheckpointError(f"{folder}/trainable.safetensors: unreadable ({e}); delete {folder} to restart") from None
    for name, value in saved.items():
        if name not in params:
            raise CheckpointError(f"checkpoint {folder} holds {name}, which this model lacks: LoRA settings changed? "
                                  f"Delete {folder} to restart")
        params[name].data.copy_(value)
    # map to the CPU: a checkpoint made on a GPU resumes anywhere (load_state_dict moves the state to the parameters)
    try:  # weights_only: a planted pickle that would run code is refused, never executed
        states = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"{folder}/optimizer.pt: not an optimizer state mvalign wrote ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]}); delete {folder} to restart") from None
    optimizer.load_state_dict(states["optimizer"])
    scheduler.load_state_dict(states["scheduler"])
    return step


def train_adapter(
    model: torch.nn.Module,
    objective: Objective,
    settings: TrainingSettings,
    out_dir: str | os.PathLike[str],
    pad_id: int,
    *,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train the trainable (LoRA) parameters of `model` on `objective`.

    Per micro-batch: loss = Σ_terms term(model, batch, indices, micro), divided by grad_accum; terms run under bf16
    autocast when settings.precision resolves to bf16 on the device (`devices.resolve_precision`), except those with
    `autocast = False` (penalties on the factors). The optimisation settings (lr, schedule, steps or epochs, batch,
    grad_accum, precision, clipping, seed, save_every) come from `settings`. Writes `out_dir/log.jsonl` (one line per
    optimizer step) and a resumable `out_dir/checkpoint/` every `settings.save_every` steps and at the end; an
    existing checkpoint is resumed from.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = accelerator or Accelerator(**accelerator_kwargs(next(model.parameters()).device))
    n = len(objective.examples)
    if n == 0:
        raise ValueError("no training examples")
    if not objective.terms:
        raise ValueError("the objective has no loss terms")
    steps = total_steps(settings, n, acc.num_processes)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = get_scheduler(settings.scheduler, optimizer, num_warmup_steps=settings.warmup_steps, num_training_steps=steps)
    model, optimizer = acc.prepare(model, optimizer)
    ckpt = out / "checkpoint"
    digest = examples_digest(objective.examples)
    resumable = (ckpt / "state.json").is_file()
    start = _load_checkpoint(ckpt, acc.unwrap_model(model), optimizer, scheduler, digest) if resumable else 0

    bf16 = resolve_precision(settings.precision, acc.device) == "bf16"
    autocast = torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=bf16)
    model.train()
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc="train", disable=not (progress and acc.is_main_process), dynamic_ncols=True)
    log_path = out / "log.jsonl"
    with bar, open(log_path, "a", encoding="utf-8") as log_file:  # the bar ends its line even when a step fails
        for step in range(start, steps):
            sums: dict[str, float] = {}
            t_step = time.perf_counter()
            for a in range(settings.grad_accum):
                micro = (step * settings.grad_accum + a) * acc.num_processes + acc.process_index
                idx = micro_batch_indices(n, settings.batch_size, settings.seed, micro)
                batch = {k: v.to(acc.device) for k, v in objective.collate([objective.examples[i] for i in idx], pad_id).items()}
                t_idx = torch.as_tensor(idx)
                torch.manual_seed(settings.seed * 1_000_003 + micro)  # dropout: a function of (seed, micro-batch)
                sync = a == settings.grad_accum - 1
                with (contextlib.nullcontext() if sync else acc.no_sync(model)):
                    logs = {"tokens": float(batch["attention_mask"].sum()) * settings.grad_accum}
                    loss = None
                    for term in objective.terms:
                        with autocast if getattr(term, "autocast", True) else contextlib.nullcontext():
                            part, part_logs = term(model, batch, t_idx, micro)
                        loss = part if loss is None else loss + part
                        logs.update(part_logs)
                    logs["loss"] = loss.item()
                    acc.backward(loss / settings.grad_accum)
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v / settings.grad_accum
            if acc.num_processes > 1:  # the log row of the global batch: means over every process's micro-batches
                keys = sorted(sums)
                mean = acc.reduce(torch.tensor([sums[k] for k in keys], device=acc.device, dtype=torch.float64), "mean")
                sums = dict(zip(keys, mean.tolist()))
                sums["tokens"] *= acc.num_processes
            if settings.max_grad_norm is not None:
                sums["grad_norm"] = float(acc.clip_grad_norm_(params, settings.max_grad_norm))
            # after the reduction (loss) and the all-reduce (gradients), every process takes the same decision
            bad = {k: sums[k] for k in ("loss", "grad_norm") if k in sums and not math.isfinite(sums[k])}
            if "grad_norm" not in sums:  # clipping off: every gradient, in one device sync
                grads = [torch.isfinite(p.grad).all() for p in params if p.grad is not None]
                if grads and not bool(torch.stack(grads).all()):
                    bad["gradient"] = float("nan")
            if bad:
                saved = json.loads((ckpt / "state.json").read_text())["step"] if (ckpt / "state.json").is_file() else 0
                raise DivergedError(
                    f"{out}: step {step + 1} of {steps} gave non-finite {', '.join(f'{k} = {v}' for k, v in bad.items())}; "
                    f"the step was not applied and nothing was saved (last checkpoint: step {saved}). Usual causes: a "
                    "learning rate too high for this model (training.lr), bf16 overflow (training.precision: fp32), non-finite "
                    "inputs (reference log-probs, margins, pair weights)")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            last = {"step": step + 1, "lr": scheduler.get_last_lr()[0], "seconds": time.perf_counter() - t_step,
                    "bf16": float(bf16), **sums}  # bf16: the precision `auto` resolved to on this machine
            acc.log(last, step=step + 1)  # the trackers of `report_to`, if the accelerator has any
            if acc.is_main_process:
                with writing(log_path, "the training log", "the last checkpoint is kept"):
                    log_file.write(json.dumps(last) + "\n")
                    log_file.flush()
                bar.set_postfix({k: f"{sums[k]:.4g}" for k in ("loss", "accuracy", "margin") if k in sums})
                bar.update(1)
                if (step + 1) % settings.save_every == 0 or step + 1 == steps:
                    _save_checkpoint(ckpt, acc.unwrap_model(model), optimizer, scheduler, step + 1, digest)
            acc.wait_for_everyone()
            reached("step")
    seconds = time.perf_counter() - t0
    ran = steps - start
    return TrainResult(steps, seconds, seconds / ran if ran else float("nan"), last)
