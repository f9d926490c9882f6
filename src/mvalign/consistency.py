"""VC-soup value consistency: score every training pair with all values' reward models and measure whether the
values agree on it.

For a dataset D and reward models r_1..r_n (cost models negated):
    z_k(y) = (r_k(x, y) − μ_k) / s_k,  μ_k, s_k = mean and sample std of r_k over all chosen and rejected responses of D,
    g_k = z_k(y_w) − z_k(y_l),   VC = cos(g, 1) = Σ_k g_k / (‖g‖ · √n) ∈ [−1, 1]  (0 when g = 0), for n ≥ 2.
The reference scores the response text alone (`text: response`); `prompt+response` gives the judges the prompt too.
Scores are cached in RUN/consistency/<value>.json with the normalisation statistics, the reward models' identities
and a digest of the pairs, so a later filter never rescores.

Data operators: keep pairs with VC ≥ τ (`threshold`), keep the top share q (`quantile`), or keep all pairs and weight
each pair's DPO loss by w = (1 + VC) / 2 (`soft`, in [0, 1]).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .config import ConfigError
from .data.pairs import PreferencePair
from .rewards.base import RewardModel, ScoreCache, prompt_text


def z_normalise(chosen: np.ndarray, rejected: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(z of chosen, z of rejected, mean, sample std) with statistics over both sets together."""
    both = np.concatenate([chosen, rejected])
    mean, std = float(both.mean()), float(both.std(ddof=1)) if len(both) > 1 else 0.0
    if not np.isfinite(std) or std == 0:
        std = 1.0  # a constant judge gives zero gaps, not NaNs
    return (chosen - mean) / std, (rejected - mean) / std, mean, std


def value_consistency(gaps: np.ndarray) -> np.ndarray:
    """VC = Σ_k g_k / (‖g‖ √n) per row of an (N × n) gap matrix; 0 for an all-zero gap."""
    gaps = np.asarray(gaps, dtype=np.float64)
    if gaps.ndim != 2 or gaps.shape[1] < 2:
        raise ValueError(f"value consistency needs gap vectors over n >= 2 reward models, got shape {gaps.shape}")
    norm = np.linalg.norm(gaps, axis=1)
    vc = np.zeros(len(gaps))
    ok = norm > 0
    vc[ok] = gaps[ok].sum(axis=1) / (norm[ok] * np.sqrt(gaps.shape[1]))
    return vc


