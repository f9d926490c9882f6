"""TruthfulQA GPT-judge label files -> honest and helpful preference pairs.

finetune_truth.jsonl / finetune_info.jsonl lines are {"prompt": "Q: <question>\\nA: <answer>\\nTrue:" (or
"\\nHelpful:"), "completion": " yes" | " no"}. An answer can appear on several lines with different labels: its label
is the majority vote, and an answer whose votes tie is dropped. The two files are joined on (question, answer); only
answers labelled in both are kept, so each pair can say how the *other* value judges it.

Pairs, per question: the answers good for the value (truthful for 'honest', informative for 'helpful') and the bad
ones are each shuffled by a generator seeded with the question text and zipped, giving min(#good, #bad) pairs in
which every answer is used at most once. The prompt is the question. Each pair's meta records both answers' labels
for both values and whether it is a *conflict* pair (the other value prefers the rejected answer).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

from .pairs import DataError, PairCollector, PreferencePair, RowRef
from .readers import read_text

LABEL_FILES = {"honest": ("finetune_truth.jsonl", "True"), "helpful": ("finetune_info.jsonl", "Helpful")}


def read_judge_labels(path: Path, tag: str) -> dict[tuple[str, str], tuple[bool, RowRef]]:
    """(question, answer) -> (majority label, first line) for one judge file; tied answers are left out."""
    votes: dict[tuple[str, str], list[bool]] = defaultdict(list)
    first: dict[tuple[str, str], RowRef] = {}
    suffix = f"\n{tag}:"
    for i, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        ref = RowRef(str(path), i)
        try:
            rec = json.loads(line)
            text, completion = rec["prompt"], rec["completion"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{ref}: expected {{'prompt': ..., 'completion': ...}} ({type(e).__name__}: {e})") from None
        if not (isinstance(text, str) and text.startswith("Q: ") and text.endswith(suffix) and "\nA: " in text):
            raise DataError(f"{ref}: field 'prompt' must look like 'Q: ...\\nA: ...{suffix}'")
        label = str(completion).strip().lower()
        if label not in ("yes", "no"):
            raise DataError(f"{ref}: field 'completion' must be ' yes' or ' no', got {completion!r}")
        question, answer = text[3 : -len(suffix)].split("\nA: ", 1)
        key = (question.strip(), answer.strip())
        votes[key].append(label == "yes")
        first.setdefault(key, ref)
    out = {}
    for key, v in votes.items():
        yes = sum(v)
        if 2 * yes != len(v):
            out[key] = (2 * yes > len(v), first[key])
    return out


def load_truthfulqa_answers(folder: str | Path) -> dict[str, list[tuple[str, dict[str, bool], RowRef]]]:
    """question -> [(answer, {"honest": bool, "helpful": bool}, where)] for answers labelled in both files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: truthfulqa data must be a folder holding {', '.join(f for f, _ in LABEL_FILES.values())}")
    labels = {value: read_judge_labels(folder / fname, tag) for value, (fname, tag) in LABEL_FILES.items()}
    by_question: dict[str, list[tuple[str, dict[str, bool], RowRef]]] = defaultdict(list)
    for key, (honest, ref) in labels["honest"].items():
        if key in labels["helpful"]:
            by_question[key[0]].append((key[1], {"honest": honest, "helpful": labels["helpful"][key][0]}, ref))
    return by_question


def collect_truthfulqa(folder: str | Path, value: str, collector: PairCollector) -> list[PreferencePair]:
    if value not in LABEL_FILES:
        raise DataError(f"truthfulqa: value {value!r} has no labels; set data.value to one of {sorted(LABEL_FILES)}")
    other = next(v for v in LABEL_FILES if v != value)
    for question, answers in sorted(load_truthfulqa_answers(folder).items()):
        for _, _, ref in (a for a in answers if not a[0]):
            collector.reject(ref, "empty answer")
        answers = sorted((a for a in answers if a[0]), key=lambda a: a[0])
        good = [a for a in answers if a[1][value]]
        bad = [a for a in answers if not a[1][value]]
        rng = random.Random(hashlib.sha256(question.encode()).hexdigest())
        rng.shuffle(good)
        rng.shuffle(bad)
        for (ans_w, lab_w, ref), (ans_l, lab_l, _) in zip(good, bad):
            collector.add(
                ref, question, ans_w, ans_l,
                question=question, chosen_labels=lab_w, rejected_labels=lab_l,
                conflict=lab_l[other] and not lab_w[other],
            )
    return collector.finish()


def count_conflict_questions(folder: str | Path) -> tuple[int, int]:
    """(questions with a direct conflict, all questions): a conflict question has one answer that is truthful but
    uninformative and another that is informative but untruthful."""
    by_question = load_truthfulqa_answers(folder)
    conflicts = sum(
        any(lab["honest"] and not lab["helpful"] for _, lab, _ in a)
        and any(lab["helpful"] and not lab["honest"] for _, lab, _ in a)
        for a in by_question.values()
    )
    return conflicts, len(by_question)
