"""Batch multi-objective Bayesian optimisation over ω (`sweep.strategy: bo`), with BoTorch.

The front is found from a fraction of the grid's points, q at a time, so that each round fills one mixed-ω pass:

1. Start: a scrambled Sobol design of `initial` points in the box [min grid, max grid]ⁿ (seeded; snapped to the
   lattice gridⁿ when `snap`), ω = 0 (the base model) excluded.
2. Model: one GP per value (BoTorch `SingleTaskGP` on ω scaled to the unit cube, outcomes standardised) whose
   observation noise is fixed to each point's squared standard error of the mean, s²/n over its prompts — the
   noise the sweep already measured, different per point.
3. Propose q points maximising qLogNEHVI (noisy expected hypervolume improvement, Daulton et al. 2021; log form,
   Ament et al. 2023) against the reference point min(Y) − 0.5·range(Y): over the unevaluated lattice points when
   `snap` (`optimize_acqf_discrete`: every proposal is a grid point, comparable point for point with the dense
   sweep), else over the continuous box (`optimize_acqf`).
4. Stop at `budget` points, or (`stop_at_noise`) when the proposed batch's expected improvement is below the noise
   of the hypervolume itself: HV(front means + one standard error) − HV(front means).

Every random choice is seeded from (seed, round), and the model is refit from the evaluated points alone, so the
proposals are a function of the seed and the evaluations: a killed search re-run through the sweep's store replays
the same proposals from stored points and continues where it stopped. Needs the `bo` extra (botorch).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .config import ConfigError
from .pareto import hypervolume, non_dominated

REF_MARGIN = 0.5
"""The acquisition's reference point: min(Y) − REF_MARGIN · range(Y) per value. Far enough below the points seen
that the front's ends still count (a front's hypervolume is measured against the minimum over every point, which
later points only lower)."""
Observation = tuple[Mapping[str, float], Mapping[str, float]]
Observe = Callable[[list[dict[str, float]]], list[Observation]]
"""Evaluates weight vectors ω; returns each one's (mean reward per value, standard error per value), same order."""


def _botorch():
    try:
        import botorch  # noqa: F401
    except ImportError:
        raise ConfigError("sweep.strategy bo needs BoTorch: pip install 'mvalign[bo]'") from None


def _fit(x: torch.Tensor, y: torch.Tensor, yvar: torch.Tensor):
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import ModelListGP, SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import SumMarginalLogLikelihood

    model = ModelListGP(*[SingleTaskGP(x, y[:, k:k + 1], yvar[:, k:k + 1], outcome_transform=Standardize(m=1))
                          for k in range(y.shape[1])])
    fit_gpytorch_mll(SumMarginalLogLikelihood(model.likelihood, model))
    return model


def noise_hypervolume(y: np.ndarray, se: np.ndarray, ref: np.ndarray) -> float:
    """HV(front + one standard error) − HV(front): how much the hypervolume moves within the measurement noise."""
    front = non_dominated(y)
    return float(hypervolume(y[front] + se[front], ref) - hypervolume(y[front], ref))


