"""Property-based fuzzing (hypothesis) of everything that parses user files: the data readers of every format, the
pair collectors (generic, HH-RLHF, PKU-SafeRLHF), the run-config loader. The only outcomes allowed are valid pairs /
a valid config, or the project's own error (`MvalignError`) naming the file; never another exception type."""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from mvalign.config import DataSourceConfig, load_config
from mvalign.data import load_pairs
from mvalign.data.pairs import PreferencePair
from mvalign.errors import MvalignError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORMATS = ("generic", "hh-rlhf", "pku-saferlhf")
SUFFIXES = ("jsonl", "json", "csv", "jsonl.gz", "csv.gz")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
KEYS = ["prompt", "chosen", "rejected", "prompt_a", "response_0", "response_1", "better_response_id",
        "safer_response_id", "is_response_0_safe"]
words = st.text(alphabet="abcxyz ", min_size=1, max_size=12) | st.text(alphabet="ab \n\tHuman:Assistant:", max_size=20)
random_record = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values | words, max_size=6)
generic_record = st.fixed_dictionaries({"prompt": words, "chosen": words, "rejected": words})
hh_record = st.fixed_dictionaries({"chosen": st.builds("\n\nHuman: {}\n\nAssistant: {}".format, words, words) | words,
                                   "rejected": st.builds("\n\nHuman: {}\n\nAssistant: {}".format, words, words)})
pku_record = st.fixed_dictionaries({"prompt": words, "response_0": words, "response_1": words,
                                    "better_response_id": st.sampled_from([0, 1, 2, "1", None]),
                                    "safer_response_id": st.sampled_from([0, 1, -1, None])})
records = random_record | generic_record | hh_record | pku_record  # mostly well-formed, so valid pairs come out too


def _load(tmp: Path, name: str, data: bytes, fmt: str, on_invalid: str) -> list[PreferencePair] | None:
    """load_pairs on a file with these bytes; None when it raised the project's own error naming the file."""
    path = tmp / name
    path.write_bytes(data)
    cfg = DataSourceConfig(format=fmt, path=[str(path)], on_invalid=on_invalid)
    try:
        pairs = load_pairs(cfg, "helpful")
    except MvalignError as e:
        assert name in str(e) or "no valid" in str(e) or "no pairs" in str(e), str(e)
        event("refused")
        return None
    event("pairs" if pairs else "no pairs")
    assert all(isinstance(p, PreferencePair) for p in pairs)
    assert all(p.chosen != p.rejected for p in pairs)
    return pairs


def _encode(name: str, text: str) -> bytes:
    return gzip.compress(text.encode()) if name.endswith(".gz") else text.encode()


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from(SUFFIXES), fmt=st.sampled_from(FORMATS),
       on_invalid=st.sampled_from(["error", "skip"]))
@example(data=b"\x1f\x8b\x08\x00", suffix="jsonl.gz", fmt="generic", on_invalid="error")  # a gzip header, cut
@example(data=b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt"', suffix="jsonl", fmt="generic",
         on_invalid="skip")
def test_random_bytes(data, suffix, fmt, on_invalid):
    with tempfile.TemporaryDirectory() as tmp:
        _load(Path(tmp), f"pairs.{suffix}", data, fmt, on_invalid)


@FUZZ
@given(rows=st.lists(records, min_size=1, max_size=6), fmt=st.sampled_from(FORMATS),
       on_invalid=st.sampled_from(["error", "skip"]),
       layout=st.sampled_from(["jsonl", "json", "json-object", "jsonl.gz"]))
