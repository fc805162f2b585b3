"""``load_task``: one entry point from user options to a validated :class:`~blockprune.tasks.base.Task`.

Sources, in order of precedence: local files (``train_file`` [+ ``validation_file``]), a Hugging Face hub
``dataset`` (needs ``datasets`` and a network), and, for text classification with nothing given, the
embedded offline Rotten Tomatoes task. All reading and checking happens here, before any tokenization or
training, so bad input fails in seconds with one clear message.

Example:
    >>> task = load_task()                    # doctest: +SKIP
    >>> task.num_train, task.num_eval         # doctest: +SKIP
    (10824, 1928)
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from .base import DataError, Task, subsample
from .classification import ClassificationTask, TextExample, classification_task
from .embedded import DATA_PIP, LABEL_NAMES, rotten_tomatoes_split
from .qa import DEFAULT_DOC_STRIDE, QATask
from .qa_data import read_squad, squad_from_records
from .records import load_hub_split, read_records

T = TypeVar("T")
PathLike = str | os.PathLike[str]

TASK_ALIASES = {
    "text-classification": "text-classification",
    "classification": "text-classification",
    "sequence-classification": "text-classification",
    "question-answering": "question-answering",
    "qa": "question-answering",
}
HOLDOUT_FRACTION = 0.1


def load_task(
    task: str = "text-classification",
    dataset: str | None = None,
    train_file: PathLike | None = None,
    validation_file: PathLike | None = None,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    seed: int = 42,
    *,
    dataset_config: str | None = None,
    validation_split: str = "validation",
    label_names: Sequence[str] | None = None,
    metric: str | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    max_length: int | None = None,
    doc_stride: int = DEFAULT_DOC_STRIDE,
    max_answer_length: int = 30,
) -> Task:
    """Load, check and wrap the data of one task.

    Args:
        task: ``"text-classification"`` (alias ``"classification"``) or ``"question-answering"`` (``"qa"``).
        dataset: a Hugging Face hub dataset name (optional ``dataset_config``); needs ``datasets`` + network.
        train_file, validation_file: local ``.csv``/``.tsv``/``.json``/``.jsonl`` files (SQuAD v1 JSON for QA).
            Without a validation file, a seeded 10% of the training data is held out (by context for QA).
        text_column, text_pair_column, label_column: classification fields (default ``"text"``, none,
            ``"label"``). Labels may be strings or integers; the label set is the sorted training labels.
        seed: seed of the subsampling and of any hold-out split.
        validation_split: hub split used for evaluation.
        label_names: fixed label order for classification (e.g. to match a trained model's ``id2label``).
        metric: primary metric: ``"accuracy"`` (default) or ``"macro_f1"``; ``"f1"`` (default) or
            ``"exact_match"`` for QA.
        max_train_samples, max_eval_samples: keep a seeded subset of that many examples.
        max_length: default tokens per feature (128 for classification, 384 for QA).
        doc_stride, max_answer_length: QA window overlap and longest answer, in tokens.

    Raises:
        DataError: any bad option or bad data, with the fix in the message.

    Example:
        >>> task = load_task(train_file="train.csv", validation_file="dev.csv",
        ...                  text_column="review", label_column="sentiment")     # doctest: +SKIP
    """
    kind = TASK_ALIASES.get(task)
    if kind is None:
        raise DataError(f"Unknown task {task!r}; choose one of {sorted(set(TASK_ALIASES.values()))}.")
    if dataset is not None and (train_file is not None or validation_file is not None):
        raise DataError("Give either dataset= (hub) or train_file/validation_file (local), not both.")
    if validation_file is not None and train_file is None:
        raise DataError(f"validation_file={validation_file} was given without train_file; give the training file too.")
    common: dict[str, Any] = {"metric": metric}
    if max_length is not None:
        common["max_length"] = max_length
    if kind == "question-answering":
        common |= {"doc_stride": doc_stride, "max_answer_length": max_answer_length}
        built: Task = _load_qa(dataset, dataset_config, validation_split, train_file, validation_file, seed, common)
    else:
        columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
        built = _load_classification(
            dataset, dataset_config, validation_split, train_file, validation_file, columns, label_names, seed, common
        )
    built.train_examples = subsample(built.train_examples, max_train_samples, seed)
    built.eval_examples = subsample(built.eval_examples, max_eval_samples, seed)
    return built


def _load_classification(
    dataset: str | None,
    config: str | None,
    validation_split: str,
    train_file: PathLike | None,
    validation_file: PathLike | None,
    columns: dict[str, str | None],
    label_names: Sequence[str] | None,
    seed: int,
    common: dict[str, Any],
) -> ClassificationTask:
    if dataset is None and train_file is None:
        given = [k for k, v in columns.items() if v is not None] + (["label_names"] if label_names else [])
        if given:
            raise DataError(f"{given} given without data; pass train_file=... or dataset=... with them.")
        return _embedded(common)
    if train_file is not None:
        train, train_where = read_records(train_file), str(train_file)
        if validation_file is not None:
            evaluation, eval_where = read_records(validation_file), str(validation_file)
        else:
            train, evaluation = holdout(train, HOLDOUT_FRACTION, seed)
            eval_where = f"{train_where} (held-out {HOLDOUT_FRACTION:.0%})"
        source = f"files: train={train_file}, validation={validation_file or eval_where}"
    else:
        train, train_where = load_hub_split(dataset, config, "train"), f"dataset {dataset!r} split 'train'"
        evaluation = load_hub_split(dataset, config, validation_split)
        eval_where = f"dataset {dataset!r} split {validation_split!r}"
        source = f"hub: {dataset}" + (f"/{config}" if config else "")
    return classification_task(
        train,
        evaluation,
        text_column=columns["text_column"] or "text",
        label_column=columns["label_column"] or "label",
        text_pair_column=columns["text_pair_column"],
        label_names=label_names,
        train_where=train_where,
        eval_where=eval_where,
        source=source,
        **common,
    )


def _embedded(common: dict[str, Any]) -> ClassificationTask:
    train, dev = rotten_tomatoes_split()

    def examples(rows: list[dict[str, Any]]) -> list[TextExample]:
        return [TextExample(text=r["text"], label=r["label"]) for r in rows]

    source = f"embedded: Rotten Tomatoes reviews ({DATA_PIP}), split by movie"
    return ClassificationTask(examples(train), examples(dev), list(LABEL_NAMES), source=source, **common)


def _load_qa(
    dataset: str | None,
    config: str | None,
    validation_split: str,
    train_file: PathLike | None,
    validation_file: PathLike | None,
    seed: int,
    common: dict[str, Any],
) -> QATask:
    if dataset is None and train_file is None:
        raise DataError(
            "question-answering has no embedded dataset: pass train_file=... (and validation_file=...) in SQuAD v1 "
            "JSON, or dataset='squad' when online with the 'datasets' package."
        )
    if train_file is not None:
        train = read_squad(train_file)
        if validation_file is not None:
            evaluation = read_squad(validation_file)
        else:
            train, evaluation = holdout(train, HOLDOUT_FRACTION, seed, key=lambda e: e.context)
        source = f"files: train={train_file}, validation={validation_file or 'held-out 10% of train'}"
    else:
        train = squad_from_records(load_hub_split(dataset, config, "train"), f"dataset {dataset!r} split 'train'")
        evaluation = squad_from_records(
            load_hub_split(dataset, config, validation_split), f"dataset {dataset!r} split {validation_split!r}"
        )
        source = f"hub: {dataset}" + (f"/{config}" if config else "")
    return QATask(train, evaluation, source=source, **common)


def holdout(
    items: list[T], fraction: float, seed: int, key: Callable[[T], Hashable] | None = None
) -> tuple[list[T], list[T]]:
    """Split off a seeded ``fraction`` of ``items`` (whole groups when ``key`` is given), keeping order.

    Example:
        >>> train, dev = holdout(list(range(20)), 0.1, seed=0)
        >>> len(train), len(dev)
        (18, 2)
    """
    labels = [key(x) for x in items] if key else list(range(len(items)))  # no key: each item is its own group
    groups = list(dict.fromkeys(labels))
    if len(groups) < 2:
        raise DataError("Too little data to hold out an evaluation split; give validation_file=... as well.")
    chosen = set(random.Random(seed).sample(groups, max(1, round(fraction * len(groups)))))
    train = [x for x, g in zip(items, labels, strict=True) if g not in chosen]
    held = [x for x, g in zip(items, labels, strict=True) if g in chosen]
    return train, held
