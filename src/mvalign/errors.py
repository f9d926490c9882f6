"""The one base class of every user-facing error.

Each error's message names the file, field or argument at fault and what to do; the CLI prints it as one line and
exits with status 1 (`--verbose` adds the traceback). Subclasses also derive from the built-in error they refine
(ValueError, RuntimeError), so code catching those keeps working.

Also the ways files are written and read so that a failure is one such error and never loses finished work:
`writing` / `write_atomic` (disk full, read-only), `replace_dir` / `remove_tree` (atomic, never through a symbolic
link) and `sqlite_transaction` (a damaged database is one line).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path


class MvalignError(Exception):
    """A problem the user can fix (bad config, data, adapters, model, reward model, run directory)."""


class WriteError(MvalignError, OSError):
    """A file could not be written because of the disk (full, over quota, read-only, no permission)."""


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
_DISK_TEXTS = (  # how the libraries below us report the same (their errors carry no errno)
    ("No space left", "no space left on device"),
    ("StorageFull", "no space left on device"),  # safetensors (Rust io::ErrorKind)
    ("database or disk is full", "no space left on device"),  # sqlite3
    ("file write failed", "the write failed: disk full?"),  # torch.save's stream writer
    ("basic_ios::clear", "the write failed: disk full?"),
    ("Read-only file system", "read-only file system"),
    ("readonly database", "read-only file system"),  # sqlite3
)


def disk_failure(e: BaseException) -> str | None:
    """Why a write failed when the disk is to blame (full, quota, read-only, permissions); None for other errors."""
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
        return os.strerror(e.errno).lower()
    text = str(e)
    return next((why for needle, why in _DISK_TEXTS if needle in text), None)


@contextlib.contextmanager
def writing(path: str | os.PathLike[str], what: str, kept: str = "finished work is kept") -> Iterator[None]:
    """Turn a disk failure while writing `path` into one `WriteError` naming it (other errors pass through)."""
    try:
        yield
    except MvalignError:
        raise
    except Exception as e:
        why = disk_failure(e)
        if why is None:
            raise
        raise WriteError(f"{path}: cannot write {what} ({why}); free space or fix permissions and re-run ({kept})") from None


def write_atomic(path: Path, what: str, write: Callable[[Path], object], kept: str = "finished work is kept") -> None:
    """Write one file atomically: `write(tmp)` fills a per-process temporary beside `path`, which then replaces it
    (so readers and other processes never see half a file); a disk failure is one `WriteError` naming `path`
    (`writing`), and the temporary is removed on any failure."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path, what, kept):
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def sqlite_transaction(path: Path, damaged: Callable[[Exception], Exception]) -> Iterator[sqlite3.Connection]:
    """One SQLite connection and transaction on `path` (rows as sqlite3.Row); a damaged file (not a database, a
    malformed page) raises `damaged(error)` — one line — instead of a traceback. Locks, a full disk and constraint
    failures are raised as they are."""
    con = sqlite3.connect(path, timeout=30)
    con.row_factory = sqlite3.Row
    try:
        with con:
            yield con
    except sqlite3.DatabaseError as e:
        if type(e) is not sqlite3.DatabaseError and not str(e).startswith("Could not decode"):  # bytes that are no text
            raise
        raise damaged(e) from None
    except UnicodeDecodeError as e:  # a damaged schema page
        raise damaged(e) from None
    finally:
        con.close()


def replace_dir(src: Path, dst: Path, copy: bool = False) -> None:
    """Put `src` at `dst` (replacing it) atomically: copy or move into a sibling, then rename."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        staging = dst.with_name(dst.name + ".copy")
        remove_tree(staging)
        shutil.copytree(src, staging)
        src = staging
    remove_tree(dst)
    os.replace(src, dst)


def remove_tree(path: Path) -> None:
    """Delete the folder `path`; a symbolic link there is removed itself, never what it points at (a link placed
    in the run dir never lets a write or a --force reach outside it)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
