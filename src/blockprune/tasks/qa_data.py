"""Extractive QA examples in SQuAD v1 form: read, check and normalize them before any tokenization.

Two layouts are accepted, from a local ``.json``/``.jsonl`` file or a Hugging Face dataset:

* nested (the official files): ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text", "answer_start"}]}]}]}]}``;
* flat (the hub's ``squad``): one record per question with ``id``, ``question``, ``context`` and
  ``answers`` = ``{"text": [...], "answer_start": [...]}`` (or a list of ``{"text", "answer_start"}``).

Every question needs at least one answer (SQuAD v2's unanswerable questions are not supported). An answer
whose ``answer_start`` is off is moved to the nearest occurrence of its text; one absent from the context
is an error naming the question.

Example:
    >>> examples = read_squad("dev-v1.1.json")     # doctest: +SKIP
    >>> examples[0].answers                        # doctest: +SKIP
    ['Denver Broncos', 'Denver Broncos', 'Denver Broncos']
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.tasks.base import DataError
from blockprune.tasks.records import Record, is_missing, read_records, read_text


@dataclass(frozen=True)
class QAExample:
    """One question about one context, with its gold answers (text and character start)."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


def read_squad(path: str | os.PathLike[str]) -> list[QAExample]:
    """Read and check a local SQuAD v1 file (nested ``.json``, or flat records in ``.json``/``.jsonl``).

    Raises:
        DataError: missing/empty file, wrong layout, or a bad question (named by id).
    """
    path = Path(path)
    if not path.exists():  # a folder is a Dataset.save_to_disk table of flat records (read_records reads it)
        raise DataError(f"QA data file not found: {path}. Check train_file / validation_file.")
    if path.suffix.lower() == ".json":
        text = read_text(path, f"QA data file {path} is empty; give a SQuAD v1 JSON file.")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # maybe JSON lines; read_records says what is wrong if not
        if isinstance(data, dict) and _is_nested(data.get("data")):
            return _check_all(_from_nested(data["data"]), str(path))
    return squad_from_records(read_records(path), str(path))


def squad_from_records(records: list[Record], where: str) -> list[QAExample]:
    """Build examples from flat records (hub ``squad`` layout); ``where`` names the source in errors."""
    if not records:
        raise DataError(f"{where} holds no questions; give at least one.")
    needed = ("question", "context", "answers")
    missing = [c for c in needed if not any(c in r for r in records)]
    if missing:
        raise DataError(
            f"{where} is not SQuAD v1 data: no field {missing}. Give the nested official layout, or flat records "
            f"with fields {list(needed)} (+ 'id'). Fields found: {sorted({k for r in records for k in r})}."
        )
    examples = [
        _example(r.get("id", str(i)), r.get("question"), r.get("context"), _flat_answers(r.get("answers")))
        for i, r in enumerate(records)
    ]
    return _check_all(examples, where)


def _is_nested(data: Any) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(a, dict) and "paragraphs" in a for a in data)


def _from_nested(articles: list[dict[str, Any]]) -> list[QAExample]:
    examples = []
    for article in articles:
        for paragraph in article["paragraphs"]:
            for qa in paragraph.get("qas", []):
                answers = [(a.get("text"), a.get("answer_start")) for a in qa.get("answers", [])]
                examples.append(
                    _example(qa.get("id", str(len(examples))), qa.get("question"), paragraph.get("context"), answers)
                )
    return examples


def _flat_answers(answers: Any) -> list[tuple[Any, Any]]:
    if isinstance(answers, dict):
        return list(zip(answers.get("text", []), answers.get("answer_start", []), strict=False))
    if isinstance(answers, list):
        return [(a.get("text"), a.get("answer_start")) for a in answers if isinstance(a, dict)]
    return []


def _example(qid: Any, question: Any, context: Any, answers: list[tuple[Any, Any]]) -> QAExample:
    return QAExample(
        id=str(qid),
        question=str(question).strip() if not is_missing(question) else "",
        context=str(context) if not is_missing(context) else "",
        answers=tuple(str(t) for t, _ in answers),
        answer_starts=tuple(_as_int(s) for _, s in answers),
    )


def _as_int(value: Any) -> int:
    """An answer start as an int; -1 when it is missing or not a number (the text is then searched for)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _check_all(examples: list[QAExample], where: str) -> list[QAExample]:
    if not examples:
        raise DataError(f"{where} holds no questions; give at least one.")
    return [_check(e, where) for e in examples]


def _check(example: QAExample, where: str) -> QAExample:
    if not example.question or not example.context:
        field = "question" if not example.question else "context"
        raise DataError(f"{where}: question id {example.id!r} has an empty {field}; fill or drop it.")
    if not example.answers or any(not a.strip() for a in example.answers):
        raise DataError(
            f"{where}: question id {example.id!r} has no (or an empty) answer. Only SQuAD v1 (every question "
            "answerable) is supported; drop unanswerable questions."
        )
    starts = tuple(
        _locate(example, text, start, where) for text, start in zip(example.answers, example.answer_starts, strict=True)
    )
    return QAExample(example.id, example.question, example.context, example.answers, starts)


def _locate(example: QAExample, text: str, start: int, where: str) -> int:
    """The character start of ``text`` in the context: ``start`` if right, else the nearest occurrence."""
    context = example.context
    if start >= 0 and context[start : start + len(text)] == text:
        return start
    found = []
    position = context.find(text)
    while position != -1:
        found.append(position)
        position = context.find(text, position + 1)
    if not found:
        raise DataError(
            f"{where}: question id {example.id!r}: answer {text!r} does not occur in its context; "
            "fix the answer text or answer_start."
        )
    return min(found, key=lambda p: abs(p - start))
