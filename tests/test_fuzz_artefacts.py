"""Property-based fuzzing (hypothesis) of the run's own artefacts when damaged or hand-edited: front-<method>.json
and store.sqlite. The only outcomes allowed are a well-formed front / well-formed records, or the project's own
error naming the file; never another exception type, never a record that would break its readers later."""

from __future__ import annotations

import copy
import json
import math
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mvalign.errors import MvalignError
from mvalign.front import Front
from mvalign.store import PointRecord, RunStore, VectorRecord

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True) | st.text(max_size=6)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.sampled_from(["a", "b", "x"]), inner, max_size=2), max_leaves=6)

BASE = {"rewards": {"a": 0.0, "b": 0.1}, "ci95": {"a": [0, 0], "b": [0, 0.2]}, "rewards_val": {"a": 0.0, "b": 0.1},
        "scores": {"a": [0.0, 1.0], "b": [0.0, 0.2]}, "scores_val": {"a": [0.0, 1.0], "b": [0.0, 0.2]}}
FRONT = {"values": ["a", "b"], "reference_point": [0.0, 0.0], "hypervolume": {"val": 0.1, "test": 0.1}, "base": BASE,
         "points": [{"method": "m", "weights": {"a": w, "b": 1 - w}, "split": split, "rewards": {"a": w, "b": 1 - w},
                     "ci95": {"a": [0, 1], "b": [0, 1]}, "pareto": True, "scores": {"a": [w, w], "b": [1 - w, 1 - w]}}
                    for w in (0.25, 0.75) for split in ("val", "test")]}


def _paths(tree, prefix=()):
    """Every (path to a node) of a JSON tree."""
    yield prefix
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        yield from _paths(v, (*prefix, k))


def _edit(tree, path, value, delete):
    if not path:
        return value
    node = tree
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return tree


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _check_front(front: Front) -> None:
    """What every reader of a front relies on."""
    assert all(isinstance(v, str) for v in front.values)
    for p in front.points:
        assert set(p.rewards) >= set(front.values) and all(_finite(p.rewards[v]) for v in front.values)
        assert all(_finite(w) for w in p.weights.values())
        assert p.split in ("val", "test")
    json.loads(front.dumps())  # writes back


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), json_values, st.booleans()), min_size=1, max_size=3))
def test_hand_edited_front_json_is_a_front_or_one_line(edits):
    raw = copy.deepcopy(FRONT)
    for pick, value, delete in edits:
        paths = list(_paths(raw))
        path = paths[pick % len(paths)]
        raw = _edit(raw, path, value, delete and bool(path))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "front-m.json"
        path.write_text(json.dumps(raw))
        try:
            front = Front.read(path, "m")
        except MvalignError as e:
            assert str(path) in str(e), str(e)
            event("refused")
            return
    event("read")
    _check_front(front)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_front_json_are_one_line(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "front-m.json"
        path.write_bytes(data)
        try:
            _check_front(Front.read(path, "m"))
        except MvalignError as e:
            assert str(path) in str(e)


def _filled_store(folder: Path) -> RunStore:
    store = RunStore(folder)
    for w in (0.0, 0.5):
        store.put_point(PointRecord("mva", {"a": w, "b": 1 - w}, "val", "k", {"a": w, "b": 1 - w},
                                    {"a": [0.0, 1.0], "b": [0.0, 1.0]}, 2, 1.0, 0.5, {"max_new_tokens": 4},
                                    ["x", "y"], scores={"a": [w, w], "b": [w, w]}))
    store.put_vector(VectorRecord("a", "dpo", str(folder / "adapters" / "dpo" / "a"), 3, 1.0, 0.3, 8,
                                  {"val_accuracy": 0.5}))
    return store


def _read_all(store: RunStore) -> None:
    """Every record, checked for what the sweep, fronts and training rely on; or one StoreError naming the file."""
    try:
        points, vectors = store.points(), store.vectors()
    except MvalignError as e:
        assert str(store.path) in str(e), str(e)
        event("refused")
        return
    event("read")
    for p in points:
        assert isinstance(p.method, str) and isinstance(p.split, str) and isinstance(p.settings_key, str)
        assert all(_finite(w) for w in p.label.values()) and isinstance(p.n_prompts, int)
        assert all(isinstance(x, int | float) for x in p.rewards.values())
        assert all(isinstance(r, str) for r in p.responses) and isinstance(p.flag, str)
        assert all(isinstance(s, list) and all(_finite(x) for x in s) for s in p.scores.values())
        assert all(isinstance(c, list) and len(c) == 2 for c in p.ci95.values())
    for v in vectors:
        assert isinstance(v.steps, int) and isinstance(v.train_pairs, int) and isinstance(v.metrics, dict)
        assert all(_finite(x) for x in (v.seconds, v.seconds_per_step))


CELLS = {"points": ["method", "weights", "split", "settings_key", "rewards", "ci95", "n_prompts", "seconds_generate",
                    "generation", "responses", "flag", "scores"],
         "vectors": ["steps", "seconds", "seconds_per_step", "train_pairs", "metrics"]}
cell_values = (st.none() | st.integers(-2, 5) | st.floats(allow_nan=True) | st.text(max_size=8)
               | json_values.map(json.dumps))


@FUZZ
@given(table=st.sampled_from(sorted(CELLS)), pick=st.integers(0, 100), value=cell_values)
def test_hand_edited_store_cells_are_records_or_one_line(table, pick, value):
    with tempfile.TemporaryDirectory() as tmp:
        store = _filled_store(Path(tmp))
        column = CELLS[table][pick % len(CELLS[table])]
        con = sqlite3.connect(store.path)
        try:
            with con:
                con.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = 1", (value,))
        except sqlite3.IntegrityError:  # NOT NULL: SQLite itself keeps that cell
            event("constraint")
        finally:
            con.close()
        _read_all(store)


@FUZZ
@given(offset=st.integers(0, 20_000), junk=st.binary(min_size=1, max_size=600))
def test_damaged_store_bytes_are_records_or_one_line(offset, junk):
    with tempfile.TemporaryDirectory() as tmp:
        store = _filled_store(Path(tmp))
        data = bytearray(store.path.read_bytes())
        offset %= len(data)
        data[offset:offset + len(junk)] = junk
        store.path.write_bytes(bytes(data))
        try:
            store = RunStore(tmp)
        except MvalignError as e:
            assert str(store.path) in str(e)
            return
        _read_all(store)
