"""The run's SQLite store: trained value vectors and every evaluated weight vector, so re-running skips finished work.

One file, `RUN/store.sqlite`; every write is its own transaction, so a killed process never leaves half a record.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import MvalignError, sqlite_transaction, writing
from .shapes import check_store_point, check_vector

KEPT = "the store keeps every record written before; the adapter folder is kept and recorded on re-run"

SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    value TEXT NOT NULL,
    method TEXT NOT NULL,
    adapter_dir TEXT NOT NULL,
    steps INTEGER NOT NULL,
    seconds REAL NOT NULL,
    seconds_per_step REAL NOT NULL,
    train_pairs INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (value, method)
);
CREATE TABLE IF NOT EXISTS points (
    method TEXT NOT NULL,
    weights TEXT NOT NULL,
    split TEXT NOT NULL,
    settings_key TEXT NOT NULL,
    rewards TEXT NOT NULL,
    ci95 TEXT NOT NULL,
    n_prompts INTEGER NOT NULL,
    seconds_generate REAL NOT NULL,
    seconds_score REAL NOT NULL,
    generation TEXT NOT NULL,
    responses TEXT NOT NULL,
    created REAL NOT NULL,
    flag TEXT NOT NULL DEFAULT '',
    scores TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (method, weights, split, settings_key)
);
"""


class StoreError(MvalignError, RuntimeError):
    """The run's SQLite store cannot be read (corrupt, not a database)."""


@dataclass(frozen=True)
class AdapterRef:
    """One trained adapter of a run, as RunDir (adapters/<group>/<name>/), the store and training jobs name it:
    `group` is the method that trained it (dpo, mva, vcsoup, seqt, lw, ...), `name` the adapter within the group
    (a value, a per-weight label like helpful0.25-harmless0.75, or 'ric')."""

    group: str
    name: str

    def __str__(self) -> str:
        return f"{self.group}/{self.name}"


@dataclass
class VectorRecord:
    """A finished adapter (the store's `vectors` table: columns `value` = name, `method` = group)."""

    name: str
    group: str
    adapter_dir: str
    steps: int
    seconds: float
    seconds_per_step: float
    train_pairs: int
    metrics: dict[str, Any] = field(default_factory=dict)
    """Held-out metrics, e.g. {"val_accuracy": 0.61, "val_margin": 0.12, "val_pairs": 40}."""
    created: float = field(default_factory=time.time)

    @property
    def ref(self) -> AdapterRef:
        return AdapterRef(self.group, self.name)


@dataclass
class PointRecord:
    """One evaluated candidate: mean reward per value over the split's prompts, with bootstrap 95% intervals (the
    `points` table; its column `weights` holds the label)."""

    method: str
    """The store key of the points (`front.store_key`: the vectors' method), or 'base'."""
    label: dict[str, float]
    """What the front reports for the candidate: ω for weight combinations, else the method's label of it (a
    preference weight w, the values a seqt stage has seen)."""
    split: str
    settings_key: str
    """Identifies prompts, generation settings and reward models: a point is reused only when all three match."""
    rewards: dict[str, float]
    ci95: dict[str, list[float]]
    n_prompts: int
    seconds_generate: float
    seconds_score: float
    generation: dict[str, Any]
    responses: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    flag: str = ""
    """Why the point is not a usable model ('' when it is): 'non-finite weights' or 'all responses empty'. Flagged
    points are kept for the record but never selected (Pareto, hypervolume, pick)."""
    scores: dict[str, list[float]] = field(default_factory=dict)
    """Per value, each prompt's score in prompt order (what paired statistics resample; {} in older stores)."""


COLUMNS = {"vectors": {"value", "method", "adapter_dir", "steps", "seconds", "seconds_per_step", "train_pairs",
                       "metrics", "created"},
           "points": {"method", "weights", "split", "settings_key", "rewards", "ci95", "n_prompts", "seconds_generate",
                      "seconds_score", "generation", "responses", "created", "flag", "scores"}}


ADAPTER_MARK = "mvalign_adapter.json"
"""In every trained adapter folder: which adapter it is (`RunDir.adapter` checks it on every use)."""


def mark_adapter(folder: Path, ref: AdapterRef, **extra) -> None:
    (folder / ADAPTER_MARK).write_text(json.dumps({"group": ref.group, "name": ref.name, **extra}))


def weights_key(weights: dict[str, float]) -> str:
    return json.dumps({k: round(float(v), 10) for k, v in weights.items()}, sort_keys=True)


