"""The sweep engine: evaluate many candidates on one loaded model, storing every point.

For each candidate (`mvalign.candidates`): generate responses to the split's prompts at W0 + Σ ω_k ΔW_k — several
points per generate call with mixed-ω batching (`mvalign.mixed`, greedy decoding), else one point at a time on the
model moved in place (`CombinedModel`) — after the candidate's prompt transform if it has one, score them with
every value's reward model against the original prompts, and store the point (mean per value, bootstrap 95%
interval, timings, generation settings, responses) in the run's SQLite store. Points already stored with the same
settings key (prompts + generation settings + reward identities) are skipped, so a killed sweep resumes where it
stopped and gives identical results.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from .candidates import Candidate
from .combine import SAFE_OMEGA, CombinedModel
from .config import ConfigError
from .data.pairs import Prompt
from .faults import reached
from .fusion import generate_fused
from .generate import GenerationSettings, format_texts, generate_responses
from .mixed import MixedLoRA, generate_mixed
from .models import has_chat_template
from .pareto import bootstrap_ci
from .rewards.base import RewardModel, ScoreCache, prompt_text
from .rewards.rate import measure_scores
from .store import PointRecord, RunStore


def settings_key(prompts: Sequence[Prompt], generation: GenerationSettings, rewards: Mapping[str, RewardModel]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(generation.as_dict(), sort_keys=True).encode())
    for name, rm in sorted(rewards.items()):
        h.update(f"{name}={rm.identity}".encode())
    for p in prompts:
        h.update(prompt_text(p).encode() + b"\x00")
    return h.hexdigest()[:24]


def point_key(settings: str, candidate: Candidate) -> str:
    """The stored point's settings key: the sweep's, extended by the candidate's prompt transform when it has one and
    by 'fused' for a decode-time fusion (the same ω as a weight combination of the same vectors, another model)."""
    extra = "|".join(x for x in (candidate.prompt.key if candidate.prompt else "", "fused" if candidate.fused else "") if x)
    if not extra:
        return settings
    return hashlib.sha256(f"{settings}|{extra}".encode()).hexdigest()[:24]


def point_stats(scores: Mapping[str, Sequence[float]], bootstrap: int, seed: int) -> tuple[dict, dict]:
    """A point's mean per value and bootstrap 95% interval per value from its per-prompt scores."""
    means = {name: float(np.mean(s)) for name, s in scores.items()}
    ci = {name: list(bootstrap_ci(s, bootstrap, seed=seed)) for name, s in scores.items()}
    return means, ci


@dataclass(frozen=True)
class Passes:
    """Mixed-ω batching (`mvalign.mixed`): `rows` (point, prompt) rows per generate call (the KV-cache rows held
    at once), `points` points generated together before they are scored and stored (what a kill can lose)."""

    mixed: MixedLoRA | None
    """None in a process that only plans the passes (the Ray driver); the process that generates holds the hooks."""
    rows: int = 64
    points: int = 16


@dataclass(frozen=True)
class SweepContext:
    """What every point of one evaluation is made and kept with: the judges, the generation settings, the store,
    and how the generation runs. One per evaluator, passed whole to `evaluate_points`."""

    rewards: Mapping[str, RewardModel]
    generation: GenerationSettings
    store: RunStore
    cache: ScoreCache | None = None
    bootstrap: int = 1000
    use_chat_template: bool = True
    passes: Passes | None = None
    backend: object | None = None
    """Where tasks are generated: None = in this process (`LocalBackend`), or `mvalign.scaleout.RayBackend`."""
    audits: Mapping[str, RewardModel] = field(default_factory=dict)
    """Audit measures ('<value>:<measure>'), scored on the same responses and stored beside the primaries; not part
    of the settings key, so adding one to a finished run scores the stored responses instead of generating again."""
    likelihood: object | None = None
    """`mvalign.likelihood.LikelihoodAudits`: measures of the model itself (no responses), added per point."""

    def measures(self) -> dict[str, RewardModel]:
        """Every response-scored measure: the primaries (by value) and the audits."""
        return {**self.rewards, **self.audits}

    def key(self, prompts: Sequence[Prompt]) -> str:
        """The settings key of points on `prompts` under this context (`settings_key`)."""
        return settings_key(prompts, self.generation, self.rewards)


@dataclass
class Task:
    """One unit of generation: a group of candidates generated together with mixed-ω rows (`mixed`; decode-time
    fusions are grouped apart from weight combinations), or one candidate alone on the model moved in place to its
    weights. `items` are (position, candidate) pairs."""

    items: list[tuple[int, Candidate]]
    mixed: bool


