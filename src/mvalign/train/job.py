"""One adapter's training, from a method's description of it: load the base, build the objective, attach a LoRA
adapter, train, save, measure, record. Nothing here knows which method asked.

A method describes the adapter as an `AdapterJob`: where it lands (adapters/<group>/<name>), its seed, its
optimisation overrides, held-out pairs to measure, an optional adapter to start from, and `build`, which receives a
`JobContext` (the base model loaded, no adapter attached yet) and returns the `train.losses.Objective`. Anything
that needs the plain base model (reference log-probs, MODPO's margins) is computed inside `build`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from accelerate import PartialState
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from ..config import RunConfig, TrainingSettings
from ..data.pairs import PreferencePair
from ..devices import autocast_dtype, process_state
from ..errors import remove_tree, replace_dir, writing
from ..faults import reached
from ..lora import add_value_adapter
from ..models import cache_root, load_model
from ..rundir import RunDir
from ..store import AdapterRef, VectorRecord, mark_adapter
from ..track import finish, make_accelerator
from .dpo import dpo_loss
from .logprobs import compute_logprobs, reference_logprobs
from .losses import LossTerm, Objective, dpo_objective
from .tokenize import TokenizedPair, tokenize_pairs
from .trainer import train_adapter, visited_pairs


@dataclasses.dataclass
class JobContext:
    """The loaded base model and what objectives need to tokenize and score pairs the way training does."""

    cfg: RunConfig
    run: RunDir
    model: torch.nn.Module
    tokenizer: object
    settings: TrainingSettings
    cache: Path

    @property
    def pad(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def chat(self) -> bool:
        return self.cfg.model.chat_template == "auto"

    @property
    def autocast(self) -> torch.dtype | None:
        return autocast_dtype(self.settings.precision, next(self.model.parameters()).device)

    def tokenize(self, pairs: Sequence[PreferencePair]) -> list[TokenizedPair]:
        d = self.settings
        return tokenize_pairs(self.tokenizer, pairs, d.max_length, d.max_prompt_length, self.chat)

    def reference(self, tok: Sequence[TokenizedPair], only: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached reference log-probs (the base model, adapters disabled); `only`: of these pairs (others NaN)."""
        return reference_logprobs(self.model, tok, self.pad, self.cache, self.settings.batch_size * 2, self.autocast,
                                  only)

    def dpo(self, pairs: Sequence[PreferencePair], *, weights=None, margins=None, scale: float = 1.0,
            extra: Sequence[LossTerm] = (), tokenized: Sequence[TokenizedPair] | None = None) -> Objective:
        """DPO on `pairs` against the cached reference (computed only for the pairs the training will visit), with
        optional per-pair weights / margins / logit scale."""
        tok = list(tokenized) if tokenized is not None else self.tokenize(pairs)
        return dpo_objective(tok, *self.reference(tok, self.visited(len(tok))), self.settings.beta,
                             weights=weights, margins=margins, scale=scale, extra=extra)

    def visited(self, n_pairs: int) -> list[int] | None:
        """Indices of the pairs (of `n_pairs`) this training reads, all processes together; None when it reads every
        one. Per-pair quantities (reference log-probs, MODPO's margins) are computed for these only."""
        used = visited_pairs(self.settings, n_pairs, process_state(self.cfg.model.device).num_processes)
        return None if len(used) == n_pairs else used


@dataclasses.dataclass
class AdapterJob:
    ref: AdapterRef
    """The adapter lands in adapters/<group>/<name> and is recorded in the store under it."""
    seed: int
    build: Callable[[JobContext], Objective]
    val_sets: dict[str, list[PreferencePair]] = dataclasses.field(default_factory=dict)
    """Held-out pairs per value: implicit-reward accuracy and margin are measured on them after training."""
    init_from: Path | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    """Changes to the dpo settings for this adapter (e.g. max_steps, lr)."""
    metrics: dict = dataclasses.field(default_factory=dict)
    """Extra numbers recorded with the adapter."""


def run_adapter_job(cfg: RunConfig, run: RunDir, job: AdapterJob, *, force: bool = False,
                    progress: bool = True) -> VectorRecord:
    """Train (resuming from a checkpoint) and record the adapter of `job`; held-out accuracy per value.

    One job at a time per adapter (a lock in the run dir); one that finds the adapter finished by another
    process while it waited to start returns that record. Under a multi-process launch (`accelerate launch
    --num_processes N`) the N processes are one job: the main process holds the lock and alone computes the reference
    log-probs (the others read its cache), writes the checkpoints, the log, the adapter and the store row; all of them
    take each decision (finished or not) at the same barrier."""
    state = process_state(cfg.model.device)
    lock = run.lock(f"{job.ref.group}-{job.ref.name}", f"training {job.ref}")
    with lock if state.is_main_process else contextlib.nullcontext():
        state.wait_for_everyone()
        done = None if force else finished(run, job.ref)
        state.wait_for_everyone()  # nobody writes the store before every process has looked
        if done is not None:
            return done
        rec = _train_job(cfg, run, job, force, progress, state)
        state.wait_for_everyone()
        return rec if rec is not None else finished(run, job.ref)


