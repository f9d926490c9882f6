"""What every reward model offers (batched scoring of (prompt, response) pairs), and a persistent score cache."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..data.pairs import Prompt
from ..errors import MvalignError, sqlite_transaction


def prompt_text(prompt: Prompt) -> str:
    """A prompt as one string (a dialogue's turns joined), for reward models that read plain text."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class RewardError(MvalignError, RuntimeError):
    """A reward model that cannot be loaded or returned unusable scores; the message names it and what to do."""


class RewardModel:
    """Scores responses to prompts; higher is better for the value. Subclasses implement `_score`."""

    name: str = "reward"
    identity: str = ""
    """A string that changes whenever the scores could change (model files, head weights, formatting)."""
    cost: bool = False
    """A cost model (lower is better): `score` negates its raw output."""

    def _score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise RewardError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not len(prompts):
            return np.zeros(0)
        raw = np.asarray(self._score(prompts, responses), dtype=np.float64)
        if not np.all(np.isfinite(raw)):
            bad = int(np.flatnonzero(~np.isfinite(raw))[0])
            raise RewardError(f"reward model {self.name!r} returned a non-finite score ({raw[bad]}) for item {bad}: "
                             f"prompt {prompt_text(prompts[bad])[:80]!r}")
        return -raw if self.cost else raw


class CallableReward(RewardModel):
    """A programmatic scorer: any Python callable (prompt_text, response) -> float.

    Its identity (what cached scores and stored sweep points are keyed by) is the name, the callable's qualified
    name and `version`: bump `version` when you change what the function computes.
    """

    def __init__(self, fn: Callable[[str, str], float], name: str, version: str = "1", cost: bool = False) -> None:
        self.fn, self.name, self.cost = fn, name, cost
        qualname = getattr(fn, "__qualname__", type(fn).__qualname__)
        self.identity = f"callable:{name}:{getattr(fn, '__module__', '')}.{qualname}:{version}:cost={cost}"

    def _score(self, prompts, responses):
        out = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            returned, x = False, None
            try:
                x = self.fn(prompt_text(p), r)
                returned = True
                out.append(float(x))
            except Exception as e:  # noqa: BLE001 - user code: any failure becomes one line naming judge and item
                why = (f"returned {type(x).__name__} {str(x)[:60]!r}, not a number" if returned
                       else f"raised {type(e).__name__}: {str(e)[:160]}")
                raise RewardError(f"callable judge {self.name!r} ({self.identity.split(':')[2]}) {why} on item {i} "
                                  f"(prompt {prompt_text(p)[:60]!r}); fix the function or bump its `version`") from None
        return out


class ScoreCache:
    """SQLite cache of scores keyed by sha256(reward identity, prompt, response), shared across runs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, score REAL NOT NULL)")

    def _connect(self):
        return sqlite_transaction(self.path, lambda e: RewardError(
            f"{self.path}: the score cache is damaged ({e}); delete it (scores are recomputed)"))

    @staticmethod
    def key(identity: str, prompt: Prompt, response: str) -> str:
        return hashlib.sha256(f"{identity}\x00{prompt_text(prompt)}\x00{response}".encode()).hexdigest()

    def score(self, model: RewardModel, prompts: Sequence[Prompt], responses: Sequence[str]) -> np.ndarray:
        """model.score with cached items served from disk and the rest computed in one batch and stored."""
        keys = [self.key(model.identity, p, r) for p, r in zip(prompts, responses)]
        with self._connect() as con:
            found = {}
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                found.update(con.execute(f"SELECT key, score FROM scores WHERE key IN ({','.join('?' * len(chunk))})", chunk))
        todo = [i for i, k in enumerate(keys) if k not in found]
        if todo:
            fresh = model.score([prompts[i] for i in todo], [responses[i] for i in todo])
            with self._connect() as con:
                con.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?)", [(keys[i], float(s)) for i, s in zip(todo, fresh)])
            found.update({keys[i]: float(s) for i, s in zip(todo, fresh)})
        return np.array([found[k] for k in keys])
