"""What the one-model-per-preference-weight methods (lw, modpo) share: the weights, their labels, the candidates.

Weights w come from the method's `weights` (methods.lw / methods.modpo), or are the simplex points at
sweep.simplex_step with every w_k > 0; each w trains one adapter, adapters/<method>/<label> with label e.g.
'helpful0.25-harmless0.75', and each adapter is one candidate, reported by its w.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from ..candidates import Candidate, Candidates, FixedCandidates, simplex_points
from ..config import ConfigError, PerWeightSettings, RunConfig
from ..rundir import RunDir, value_seed
from ..store import AdapterRef, VectorRecord
from ..train.job import AdapterJob, finished, run_adapter_job
from .base import CandidatesFn, value_names


def preference_weights(cfg: RunConfig, group: str, settings: PerWeightSettings) -> list[dict[str, float]]:
    """methods.<group>.weights, or the simplex points (sweep.simplex_step) with every w_k > 0."""
    values = value_names(cfg)
    given = settings.weights
    points = [{v: float(w.get(v, 0.0)) for v in values} for w in given] if given else [
        p for p in simplex_points(values, cfg.sweep.simplex_step) if all(x > 0 for x in p.values())]
    for i, (w, raw) in enumerate(zip(points, given or points)):
        unknown = sorted(set(raw) - set(values))
        if unknown or any(x < 0 for x in w.values()) or abs(sum(w.values()) - 1) > 1e-6:
            raise ConfigError(f"methods.{group}.weights[{i}] = {raw}: need weights for the values {values} only, each "
                              ">= 0, summing to 1")
    if not points:
        raise ConfigError(f"no preference weights: set methods.{group}.weights or a finer sweep.simplex_step")
    return points


def weight_label(w: dict[str, float]) -> str:
    """Folder-safe name of a weight vector, e.g. helpful0.25-harmless0.75."""
    return "-".join(f"{k}{v:g}" for k, v in w.items())


def per_weight_models(group: str) -> CandidatesFn:
    def build(cfg: RunConfig, run: RunDir, settings: PerWeightSettings) -> Candidates:
        ws = preference_weights(cfg, group, settings)
        labels = [weight_label(w) for w in ws]
        return Candidates(group, labels, FixedCandidates([Candidate(w, {lb: 1.0}) for w, lb in zip(ws, labels)]),
                          "per-weight models")
    return build


def train_per_weight(cfg: RunConfig, run: RunDir, group: str, settings: PerWeightSettings, values: Sequence[str],
                     force: bool, progress: bool,
                     job_for: Callable[[dict[str, float], AdapterJob], AdapterJob]) -> list[VectorRecord]:
    """One adapter per preference weight; `job_for(w, job)` completes the job (`build`, val_sets, metrics)."""
    if values:
        raise ConfigError(f"{group} trains one model per preference weight (methods.{group}.weights), not per value")
    out = []
    for w in preference_weights(cfg, group, settings):
        label = weight_label(w)
        done = finished(run, AdapterRef(group, label))
        if done is not None and not force:
            out.append(done)
            continue
        steps = settings.steps_per_model
        job = AdapterJob(AdapterRef(group, label), value_seed(cfg.training.seed, f"{group}:{label}"), build=None,
                         overrides={"max_steps": steps} if steps else {}, metrics={"weights": json.dumps(w)})
        out.append(run_adapter_job(cfg, run, job_for(w, job), force=force, progress=progress))
    return out
