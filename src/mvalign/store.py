"""The run's SQLite store: which value vectors are trained (and how well), so re-running skips finished work.

One file, `RUN/store.sqlite`; every write is its own transaction, so a killed process never leaves half a record.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
"""


@dataclass
class VectorRecord:
    value: str
    method: str
    adapter_dir: str
    steps: int
    seconds: float
    seconds_per_step: float
    train_pairs: int
    metrics: dict[str, Any] = field(default_factory=dict)
    """Held-out metrics, e.g. {"val_accuracy": 0.61, "val_margin": 0.12, "val_pairs": 40}."""
    created: float = field(default_factory=time.time)


class RunStore:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "store.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con, con:
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    def put_vector(self, rec: VectorRecord) -> None:
        row = asdict(rec)
        row["metrics"] = json.dumps(rec.metrics)
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with closing(self._connect()) as con, con:
            con.execute(f"INSERT OR REPLACE INTO vectors ({cols}) VALUES ({marks})", row)

    def get_vector(self, value: str, method: str) -> VectorRecord | None:
        with closing(self._connect()) as con:
            row = con.execute("SELECT * FROM vectors WHERE value = ? AND method = ?", (value, method)).fetchone()
        if row is None:
            return None
        data = dict(row)
        data["metrics"] = json.loads(data["metrics"])
        return VectorRecord(**data)

    def vectors(self, method: str | None = None) -> list[VectorRecord]:
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT value, method FROM vectors" + (" WHERE method = ?" if method else "") + " ORDER BY created",
                (method,) if method else (),
            ).fetchall()
        return [rec for r in rows if (rec := self.get_vector(r["value"], r["method"])) is not None]