class BayesSearch:
    """The state of one search: the box, the lattice, the evaluated points; `propose` gives the next batch."""

    def __init__(self, values: Sequence[str], grid: Sequence[float], q: int, seed: int = 0, snap: bool = True,
                 initial: int | None = None) -> None:
        _botorch()
        self.values, self.q, self.seed, self.snap = list(values), q, seed, snap
        self.axis = sorted({float(g) for g in grid})
        if len(self.axis) < 2:
            raise ConfigError(f"sweep.grid: the bo search needs at least two weights per value, got {list(grid)}")
        self.lo, self.hi = self.axis[0], self.axis[-1]
        self.initial = initial or max(2 * (len(values) + 1), q)
        self.points: list[tuple[float, ...]] = []
        self.means: list[list[float]] = []
        self.ses: list[list[float]] = []
        self.rounds = 0
        self.last_improvement = math.inf

    def _cube(self) -> torch.Tensor:
        """The unit box ω is searched in (bounds for BoTorch)."""
        n = len(self.values)
        return torch.tensor([[0.0] * n, [1.0] * n], dtype=torch.double)

    def _unit(self, pts) -> torch.Tensor:
        return (torch.tensor(pts, dtype=torch.double) - self.lo) / (self.hi - self.lo)

    def _omega(self, u: torch.Tensor) -> tuple[float, ...]:
        w = (self.lo + u.double() * (self.hi - self.lo)).tolist()
        return tuple(min(self.axis, key=lambda a: abs(a - x)) for x in w) if self.snap else tuple(round(x, 6) for x in w)

    def _free(self) -> list[tuple[float, ...]]:
        seen = set(self.points)
        return [p for p in itertools.product(self.axis, repeat=len(self.values)) if any(p) and p not in seen]

    def start(self) -> list[dict[str, float]]:
        """The space-filling first design."""
        from botorch.utils.sampling import draw_sobol_samples

        out: list[tuple[float, ...]] = []
        draws = draw_sobol_samples(self._cube(), n=4 * self.initial, q=1, seed=self.seed).squeeze(1)
        for u in draws:
            p = self._omega(u)
            if any(p) and p not in out:
                out.append(p)
            if len(out) == self.initial:
                break
        return [dict(zip(self.values, p)) for p in out]

    def observe(self, omegas: Sequence[Mapping[str, float]], observed: Sequence[Observation]) -> None:
        for w, (mean, se) in zip(omegas, observed):
            self.points.append(tuple(float(w[v]) for v in self.values))
            self.means.append([float(mean[v]) for v in self.values])
            self.ses.append([max(float(se[v]), 1e-6) for v in self.values])

    def propose(self, k: int) -> list[dict[str, float]]:
        """The next min(q, k) points by qLogNEHVI (see the module docstring); also sets `last_improvement`."""
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.optim import optimize_acqf, optimize_acqf_discrete
        from botorch.sampling import SobolQMCNormalSampler

        q = min(self.q, k)
        self.rounds += 1
        torch.manual_seed(self.seed * 100_003 + self.rounds)
        x = self._unit(self.points)
        y = torch.tensor(self.means, dtype=torch.double)
        se = torch.tensor(self.ses, dtype=torch.double)
        model = _fit(x, y, se**2)
        acq = qLogNoisyExpectedHypervolumeImprovement(
            model, self._reference().tolist(), x, prune_baseline=True,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([128]), seed=self.seed + self.rounds))
        if self.snap:
            free = self._free()
            if not free:
                return []
            cand, _ = optimize_acqf_discrete(acq, min(q, len(free)), self._unit(free), unique=True)
        else:
            cand, _ = optimize_acqf(acq, self._cube(), q, num_restarts=4, raw_samples=128,
                                    options={"seed": self.seed + self.rounds})
        with torch.no_grad():
            self.last_improvement = float(torch.exp(acq(cand.unsqueeze(0))).item())
        out = []
        for u in cand:
            p = self._omega(u)
            if any(p) and p not in self.points and p not in out:
                out.append(p)
        return [dict(zip(self.values, p)) for p in out]

    def below_noise(self) -> bool:
        return self.last_improvement < noise_hypervolume(np.array(self.means), np.array(self.ses), self._reference())

    def _reference(self) -> np.ndarray:
        """The acquisition's reference point, min(Y) − REF_MARGIN · range(Y) per value."""
        y = np.array(self.means)
        return y.min(0) - REF_MARGIN * np.maximum(y.max(0) - y.min(0), 1e-9)


def bo_search(observe: Observe, values: Sequence[str], budget: int, grid: Sequence[float], q: int, seed: int = 0,
              snap: bool = True, initial: int | None = None, stop_at_noise: bool = False,
              on_round: Callable[[int], None] | None = None) -> list[tuple[dict[str, float], dict[str, float]]]:
    """Evaluate up to `budget` weight vectors, q per call of `observe` after the first design; returns [(ω, mean
    reward per value)] in evaluation order."""
    search = BayesSearch(values, grid, q, seed, snap, initial)
    batch = search.start()[:budget]
    while batch:
        search.observe(batch, observe(batch))
        if on_round:
            on_round(len(search.points))
        left = budget - len(search.points)
        if left <= 0:
            break
        batch = search.propose(left)
        if stop_at_noise and search.below_noise():
            break
    return [(dict(zip(values, p)), dict(zip(values, m))) for p, m in zip(search.points, search.means)]
