"""Training recipes of every method: which LoRA adapters it trains, on which pairs, with which loss terms.

Adapters land in RUN/adapters/<method>/<name> (PEFT format) and are recorded in the run store.

  dpo       one independent DPO vector per value.
  mva       values in config order; each later vector adds α·(decorrelation penalty) against the earlier, frozen
            ones. Its first vector is plain DPO (reused from dpo when trained).
  mva-orth  mva with the orthogonality penalty instead (orth-normalised when decorrelation.penalty is cka or
            orth-normalised, raw orth when it is hsic or orth: the scale-free and raw pairs match).
  vcsoup    independent DPO vectors on value-consistency-filtered (or soft-weighted) pairs.
  seqt      stage 1 is the dpo vector of value 1; stage k continues stage k−1's adapter with DPO on D_k.
            adapters/seqt/<value k> is the model after stage k. π_ref is the base model in every stage.
  lw        one adapter per preference weight w on the union of the D_k with loss Σ_k w_k L_DPO(D_k)
            (`loss_weighting_pair_weights`).
  modpo     one adapter per w on D_1 (the first value), the other values entering as the margin:
            −log σ((1/w_1)[β Δlog(π/π_ref) − Σ_{j>1} w_j (r_j(x, y_w) − r_j(x, y_l))]), with r_j the implicit reward
            β log π_j/π_ref of value j's dpo vector, or value j's reward model (baselines.modpo_margin).
  soup, mva-nohsic train the dpo vectors and mva-convex the mva vectors: they differ only in which ω are evaluated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from .combine import CombinedModel, load_lora_adapter
from .config import ConfigError, MVAConfig
from .consistency import consistency_for_value, select
from .data import load_value_splits
from .data.pairs import PreferencePair
from .models import cache_root, load_model
from .run import replace_dir, adapter_dir, prepare_run_dir, value_seed
from .store import RunStore, VectorRecord
from .sweep import simplex_points
from .train.decorrelation import DecorrelationLoss, PenaltySpec
from .train.dpo import dpo_loss, loss_weighting_pair_weights, modpo_margins
from .train.logprobs import compute_logprobs, reference_logprobs
from .train.lora import add_value_adapter
from .train.tokenize import TokenizedPair, tokenize_pairs
from .train.trainer import train_dpo

log = logging.getLogger(__name__)

METHODS = ("dpo", "mva", "mva-orth", "vcsoup", "seqt", "lw", "modpo", "soup", "mva-nohsic", "mva-convex")
VECTOR_SOURCE = {"soup": "dpo", "mva-nohsic": "dpo", "mva-convex": "mva"}
"""Methods that evaluate another method's vectors (they train nothing of their own)."""
PER_WEIGHT = ("lw", "modpo")