class RunStore:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "store.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as con:
                con.executescript(SCHEMA)
                columns = {r["name"] for r in con.execute("PRAGMA table_info(points)")}
                if "flag" not in columns:  # stores made before flags
                    con.execute("ALTER TABLE points ADD COLUMN flag TEXT NOT NULL DEFAULT ''")
                if "scores" not in columns:  # stores made before per-prompt scores
                    con.execute("ALTER TABLE points ADD COLUMN scores TEXT NOT NULL DEFAULT '{}'")
                for table, need in COLUMNS.items():
                    have = {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}
                    if not need <= have:
                        raise sqlite3.DatabaseError(f"table {table} lacks columns {sorted(need - have)} (not a store "
                                                    "mvalign wrote)")
        except sqlite3.DatabaseError as e:
            raise self._damaged(e) from None

    def _damaged(self, e: Exception) -> StoreError:
        return StoreError(f"{self.path}: {e}; move the file aside (e.g. to store.sqlite.bad) and re-run: finished "
                          "adapters are kept and recorded again, points are re-evaluated")

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return sqlite_transaction(self.path, self._damaged)

    def put_vector(self, rec: VectorRecord) -> None:
        row = asdict(rec)
        row["value"], row["method"] = row.pop("name"), row.pop("group")  # the columns' names
        row["metrics"] = json.dumps(rec.metrics)
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with writing(self.path, f"the record of adapter {rec.ref}", KEPT), self._connect() as con:
            con.execute(f"INSERT OR REPLACE INTO vectors ({cols}) VALUES ({marks})", row)

    def get_vector(self, ref: AdapterRef) -> VectorRecord | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM vectors WHERE value = ? AND method = ?", (ref.name, ref.group)).fetchone()
        if row is None:
            return None
        data = dict(row)
        try:
            data["metrics"] = json.loads(data["metrics"])
            check_vector(data)
        except (TypeError, ValueError) as e:
            raise StoreError(f"{self.path}: the record of adapter {ref} is damaged ({e}); move the store aside (e.g. "
                             "to store.sqlite.bad) and re-run: finished adapters are recorded again") from None
        data["name"], data["group"] = data.pop("value"), data.pop("method")
        # the adapter is always this run's own folder (a copied or moved run never reads another run's files)
        data["adapter_dir"] = str(self.path.parent / "adapters" / ref.group / ref.name)
        return VectorRecord(**data)

    def put_point(self, rec: PointRecord) -> None:
        row = asdict(rec)
        row["weights"] = weights_key(row.pop("label"))
        for k in ("rewards", "ci95", "generation", "responses", "scores"):
            row[k] = json.dumps(row[k])
        cols = ", ".join(row)
        with writing(self.path, "an evaluated point", KEPT), self._connect() as con:
            con.execute(f"INSERT OR REPLACE INTO points ({cols}) VALUES ({', '.join(':' + k for k in row)})", row)

    def get_point(self, method: str, label: dict[str, float], split: str, settings_key: str) -> PointRecord | None:
        with self._connect() as con:
            row = con.execute("SELECT * FROM points WHERE method = ? AND weights = ? AND split = ? AND settings_key = ?",
                              (method, weights_key(label), split, settings_key)).fetchone()
        return None if row is None else self._point(row)

    def points(self, method: str | None = None, split: str | None = None, settings_key: str | None = None) -> list[PointRecord]:
        where, args = [], []
        for col, val in (("method", method), ("split", split), ("settings_key", settings_key)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = "SELECT * FROM points" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created"
        with self._connect() as con:
            return [self._point(r) for r in con.execute(sql, args).fetchall()]

    def _point(self, row: sqlite3.Row) -> PointRecord:
        """A point row, validated: JSON cells of the right types, finite means on a usable point, one score and one
        response per prompt. A damaged row is one StoreError naming the file and the row."""
        data = dict(row)
        try:
            for k in ("weights", "rewards", "ci95", "generation", "responses", "scores"):
                data[k] = json.loads(data[k])
            check_store_point(data)
        except (TypeError, ValueError) as e:
            raise StoreError(f"{self.path}: the {data.get('split')} point {data.get('weights')} of "
                             f"{data.get('method')!r} is damaged ({str(e)[:160]}); delete that row or move the store "
                             "aside (e.g. to store.sqlite.bad) and re-run: it is evaluated again") from None
        data["label"] = data.pop("weights")
        return PointRecord(**data)

    def vectors(self, group: str | None = None) -> list[VectorRecord]:
        """Finished adapters (of one group when given), oldest first."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT value, method FROM vectors" + (" WHERE method = ?" if group else "") + " ORDER BY created",
                (group,) if group else (),
            ).fetchall()
        return [rec for r in rows if (rec := self.get_vector(AdapterRef(r["method"], r["value"]))) is not None]
