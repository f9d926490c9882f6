"""PKU-SafeRLHF / BeaverTails rows: prompt, response_0, response_1, better_response_id, safer_response_id.

value 'helpful' -> chosen = response_{better_response_id}; value 'harmless' -> chosen = response_{safer_response_id};
rejected = the other response.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .pairs import DataError, PairCollector, PreferencePair, RowRef

ID_COLUMN = {"helpful": "better_response_id", "harmless": "safer_response_id"}


def collect_pku(
    records: Iterator[tuple[RowRef, dict[str, Any]]], value: str, collector: PairCollector
) -> list[PreferencePair]:
    if value not in ID_COLUMN:
        raise DataError(f"pku-saferlhf: value {value!r} has no label column; set data.value to one of {sorted(ID_COLUMN)}")
    id_col = ID_COLUMN[value]
    needed = {c: c for c in ("prompt", "response_0", "response_1", id_col)}
    for ref, rec in collector.rows(records):
        if not collector.has_columns(ref, rec, needed):
            continue
        try:
            best = int(rec[id_col])
        except (TypeError, ValueError):
            best = -1
        if best not in (0, 1):
            collector.reject(ref, f"field '{id_col}' must be 0 or 1, got {rec[id_col]!r}")
            continue
        meta = {k: rec[k] for k in ("is_response_0_safe", "is_response_1_safe") if k in rec}
        collector.add(ref, rec["prompt"], rec[f"response_{best}"], rec[f"response_{1 - best}"], **meta)
    return collector.finish()