def vector_source(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return VECTOR_SOURCE.get(method, method)


def preference_weights(cfg: MVAConfig) -> list[dict[str, float]]:
    """lw / modpo weight vectors: baselines.weights, or the simplex points (sweep.simplex_step) with every w_k > 0."""
    values = [v.name for v in cfg.values]
    given = cfg.baselines.weights
    points = [{v: float(w.get(v, 0.0)) for v in values} for w in given] if given else [
        p for p in simplex_points(values, cfg.sweep.simplex_step) if all(x > 0 for x in p.values())]
    for i, (w, raw) in enumerate(zip(points, given or points)):
        unknown = sorted(set(raw) - set(values))
        if unknown or any(x < 0 for x in w.values()) or abs(sum(w.values()) - 1) > 1e-6:
            raise ConfigError(f"baselines.weights[{i}] = {raw}: need weights for the values {values} only, each >= 0, "
                              "summing to 1")
    if not points:
        raise ConfigError("no preference weights for lw/modpo: set baselines.weights or a finer sweep.simplex_step")
    return points


def weight_label(w: dict[str, float]) -> str:
    """Folder-safe name of a weight vector, e.g. helpful0.25-harmless0.75."""
    return "-".join(f"{k}{v:g}" for k, v in w.items())


def train_method(cfg: MVAConfig, method: str, values: Sequence[str] = (), *, force: bool = False,
                 progress: bool = True) -> list[VectorRecord]:
    """Train what `method` needs (skipping finished adapters). `values` restricts per-value methods.

    mva / mva-orth / seqt train in config order (later vectors depend on earlier ones); `force` retrains the named
    values and every value after the first of them.
    """
    source = vector_source(method)
    for v in values:
        cfg.value(v)
    order = [v.name for v in cfg.values]
    if not order:
        raise ConfigError("the config has no values to train")
    if source in PER_WEIGHT:
        if values:
            raise ConfigError(f"{method} trains one model per preference weight (baselines.weights), not per value")
        if source == "modpo" and cfg.baselines.modpo_margin == "implicit":
            train_method(cfg, "dpo", order[1:], progress=progress)
        return [train_weighted(cfg, source, w, force=force, progress=progress) for w in preference_weights(cfg)]
    wanted = list(values) or order
    if source in ("dpo", "vcsoup"):
        return [train_value(cfg, v, source, force=force, progress=progress) for v in wanted]
    last = max(order.index(v) for v in wanted)
    first_forced = min(order.index(v) for v in wanted) if force else len(order)
    return [train_value(cfg, v, source, frozen=order[:k], force=k >= first_forced, progress=progress)
            for k, v in enumerate(order[: last + 1])]


def _reuse(store: RunStore, src: VectorRecord, method: str, out_dir: Path) -> VectorRecord:
    replace_dir(Path(src.adapter_dir), out_dir, copy=True)
    rec = dataclasses.replace(src, method=method, adapter_dir=str(out_dir), metrics={**src.metrics, "reused": src.method})
    store.put_vector(rec)
    return rec


def train_value(cfg: MVAConfig, value: str, method: str = "dpo", *, frozen: Sequence[str] = (), force: bool = False,
                progress: bool = True) -> VectorRecord:
    """Train (or resume, or skip when finished) the `method` vector of one value.

    `frozen`: the earlier values in config order (mva / mva-orth decorrelate against them; seqt continues from the
    last of them).
    """
    vcfg = cfg.value(value)
    run = prepare_run_dir(cfg)
    store = RunStore(run)
    out_dir = adapter_dir(run, method, value)
    done = store.get_vector(value, method)
    if done is not None and out_dir.is_dir() and not force:
        log.info("%s vector %r already trained (%s); skipping (use --force to retrain)", method, value, out_dir)
        return done
    if method in ("mva", "mva-orth", "seqt") and not frozen:  # their first vector is plain DPO: the same training
        plain = store.get_vector(value, "dpo") if not force else None
        if plain is None or not Path(plain.adapter_dir).is_dir():
            plain = train_value(cfg, value, "dpo", force=force, progress=progress)
        return _reuse(store, plain, method, out_dir)
    splits = load_value_splits(vcfg.data, value, cfg.split.seed, cfg.split.train, cfg.split.val)
    job = AdapterJob(method, value, splits["train"], {value: splits["val"]}, value_seed(cfg.dpo.seed, value))
    if method == "vcsoup":
        c = cfg.consistency
        keep, weights = select(consistency_for_value(cfg, value, job.pairs)["vc"], c.mode, c.tau, c.quantile)
        if not len(keep):
            raise ConfigError(f"consistency filter keeps no {value!r} training pair (mode {c.mode}); lower tau")
        job.pairs = [job.pairs[i] for i in keep]
        job.pair_weights = torch.tensor(weights, dtype=torch.float32) if c.mode == "soft" else None
        job.metrics = {"consistency_mode": c.mode, "pairs_before_filter": len(splits["train"])}
    elif method in ("mva", "mva-orth"):
        job.frozen = [adapter_dir(run, method, v) for v in frozen]
        job.penalty = cfg.decorrelation.penalty if method == "mva" else (
            "orth-normalised" if cfg.decorrelation.penalty in ("cka", "orth-normalised") else "orth")
        job.metrics = {"decorrelated_against": ",".join(frozen), "penalty": job.penalty}
    elif method == "seqt":
        job.init_from = adapter_dir(run, "seqt", frozen[-1])
        job.seed = value_seed(cfg.dpo.seed, f"seqt:{value}")
        job.metrics = {"continued_from": frozen[-1]}
    return run_adapter_job(cfg, job, force=force, progress=progress)


def train_weighted(cfg: MVAConfig, method: str, w: dict[str, float], *, force: bool = False,
                   progress: bool = True) -> VectorRecord:
    """One lw or modpo model for the preference weight vector `w`."""
    run = prepare_run_dir(cfg)
    store = RunStore(run)
    label = weight_label(w)
    done = store.get_vector(label, method)
    if done is not None and adapter_dir(run, method, label).is_dir() and not force:
        return done
    values = [v.name for v in cfg.values]
    splits = {v.name: load_value_splits(v.data, v.name, cfg.split.seed, cfg.split.train, cfg.split.val) for v in cfg.values}
    val = {v: splits[v]["val"] for v in values}
    job = AdapterJob(method, label, [], val, value_seed(cfg.dpo.seed, f"{method}:{label}"),
                     steps=cfg.baselines.steps_per_model, metrics={"weights": json.dumps(w)})
    if method == "lw":
        use = [v for v in values if w[v] > 0]
        job.pairs = [p for v in use for p in splits[v]["train"]]
        job.pair_weights = loss_weighting_pair_weights([len(splits[v]["train"]) for v in use], [w[v] for v in use])
    else:
        k, others = values[0], values[1:]
        if w[k] <= 0:
            raise ConfigError(f"modpo trains on {k!r} data and scales by 1/w_{k}: every weight needs {k} > 0, got {w}")
        job.pairs, job.logit_scale = splits[k]["train"], 1.0 / w[k]
        job.margin_fn = lambda model, tok, pad: _modpo_margins(cfg, run, model, tok, pad, job.pairs, others, w)
        job.val_sets = {k: val[k]}
    return run_adapter_job(cfg, job, force=force, progress=progress)


def _modpo_margins(cfg: MVAConfig, run: Path, model, tok: Sequence[TokenizedPair], pad: int,
                   pairs: Sequence[PreferencePair], others: Sequence[str], w: dict[str, float]) -> torch.Tensor:
    """m_i = Σ_j w_j (r_j(x, y_w) − r_j(x, y_l)) with r_j implicit (β log π_j/π_ref of value j's dpo vector) or a
    reward model's score."""
    cols_c, cols_r = [], []
    if cfg.baselines.modpo_margin == "reward":
        from .rewards import load_reward_models

        rewards = load_reward_models(cfg)
        for j in others:
            text = [p.prompt for p in pairs]
            cols_c.append(torch.as_tensor(rewards[j].score(text, [p.chosen for p in pairs]), dtype=torch.float32))
            cols_r.append(torch.as_tensor(rewards[j].score(text, [p.rejected for p in pairs]), dtype=torch.float32))
    else:
        d = cfg.dpo
        autocast = torch.bfloat16 if d.precision == "bf16" else None
        ref_c, ref_r = reference_logprobs(model, tok, pad, cache_root(cfg.cache_dir), d.batch_size * 2, autocast)
        for j in others:
            combined = CombinedModel(model, [load_lora_adapter(adapter_dir(run, "dpo", j), j)])
            combined.set_weights({j: 1.0})
            pol_c, pol_r = compute_logprobs(model, tok, pad, d.batch_size * 2, autocast, desc=f"implicit {j} rewards")
            combined.reset()
            cols_c.append(d.beta * (pol_c - ref_c))
            cols_r.append(d.beta * (pol_r - ref_r))
    return modpo_margins(torch.stack(cols_c, 1), torch.stack(cols_r, 1), [w[j] for j in others])


@dataclasses.dataclass
class AdapterJob:
    """Everything that distinguishes one adapter's training from plain DPO on one value."""

    method: str
    name: str
    """Value name, or weight label for per-weight methods: the adapter lands in adapters/<method>/<name>."""
    pairs: list[PreferencePair]
    val_sets: dict[str, list[PreferencePair]]
    """Held-out pairs per value for the implicit-reward metrics after training."""
    seed: int
    pair_weights: torch.Tensor | None = None
    logit_scale: float = 1.0
    margin_fn: Callable | None = None
    """(base model, tokenized pairs, pad id) -> per-pair margins, computed before the adapter is attached."""
    frozen: list[Path] = dataclasses.field(default_factory=list)
    penalty: str | None = None
    init_from: Path | None = None
    steps: int | None = None
    metrics: dict = dataclasses.field(default_factory=dict)


def run_adapter_job(cfg: MVAConfig, job: AdapterJob, *, force: bool = False, progress: bool = True) -> VectorRecord:
    """Load the base, cache reference log-probs, attach a LoRA adapter (fresh or from `init_from`), train with DPO
    plus the job's terms, save it, measure held-out accuracy per value, record it in the store."""
    run = Path(cfg.run_dir)
    out_dir = adapter_dir(run, job.method, job.name)
    train_dir = run / "train" / job.method / job.name
    if force:
        shutil.rmtree(train_dir, ignore_errors=True)
    cache = cache_root(cfg.cache_dir)
    model, tokenizer = load_model(cfg.model, cache)
    chat = cfg.model.chat_template == "auto"
    d = cfg.dpo.model_copy(update={"seed": job.seed, **({"max_steps": job.steps} if job.steps else {})})
    autocast = torch.bfloat16 if d.precision == "bf16" else None
    pad = tokenizer.pad_token_id
    train_tok = tokenize_pairs(tokenizer, job.pairs, d.max_length, d.max_prompt_length, chat)
    ref_train = reference_logprobs(model, train_tok, pad, cache, d.batch_size * 2, autocast)
    val_tok = {v: tokenize_pairs(tokenizer, p[: d.eval_pairs], d.max_length, d.max_prompt_length, chat)
               for v, p in job.val_sets.items() if p}
    ref_val = {v: reference_logprobs(model, t, pad, cache, d.batch_size * 2, autocast) for v, t in val_tok.items()}
    margins = job.margin_fn(model, train_tok, pad) if job.margin_fn else None

    peft_model = add_value_adapter(model, cfg.lora, job.seed)
    if job.init_from is not None:
        set_peft_model_state_dict(peft_model, load_file(str(job.init_from / "adapter_model.safetensors")))
    extra = None
    if job.frozen:
        dc = cfg.decorrelation
        spec = PenaltySpec(kind=job.penalty or dc.penalty, target=dc.target, sigma=dc.sigma, rows=dc.rows)
        frozen = [load_lora_adapter(p, p.name) for p in job.frozen]
        extra = DecorrelationLoss(frozen, spec, dc.alpha, seed=job.seed)
    result = train_dpo(peft_model, train_tok, *ref_train, d, train_dir, pad, extra_loss=extra,
                       pair_weights=job.pair_weights, pair_margins=margins, logit_scale=job.logit_scale,
                       progress=progress)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(tmp, safe_serialization=True)
    replace_dir(tmp, out_dir)

    metrics = {"train_last_loss": result.last.get("loss", float("nan")), "train_tokens": logged_tokens(train_dir),
               **job.metrics}
    for v, tok in val_tok.items():
        pol = compute_logprobs(peft_model, tok, pad, d.batch_size * 2, autocast, desc="held-out log-probs")
        held = dpo_loss(*pol, *ref_val[v], d.beta)
        correct = (held.chosen_rewards > held.rejected_rewards).float()
        suffix = "" if len(val_tok) == 1 and v == job.name else f"_{v}"
        metrics.update({f"val_accuracy{suffix}": held.accuracy.item(), f"val_margin{suffix}": held.margin.item(),
                        f"val_pairs{suffix}": len(tok),
                        f"val_accuracy_se{suffix}": (correct.std() / len(correct) ** 0.5).item() if len(correct) > 1 else float("nan")})
    rec = VectorRecord(job.name, job.method, str(out_dir), result.steps, result.seconds, result.seconds_per_step,
                       len(train_tok), metrics)
    RunStore(run).put_vector(rec)
    return rec


def logged_tokens(train_dir: Path) -> float:
    """Tokens processed over all optimizer steps of a (possibly resumed) training, from its log.jsonl (the last
    line logged for each step counts)."""
    per_step: dict[int, float] = {}
    path = train_dir / "log.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            per_step[int(row["step"])] = float(row.get("tokens", 0.0))
    return sum(per_step.values())
