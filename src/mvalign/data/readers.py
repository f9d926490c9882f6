"""Read raw records (dicts) from JSONL / JSON / CSV / Parquet files (optionally gzipped) or a `datasets` hub name.

Each record comes with a `RowRef` (file and 1-based line for JSONL, record index for JSON, data row for CSV and
Parquet) so validation errors can point at it.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .pairs import BadRow, DataError, RowRef

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise DataError(f"{path}: unknown file type; use one of {', '.join(SUFFIXES)} (optionally .gz)")


def read_text(path: Path) -> str:
    """The file's text, strictly UTF-8 (gzip transparently); a bad byte names its line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # EOFError: truncated download / copy
            raise DataError(f"{path}: not a valid gzip file ({e}); download or copy it again") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); re-encode the file as UTF-8"
        ) from None


def iter_records(path: str | Path) -> Iterator[tuple[RowRef, dict[str, Any]]]:
    """Yield (where, record) for every record of a data file."""
    path = Path(path)
    kind = _kind(path)
    src = str(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: cannot read Parquet ({e})") from e
        for i, row in enumerate(table.to_pylist(), start=1):
            yield RowRef(src, i, "row"), row
        return
    text = read_text(path)
    if kind == "jsonl":
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                yield RowRef(src, i), BadRow(f"malformed JSON ({e.msg} at column {e.colno})", "malformed JSON")
                continue
            if not isinstance(rec, dict):
                yield RowRef(src, i), BadRow(f"expected a JSON object per line, got {type(rec).__name__}", "not an object")
                continue
            yield RowRef(src, i), rec
    elif kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records (or {{'data': [...]}})")
        for i, rec in enumerate(data, start=1):
            if not isinstance(rec, dict):
                yield RowRef(src, i, "record"), BadRow(f"is {type(rec).__name__}, expected an object", "not an object")
                continue
            yield RowRef(src, i, "record"), rec
    else:  # csv
        yield from _csv_records(path, text)


def _csv_records(path: Path, text: str) -> Iterator[tuple[RowRef, dict[str, Any]]]:
    """CSV records, each named by its first and last physical line (quoted cells may hold newlines). A record with
    more or fewer fields than the header, or a quote that never closes, is reported from the line it starts on, with
    the lines it swallowed: that is what an unterminated quote looks like."""
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    physical = text.splitlines()
    end = 1
    while True:
        start = end + 1
        while start <= len(physical) and not physical[start - 1].strip():  # the reader skips blank lines
            start += 1
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            runs = f" and running to line {len(physical)} (the end)" if "end of data" in str(e) else ""
            raise DataError(f"{path}:{start}: malformed CSV ({e}) in the record starting there{runs}; an unterminated "
                            "quote?") from None
        end = reader.line_num
        ref = RowRef(str(path), start, end=end)
        if None in rec or None in rec.values():
            have = sum(v is not None for k, v in rec.items() if k is not None) + len(rec.get(None) or [])
            raise DataError(f"{ref}: {have} fields where the header has {len(reader.fieldnames or [])}"
                            + ("; an unterminated quote?" if end > start else ""))
        yield ref, rec


def iter_hub_records(name: str, split: str) -> Iterator[tuple[RowRef, dict[str, Any]]]:
    """Records of a `datasets` hub dataset (needs internet or a local HF cache)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(
            f"datasets hub '{name}' (split {split}): cannot load ({type(e).__name__}: {e}). "
            "Offline? Download it once with internet, or point `path` at local files."
        ) from e
    for i, rec in enumerate(ds, start=1):
        yield RowRef(f"{name}[{split}]", i, "row"), rec