def test_random_json_records(rows, fmt, on_invalid, layout):
    if layout.startswith("jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = json.dumps(rows if layout == "json" else {"rows": rows})
    name = "pairs." + ("json" if layout == "json-object" else layout)
    with tempfile.TemporaryDirectory() as tmp:
        _load(Path(tmp), name, _encode(name, text), fmt, on_invalid)


@FUZZ
@given(rows=st.lists(st.lists(st.text(alphabet='ab ,"\n\r\t\\\'x', min_size=1, max_size=10), min_size=3, max_size=3)
                    | st.lists(st.text(alphabet='ab ,"\nx', max_size=6), max_size=4), max_size=6),
       header=st.sampled_from([["prompt", "chosen", "rejected"], ["prompt", "chosen"], []]),
       raw_tail=st.text(alphabet='a,"\n', max_size=8), on_invalid=st.sampled_from(["error", "skip"]))
def test_random_csv_quoting(rows, header, raw_tail, on_invalid):
    buf = io.StringIO()
    w = csv.writer(buf)
    if header:
        w.writerow(header)
    w.writerows(rows)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = _load(Path(tmp), "pairs.csv", (buf.getvalue() + raw_tail).encode(), "generic", on_invalid)
        if pairs is not None and header == ["prompt", "chosen", "rejected"] and not raw_tail:
            # what csv itself parses as complete, valid rows is what we return (the independent reference)
            # (a pair whose chosen and rejected differ only in surrounding whitespace is no preference: dropped)
            want = [r for r in rows if len(r) == 3 and all(x.strip() for x in r) and r[1].strip() != r[2].strip()]
            assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [tuple(r) for r in want]


@FUZZ
@given(rows=st.lists(generic_record | random_record, min_size=1, max_size=8), gz=st.booleans())
def test_skip_keeps_exactly_the_valid_generic_rows(rows, gz):
    """on_invalid: skip returns every row a direct check calls valid, in order, and nothing else."""
    name = "pairs.jsonl" + (".gz" if gz else "")
    text = "".join(json.dumps(r) + "\n" for r in rows)

    def valid(r):
        fields = [r.get(k) for k in ("prompt", "chosen", "rejected")]
        return all(isinstance(x, str) and x.strip() for x in fields) and r["chosen"].strip() != r["rejected"].strip()

    with tempfile.TemporaryDirectory() as tmp:
        pairs = _load(Path(tmp), name, _encode(name, text), "generic", "skip")
    want = [r for r in rows if valid(r)]
    assert (pairs or []) == [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in want] or pairs is None
    assert (pairs is None) == (not want)


MINIMAL = {"model": {"name": "x"}, "values": [{"name": "helpful", "data": {"format": "builtin"}}]}
config_values = st.recursive(json_scalars | st.text(max_size=10),
                             lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                                         max_size=3), max_leaves=10)
SECTIONS = ["model", "values", "lora", "dpo", "sweep", "decorrelation", "consistency", "split", "methods", "run_dir",
            "report_to", "cache_dir"]


@FUZZ
@given(text=st.text(max_size=300))
@example(text="model: {name: x}\nvalues: [")
@example(text="!!python/object/apply:os.system ['echo pwned']")
def test_random_yaml_text(text):
    _load_config_text(text)


def _load_config_text(text: str) -> None:
    """load_config on a file with this text: a config, or an MvalignError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
            event("valid config")
        except MvalignError as e:
            assert str(path) in str(e), str(e)
            event("refused")


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(SECTIONS), config_values, max_size=3),
       inner=st.dictionaries(st.sampled_from(["lr", "max_steps", "grid", "r", "alpha", "strategy", "beta", "seed",
                                              "batch_size", "target_modules", "reference_point"]), config_values,
                             max_size=3),
       section=st.sampled_from(["dpo", "lora", "sweep", "decorrelation"]))
def test_random_config_structures(changes, inner, section):
    _load_config_text(yaml.safe_dump({**MINIMAL, section: inner, **changes}, allow_unicode=True))


@pytest.mark.parametrize("text", ["[1, 2]", "just a string", "42", "values: 3", "model: [1]"])
def test_config_documents_that_are_not_mappings_name_the_file(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(MvalignError, match=str(path)):
        load_config(path)
