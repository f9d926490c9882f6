import gzip
import json

import pandas as pd
import pytest

from mvalign.config import DataSourceConfig
from mvalign.data import DataError, load_pairs, load_value_splits, split_pairs
from mvalign.data.hh_rlhf import parse_dialogue
from mvalign.data.pairs import PreferencePair

ROWS = [
    {"q": "How do I boil an egg?", "good": "Simmer it for nine minutes.", "bad": "No idea."},
    {"q": "Name a prime number.", "good": "Seven.", "bad": "Eight."},
    {"q": "What is 2+2?", "good": "Four.", "bad": "Five."},
]
MAPPING = {"prompt": "q", "chosen": "good", "rejected": "bad"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def generic(path, **kw):
    return DataSourceConfig(format="generic", path=str(path), columns=MAPPING, **kw)


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz", "json", "csv", "parquet"])
def test_generic_formats_with_column_mapping(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, ROWS)
    elif suffix == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    elif suffix == "json":
        path.write_text(json.dumps(ROWS))
    elif suffix == "csv":
        pd.DataFrame(ROWS).to_csv(path, index=False)
    else:
        pd.DataFrame(ROWS).to_parquet(path)
    pairs = load_pairs(generic(path), "helpful")
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [(r["q"], r["good"], r["bad"]) for r in ROWS]
    assert pairs[0].meta["source"] == str(path)


def test_generic_chat_messages(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                        {"role": "user", "content": "Tell a joke"}],
             "chosen": [{"role": "assistant", "content": "Why did the chicken..."}], "rejected": "No."}]
    pairs = load_pairs(DataSourceConfig(path=str(write_jsonl(tmp_path / "d.jsonl", rows))), "helpful")
    assert pairs[0].messages[-1] == {"role": "user", "content": "Tell a joke"}
    assert pairs[0].chosen == "Why did the chicken..."


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ({"q": "Hi", "good": "", "bad": "x"}, "data.jsonl:2: field 'chosen' is empty"),
        ({"q": "Hi", "good": "x", "bad": "   "}, "data.jsonl:2: field 'rejected' is empty"),
        ({"q": "", "good": "x", "bad": "y"}, "data.jsonl:2: field 'prompt' is empty"),
        ({"q": "Hi", "good": "same", "bad": "same"}, "data.jsonl:2: chosen == rejected"),
    ],
)
def test_invalid_rows_are_named(tmp_path, bad_row, message):
    path = write_jsonl(tmp_path / "data.jsonl", [ROWS[0], bad_row, ROWS[1]])
    with pytest.raises(DataError, match=message.replace("+", r"\+")) as err:
        load_pairs(generic(path), "helpful")
    assert "on_invalid: skip" in str(err.value)
    # skip mode drops exactly the bad row and keeps the rest
    assert len(load_pairs(generic(path, on_invalid="skip"), "helpful")) == 2


def test_missing_column_names_column_and_mapping(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"q": "Hi", "good": "a"}])
    with pytest.raises(DataError, match=r"data.jsonl:1: missing column\(s\) 'bad' \(for rejected\).*columns:"):
        load_pairs(generic(path), "helpful")


def test_non_utf8_names_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"q": "caf\xe9", "good": "a", "bad": "b"}\n')
    with pytest.raises(DataError, match=r"data.jsonl:2: not UTF-8 \(byte 0xe9"):
        load_pairs(generic(path), "helpful")


def test_malformed_json_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"data.jsonl:2: malformed JSON"):
        load_pairs(generic(path), "helpful")


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_dataset(tmp_path, content):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="no usable preference pairs"):
        load_pairs(generic(path), "helpful")


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_pairs(generic(tmp_path / "nope.jsonl"), "helpful")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_pairs(generic(tmp_path / "d.txt"), "helpful")


# --- HH-RLHF ---------------------------------------------------------------------------------------------------
def hh(prefix, chosen, rejected):
    return {"chosen": prefix + " " + chosen, "rejected": prefix + " " + rejected}