def pairs_digest(pairs: Sequence[PreferencePair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{prompt_text(p.prompt)}\x00{p.chosen}\x00{p.rejected}\x01".encode())
    return h.hexdigest()[:24]


def score_consistency(
    pairs: Sequence[PreferencePair], rewards: Mapping[str, RewardModel], text: str = "response",
    cache: ScoreCache | None = None,
) -> dict:
    """Raw scores, z-normalisation statistics, gaps and VC of every pair under every reward model."""
    if len(rewards) < 2:
        raise ConfigError("value consistency needs the reward models of at least two values (add a second value)")
    prompts = ["" if text == "response" else p.prompt for p in pairs]
    out = {"names": list(rewards), "identities": {k: rm.identity for k, rm in rewards.items()}, "text": text,
           "digest": pairs_digest(pairs), "stats": {}, "gaps": []}
    gap_cols = []
    for name, rm in rewards.items():
        def score(responses, rm=rm):
            return cache.score(rm, prompts, responses) if cache else rm.score(prompts, responses)
        zc, zr, mean, std = z_normalise(score([p.chosen for p in pairs]), score([p.rejected for p in pairs]))
        out["stats"][name] = {"mean": mean, "std": std}
        gap_cols.append(zc - zr)
    gaps = np.stack(gap_cols, axis=1)
    out["gaps"] = gaps.tolist()
    out["vc"] = value_consistency(gaps).tolist()
    return out


def cached_consistency(path: Path, pairs: Sequence[PreferencePair], rewards: Mapping[str, RewardModel], text: str,
                       cache: ScoreCache | None = None) -> dict:
    """`score_consistency`, reused from `path` when the pairs, the text mode and every reward identity match."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if (saved["digest"] == pairs_digest(pairs) and saved["text"] == text
                and saved["identities"] == {k: rm.identity for k, rm in rewards.items()}):
            return saved
    result = score_consistency(pairs, rewards, text, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def select(vc: Sequence[float], mode: str, tau: float = 0.0, quantile: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(indices of kept pairs, their loss weights) for mode 'threshold' (VC ≥ τ), 'quantile' (top share q, ties at the
    cut kept) or 'soft' (all pairs, w = (1 + VC) / 2)."""
    vc = np.asarray(vc, dtype=np.float64)
    if mode == "soft":
        return np.arange(len(vc)), (1 + vc) / 2
    if mode == "threshold":
        keep = np.flatnonzero(vc >= tau)
    elif mode == "quantile":
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        keep = np.flatnonzero(vc >= np.quantile(vc, 1 - quantile))
    else:
        raise ValueError(f"unknown consistency mode {mode!r}")
    return keep, np.ones(len(keep))


def summary(result: dict) -> dict:
    """Shares with VC > 0.7 and < −0.7, the sign-agreement rate (all gaps of one sign), mean VC."""
    vc, gaps = np.asarray(result["vc"]), np.asarray(result["gaps"])
    agree = np.all(gaps > 0, axis=1) | np.all(gaps < 0, axis=1)
    return {"pairs": len(vc), "mean_vc": float(vc.mean()), "share_vc_above_0.7": float((vc > 0.7).mean()),
            "share_vc_below_-0.7": float((vc < -0.7).mean()), "sign_agreement": float(agree.mean()),
            "share_vc_at_least_0": float((vc >= 0).mean())}


def plot_consistency(results: Mapping[str, dict], path: Path) -> Path:
    """Histogram of VC per dataset, and gap scatter coloured by sign agreement (first two reward models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 8), squeeze=False)
    for col, (value, res) in enumerate(results.items()):
        vc, gaps = np.asarray(res["vc"]), np.asarray(res["gaps"])
        axes[0, col].hist(vc, bins=40, range=(-1, 1), color="tab:blue")
        axes[0, col].set_title(f"VC of {value} pairs (n={len(vc)})", fontsize=9)
        axes[0, col].set_xlabel("value consistency")
        agree = np.all(gaps > 0, axis=1) | np.all(gaps < 0, axis=1)
        ax = axes[1, col]
        ax.scatter(gaps[~agree, 0], gaps[~agree, 1], s=6, c="tab:red", label="signs disagree")
        ax.scatter(gaps[agree, 0], gaps[agree, 1], s=6, c="tab:green", label="signs agree")
        ax.axhline(0, c="0.5", lw=0.5)
        ax.axvline(0, c="0.5", lw=0.5)
        ax.set_xlabel(f"gap {res['names'][0]}")
        ax.set_ylabel(f"gap {res['names'][1]}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def consistency_for_value(cfg, value: str, pairs: Sequence[PreferencePair], settings,
                          rewards: Mapping[str, RewardModel] | None = None) -> dict:
    """Cached VC scores of one value's training pairs under every value's reward model (RUN/consistency/<value>.json);
    `settings`: methods.vcsoup (`config.ConsistencySettings`). Pass `rewards` when scoring several values, so the
    judges are loaded once."""
    from .models import cache_root
    from .rewards import load_train_judges
    from .rundir import RunDir

    rewards = rewards if rewards is not None else load_train_judges(cfg)
    cache = ScoreCache(cache_root(cfg.cache_dir) / "reward_scores.sqlite")
    return cached_consistency(RunDir.of(cfg).consistency(value), pairs, rewards, settings.text, cache)


def consistency_report(cfg, run, settings) -> tuple[dict, Path]:
    """`mvalign consistency`: score every value's training pairs with all judges (cached), summarise what the
    `methods.vcsoup` block (`settings`) keeps, write RUN/consistency/summary.json and consistency.png. Returns
    (rows, png)."""
    from .data import value_splits
    from .rewards import load_train_judges

    c = settings
    rewards = load_train_judges(cfg)
    results, rows = {}, {}
    for v in cfg.values:
        pairs = value_splits(cfg, v.name)["train"]
        results[v.name] = consistency_for_value(cfg, v.name, pairs, settings, rewards)
        keep, _ = select(results[v.name]["vc"], c.mode, c.tau, c.quantile)
        rows[v.name] = {**summary(results[v.name]), "mode": c.mode, "tau": c.tau, "kept": int(len(keep)),
                        "stats": results[v.name]["stats"]}
    run.consistency_dir.mkdir(parents=True, exist_ok=True)
    (run.consistency_dir / "summary.json").write_text(json.dumps(rows, indent=2))
    return rows, plot_consistency(results, run.consistency_dir / "consistency.png")