def _train_job(cfg: RunConfig, run: RunDir, job: AdapterJob, force: bool, progress: bool,
               state: PartialState) -> VectorRecord | None:
    """Train and record; returns the record on the main process and None on the others."""
    out_dir = run.adapter(job.ref, check=False)
    train_dir = run.train_dir(job.ref)
    if (force or train_dir.is_symlink()) and state.is_main_process:  # never train through a link out of the run
        remove_tree(train_dir)
    cache = cache_root(cfg.cache_dir)
    model, tokenizer = load_model(cfg.model, cache)
    d = cfg.training.model_copy(update={"seed": job.seed, **job.overrides})
    ctx = JobContext(cfg, run, model, tokenizer, d, cache)
    with state.main_process_first():  # base.json and the reference cache: written once, read by the others
        base = run.check_base(model, cfg.model.name)
        objective = job.build(ctx)
        val_tok = {v: ctx.tokenize(p[: d.eval_pairs]) for v, p in job.val_sets.items() if p}
        ref_val = {v: ctx.reference(t) for v, t in val_tok.items()}

    peft_model = add_value_adapter(model, cfg.lora, job.seed)
    if job.init_from is not None:
        set_peft_model_state_dict(peft_model, load_file(str(job.init_from / "adapter_model.safetensors")))
    acc = make_accelerator(cfg, run, f"train-{job.ref.group}-{job.ref.name}")
    reached("reference")
    result = train_adapter(peft_model, objective, d, train_dir, ctx.pad, accelerator=acc, progress=progress)
    finish(acc)
    reached("trained")
    if not state.is_main_process:
        return None
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(tmp, "the trained adapter", f"its training checkpoint is kept in {train_dir}"):
            peft_model.save_pretrained(tmp, safe_serialization=True)
            mark_adapter(tmp, job.ref)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out_dir)
    reached("adapter")

    last = result.last or logged_rows(train_dir).get(result.steps, {})
    metrics = {"train_last_loss": last.get("loss", float("nan")), "train_tokens": logged_tokens(train_dir),
               "base_fingerprint": base[:16], **job.metrics}
    for v, tok in val_tok.items():
        pol = compute_logprobs(peft_model, tok, ctx.pad, d.batch_size * 2, ctx.autocast, desc="held-out log-probs")
        held = dpo_loss(*pol, *ref_val[v], d.beta)
        correct = (held.chosen_rewards > held.rejected_rewards).float()
        suffix = "" if len(val_tok) == 1 and v == job.ref.name else f"_{v}"
        metrics.update(
            {
                f"val_accuracy{suffix}": held.accuracy.item(),
                f"val_margin{suffix}": held.margin.item(),
                f"val_pairs{suffix}": len(tok),
                f"val_accuracy_se{suffix}": (correct.std() / len(correct) ** 0.5).item() if len(correct) > 1 else float("nan"),
            }
        )
    # every segment of a resumed training counts (a re-run after a lost store row trains 0 steps but is not 0 s)
    seconds = logged_sum(train_dir, "seconds") or result.seconds
    rec = VectorRecord(job.ref.name, job.ref.group, str(out_dir), result.steps, seconds,
                       seconds / result.steps if result.steps else 0.0, len(objective.examples), metrics)
    run.store().put_vector(rec)
    reached("vector")
    return rec


def finished(run: RunDir, ref: AdapterRef) -> VectorRecord | None:
    """The store record of a finished adapter whose folder exists, else None."""
    rec = run.store().get_vector(ref)
    return rec if rec is not None and run.adapter(ref, check=False).is_dir() else None  # --force may retrain a swap


def reuse(run: RunDir, src: VectorRecord, group: str) -> VectorRecord:
    """Record a copy of another method's finished adapter as this group's (the same training, done once); under a
    multi-process launch the main process copies and records, the others wait for it."""
    out_dir = run.adapter(AdapterRef(group, src.name), check=False)
    rec = dataclasses.replace(src, group=group, adapter_dir=str(out_dir), metrics={**src.metrics, "reused": src.group})
    state = PartialState()
    if state.is_main_process:
        replace_dir(run.adapter(src.ref), out_dir, copy=True)  # this run's own copy, never a stored absolute path
        mark_adapter(out_dir, AdapterRef(group, src.name), reused=src.group)
        run.store().put_vector(rec)
    state.wait_for_everyone()
    return rec


def logged_rows(train_dir: Path) -> dict[int, dict]:
    """{step: row} of a (possibly resumed, possibly interrupted) training's log.jsonl: the last line logged for each
    step counts, so a step redone after a crash counts once."""
    rows: dict[int, dict] = {}
    path = train_dir / "log.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: its step is redone and logged again
                continue
            rows[int(row["step"])] = row
    return rows


def logged_sum(train_dir: Path, key: str) -> float:
    """Σ over the optimizer steps of one logged number (`logged_rows`)."""
    return sum(float(row.get(key, 0.0)) for row in logged_rows(train_dir).values())


def logged_tokens(train_dir: Path) -> float:
    return logged_sum(train_dir, "tokens")