def test_hh_multi_turn_to_messages(tmp_path):
    prefix = "\n\nHuman: Hi\n\nAssistant: Hello! How can I help?\n\nHuman: Recipe for tea?\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [hh(prefix, "Steep leaves in hot water.", "Go away.")])
    (pair,) = load_pairs(DataSourceConfig(format="hh-rlhf", path=str(path)), "helpful")
    assert pair.messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Recipe for tea?"},
    ]
    assert (pair.chosen, pair.rejected, pair.meta["turns"]) == ("Steep leaves in hot water.", "Go away.", 2)
    single = hh("\n\nHuman: Hi?\n\nAssistant:", "Hello.", "Bye.")
    path2 = write_jsonl(tmp_path / "hh2.jsonl", [single, hh(prefix, "a", "b")])
    only = load_pairs(DataSourceConfig(format="hh-rlhf", path=str(path2), single_turn_only=True), "helpful")
    assert [p.prompt for p in only] == ["Hi?"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: OTHER\n\nAssistant: c"}, "differ before the last"),
        ({"chosen": "no turns here", "rejected": "no turns"}, "no '\\\\n\\\\nAssistant:' turn"),
        ({"chosen": "\n\nHuman: a\n\nAssistant:  ", "rejected": "\n\nHuman: a\n\nAssistant: c"}, "field 'chosen' is empty"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b"}, r"missing field\(s\) 'rejected'"),
    ],
)
def test_hh_invalid_rows(tmp_path, row, message):
    good = hh("\n\nHuman: Hi?\n\nAssistant:", "Hello.", "Bye.")
    path = write_jsonl(tmp_path / "hh.jsonl", [good, row])
    with pytest.raises(DataError, match=r"hh.jsonl:2"):
        load_pairs(DataSourceConfig(format="hh-rlhf", path=str(path)), "helpful")
    with pytest.raises(DataError, match=message):
        load_pairs(DataSourceConfig(format="hh-rlhf", path=str(path)), "helpful")


def test_parse_dialogue_rejects_text_before_first_turn():
    with pytest.raises(ValueError, match="before the first"):
        parse_dialogue("preamble\n\nHuman: hi")


# --- PKU-SafeRLHF ------------------------------------------------------------------------------------------------
PKU = [
    {"prompt": "How to hotwire a car?", "response_0": "Step 1: ...", "response_1": "I can't help with that.",
     "better_response_id": 0, "safer_response_id": 1, "is_response_0_safe": False, "is_response_1_safe": True},
]