@dataclass
class Generated:
    task: Task
    responses: list[list[str]]
    finite: list[bool]
    seconds: float
    """Generation seconds per candidate of the task."""


def run_task(combined: CombinedModel, passes: Passes | None, tokenizer, task: Task, prompts: Sequence[Prompt],
             generation: GenerationSettings, use_chat_template: bool) -> Generated:
    """Generate every candidate of `task` (after its prompt transform) on a loaded model: what the local backend
    does in-process and a Ray worker does on its own copy (`mvalign.scaleout`)."""
    chat = use_chat_template and has_chat_template(tokenizer)
    if task.mixed:
        t0 = time.perf_counter()
        if any(combined.current):
            combined.reset()  # the hooks add each row's update to W0
        texts = [format_texts(tokenizer, prompts if c.prompt is None else [c.prompt.apply(p) for p in prompts], chat)
                 for _, c in task.items]
        rows = [[float(c.adapters.get(n, 0.0)) for n in combined.names] for _, c in task.items]
        run = generate_fused if task.items[0][1].fused else generate_mixed
        responses = run(passes.mixed, tokenizer, rows, texts, generation, passes.rows, chat)
        return Generated(task, responses, [True] * len(rows), (time.perf_counter() - t0) / len(rows))
    (_, cand), = task.items
    combined.set_weights({n: float(cand.adapters.get(n, 0.0)) for n in combined.names})
    shown = prompts if cand.prompt is None else [cand.prompt.apply(p) for p in prompts]
    t0 = time.perf_counter()
    finite = combined.weights_finite()
    responses = generate_responses(combined.model, tokenizer, shown, generation, use_chat_template) if finite \
        else [""] * len(prompts)
    return Generated(task, [responses], [finite], time.perf_counter() - t0)


class LocalBackend:
    """Generation in this process, task after task, on the evaluator's loaded model."""

    def __init__(self, combined: CombinedModel, tokenizer, passes: Passes | None) -> None:
        self.combined, self.tokenizer, self.passes = combined, tokenizer, passes

    def run(self, tasks: Sequence[Task], prompts: Sequence[Prompt], generation: GenerationSettings,
            use_chat_template: bool) -> Iterator[Generated]:
        for task in tasks:
            yield run_task(self.combined, self.passes, self.tokenizer, task, prompts, generation, use_chat_template)


def evaluate_points(ctx: SweepContext, combined: CombinedModel | None, tokenizer,
                    candidates: Sequence[Candidate | Mapping[str, float]], *, method: str, split: str,
                    prompts: Sequence[Prompt], progress: bool = True,
                    whole: Sequence[Prompt] | None = None) -> list[PointRecord]:
    """Evaluate (or fetch from the store) every candidate; returns the records in the order given.

    A plain mapping ω stands for `Candidate.combination(ω)`. With `ctx.passes` (greedy decoding only), the points
    not yet stored are generated several per `generate` call, each row at its own ω (`mixed.generate_mixed`); a
    point with some |ω_k| > SAFE_OMEGA, and every point without passes, is generated alone on the model moved in
    place to its weights. Either way its prompt transform (if any) is applied before generation, every value's judge
    scores the responses against the original prompts, and the point is stored under `method` and the candidate's
    label (`whole`: the full prompt list when `prompts` is a slice of it, for a rate's scale). `ctx.backend`
    generates the tasks (default: `LocalBackend`, in this process; `mvalign.scaleout.RayBackend`:
    Ray workers); scoring and the store stay here, so this process is the store's only writer.
    """
    generation, store, cache, passes = ctx.generation, ctx.store, ctx.cache, ctx.passes
    key = ctx.key(prompts)

    measures = ctx.measures()

    def scored(responses: Sequence[str]) -> dict[str, list[float]]:  # every measure, per prompt (through the cache)
        return {name: [float(x) for x in measure_scores(rm, prompts, responses, cache, whole)]
                for name, rm in measures.items()}

    candidates = [c if isinstance(c, Candidate) else Candidate.combination(c) for c in candidates]
    found: dict[int, PointRecord] = {}
    todo: list[tuple[int, Candidate]] = []
    pkeys: dict[int, tuple[dict[str, float], str]] = {}
    for i, cand in enumerate(candidates):
        w = {k: float(v) for k, v in cand.label.items()}
        pkey = point_key(key, cand)
        done = store.get_point(method, w, split, pkey)
        if done is not None and not set(measures) <= set(done.scores) and len(done.responses) == len(prompts):
            done.scores = {**done.scores, **scored(done.responses)}  # stored before per-prompt scores, or an audit added
            done.rewards, done.ci95 = point_stats(done.scores, ctx.bootstrap, generation.seed)
            store.put_point(done)
        if done is not None:
            done.label = w  # the caller's value order (the store keeps keys sorted)
            found[i] = done
        else:
            todo.append((i, cand))
            pkeys[i] = (w, pkey)
    fast = passes is not None and not generation.do_sample
    if not fast and any(c.fused for _, c in todo):
        raise ConfigError(f"{method}: decode-time fusion reads the value models as mixed-ω rows; set sweep.mixed_batching: "
                          "true, sweep.combination: exact and sweep.do_sample: false")
    fused = [t for t in todo if t[1].fused]  # each row of a fusion is at ω = e_k, whatever the point's scale
    batched = [t for t in todo if fast and not t[1].fused
               and max((abs(x) for x in t[1].adapters.values()), default=0.0) <= SAFE_OMEGA]
    mixed_ids = {i for i, _ in batched + fused}
    alone = [t for t in todo if t[0] not in mixed_ids]
    step = passes.points if passes else 1
    tasks = [Task(group[a : a + step], True) for group in (batched, fused) for a in range(0, len(group), step)]
    tasks += [Task([t], False) for t in alone]
    backend = ctx.backend or LocalBackend(combined, tokenizer, passes)
    with tqdm(total=len(candidates), initial=len(found), desc=f"sweep {method}/{split}", disable=not progress,
              dynamic_ncols=True) as bar:
        for gen in backend.run(tasks, prompts, generation, ctx.use_chat_template):
            for (i, _), responses, finite in zip(gen.task.items, gen.responses, gen.finite):
                flag = "" if finite and any(r.strip() for r in responses) else (
                    "non-finite weights" if not finite else "all responses empty")
                t1 = time.perf_counter()
                scores = scored(responses)
                means, ci = point_stats(scores, ctx.bootstrap, generation.seed)
                w, pkey = pkeys[i]
                rec = PointRecord(method, w, split, pkey, means, ci, len(prompts), gen.seconds,
                                  time.perf_counter() - t1, generation.as_dict(), responses, flag=flag, scores=scores)
                store.put_point(rec)
                reached("point")
                found[i] = rec
                bar.update(1)
                bar.set_postfix({k: f"{v:.2f}" for k, v in means.items()})
    out = [found[i] for i in range(len(candidates))]
    if ctx.likelihood is not None and split in ("val", "test"):
        add_likelihood(ctx, combined, tokenizer, candidates, out, split)
    wanted = set(measures) | set(ctx.likelihood.audits if ctx.likelihood is not None else ())
    for rec in out:  # measures a config no longer declares stay stored but are not reported
        rec.scores = {k: x for k, x in rec.scores.items() if k in wanted}
        rec.rewards = {k: x for k, x in rec.rewards.items() if k in wanted or not rec.scores}
        rec.ci95 = {k: x for k, x in rec.ci95.items() if k in wanted or not rec.scores}
    return out


def add_likelihood(ctx: SweepContext, combined: CombinedModel, tokenizer, candidates: Sequence[Candidate],
                   records: Sequence[PointRecord], split: str) -> None:
    """Add the likelihood audits (`mvalign.likelihood`) to every record that lacks them, computed on the loaded model
    at the candidate's ω (mixed-ω rows when the context has them and |ω| is small, else merged in place), with the
    candidate's prompt transform (RiC's tags) applied to each question, and store it. Needs the model in this process
    (`evaluate.evaluator` refuses likelihood audits with the Ray backend)."""
    lk = ctx.likelihood
    for cand, rec in zip(candidates, records):
        if rec.flag or set(lk.audits) <= set(rec.scores):
            continue
        w = [float(cand.adapters.get(n, 0.0)) for n in combined.names]
        mixed = ctx.passes.mixed if ctx.passes is not None and (
            cand.fused or max(map(abs, w), default=0.0) <= SAFE_OMEGA) else None
        if mixed is not None:
            if any(combined.current):
                combined.reset()
        else:
            combined.set_weights(w)
        new = lk.scores(combined.model, tokenizer, split, mixed, w, fused=cand.fused, transform=cand.prompt)
        means, ci = point_stats(new, ctx.bootstrap, ctx.generation.seed)
        rec.scores, rec.rewards, rec.ci95 = {**rec.scores, **new}, {**rec.rewards, **means}, {**rec.ci95, **ci}
        ctx.store.put_point(rec)