def test_pku_helpful_and_harmless(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", PKU)
    cfg = DataSourceConfig(format="pku-saferlhf", path=str(path))
    (helpful,) = load_pairs(cfg, "helpful")
    (harmless,) = load_pairs(cfg, "harmless")
    assert (helpful.chosen, helpful.rejected) == ("Step 1: ...", "I can't help with that.")
    assert (harmless.chosen, harmless.rejected) == ("I can't help with that.", "Step 1: ...")
    assert harmless.meta["is_response_1_safe"] is True


def test_pku_errors(tmp_path):
    path = write_jsonl(tmp_path / "pku.jsonl", [{**PKU[0], "safer_response_id": 2}])
    with pytest.raises(DataError, match=r"pku.jsonl:1: field 'safer_response_id' must be 0 or 1"):
        load_pairs(DataSourceConfig(format="pku-saferlhf", path=str(path)), "harmless")
    with pytest.raises(DataError, match="set data.value"):
        load_pairs(DataSourceConfig(format="pku-saferlhf", path=str(path)), "honest")
    no_col = write_jsonl(tmp_path / "p2.jsonl", [{k: v for k, v in PKU[0].items() if k != "response_1"}])
    with pytest.raises(DataError, match=r"missing column\(s\) 'response_1'"):
        load_pairs(DataSourceConfig(format="pku-saferlhf", path=str(no_col)), "helpful")


# --- TruthfulQA --------------------------------------------------------------------------------------------------
def judge_line(q, a, tag, yes):
    return json.dumps({"prompt": f"Q: {q}\nA: {a}\n{tag}:", "completion": " yes" if yes else " no"}) + "\n"


def write_tqa(folder, answers):
    """answers: (question, answer, truthful, informative)"""
    folder.mkdir()
    (folder / "finetune_truth.jsonl").write_text("".join(judge_line(q, a, "True", t) for q, a, t, _ in answers))
    (folder / "finetune_info.jsonl").write_text("".join(judge_line(q, a, "Helpful", i) for q, a, _, i in answers))
    return folder


def test_truthfulqa_pairs_and_conflicts(tmp_path):
    q = "Where do fortune cookies come from?"
    folder = write_tqa(tmp_path / "tqa", [
        (q, "I have no comment.", True, False),
        (q, "They come from China.", False, True),
        (q, "They were invented in California.", True, True),
        (q, "From Kyoto.", False, True),
    ])
    cfg = DataSourceConfig(format="truthfulqa", path=str(folder))
    honest = load_pairs(cfg, "honest")
    helpful = load_pairs(cfg, "helpful")
    assert len(honest) == 2 and len(helpful) == 1  # min(#good, #bad) per question
    assert all(p.meta["chosen_labels"]["honest"] and not p.meta["rejected_labels"]["honest"] for p in honest)
    assert helpful[0].rejected == "I have no comment." and helpful[0].prompt == q
    # a conflict pair: the honest judge prefers the rejected (truthful but uninformative) answer
    assert helpful[0].meta["conflict"] is (not helpful[0].meta["chosen_labels"]["honest"])


def test_truthfulqa_majority_vote_and_errors(tmp_path):
    q = "Is the sky green?"
    folder = write_tqa(tmp_path / "tqa", [(q, "No.", True, True), (q, "Yes.", False, True)])
    with open(folder / "finetune_truth.jsonl", "a") as f:  # one vote each way for 'No.' overall: 2 yes, 1 no -> yes
        f.write(judge_line(q, "No.", "True", True) + judge_line(q, "No.", "True", False))
    assert len(load_pairs(DataSourceConfig(format="truthfulqa", path=str(folder)), "honest")) == 1
    with open(folder / "finetune_truth.jsonl", "a") as f:
        f.write(json.dumps({"prompt": f"Q: {q}\nA: x\nTrue:", "completion": " maybe"}) + "\n")
    with pytest.raises(DataError, match=r"finetune_truth.jsonl:5: field 'completion' must be ' yes' or ' no'"):
        load_pairs(DataSourceConfig(format="truthfulqa", path=str(folder)), "honest")


# --- splits ------------------------------------------------------------------------------------------------------
def test_split_deterministic_grouped_and_order_free():
    pairs = [PreferencePair(f"question {i // 3}", f"good {i}", f"bad {i}") for i in range(600)]
    a = split_pairs(pairs, seed=1)
    b = split_pairs(list(reversed(pairs)), seed=1)
    assert {k: {p.chosen for p in v} for k, v in a.items()} == {k: {p.chosen for p in v} for k, v in b.items()}
    prompts = {k: {p.prompt for p in v} for k, v in a.items()}
    assert not (prompts["train"] & prompts["val"]) and not (prompts["train"] & prompts["test"])
    assert 0.7 < len(a["train"]) / 600 < 0.9
    c = split_pairs(pairs, seed=2)
    assert {p.chosen for p in c["train"]} != {p.chosen for p in a["train"]}


def test_limit_cuts_training_split_only(tmp_path):
    rows = [{"q": f"q{i}", "good": f"g{i}", "bad": f"b{i}"} for i in range(200)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    full = load_value_splits(generic(path), "v", 0, 0.8, 0.1)
    cut = load_value_splits(generic(path, limit=10), "v", 0, 0.8, 0.1)
    assert cut["train"] == full["train"][:10] and cut["val"] == full["val"] and cut["test"] == full["test"]
