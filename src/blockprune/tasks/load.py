"""``load_task``: one entry point from user options to a validated :class:`~blockprune.tasks.base.Task`.

Sources, in order of precedence: local files (``train_file`` [+ ``validation_file``]; image folders for
image classification), a Hugging Face hub ``dataset`` (needs ``datasets`` and a network; text tasks only),
and, for text classification with nothing given, the embedded offline Rotten Tomatoes task. All reading and checking happens here, before any tokenization or
training, so bad input fails in seconds with one clear message.

Example:
    >>> task = load_task()                    # doctest: +SKIP
    >>> task.num_train, task.num_eval         # doctest: +SKIP
    (9530, 1928)
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from .base import DataError, Task, subsample
from .causal_lm import CausalLMTask, documents_from_records, read_documents
from .classification import ClassificationTask, TextExample, check_rows, choose_label_names, classification_task
from .embedded import DATA_PIP, LABEL_NAMES, SPLIT_NAMES, rotten_tomatoes_split
from .images import ImageTask, folder_examples, scan_image_folder, verify_images
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
    "causal-lm": "causal-lm",
    "clm": "causal-lm",
    "language-modeling": "causal-lm",
    "image-classification": "image-classification",
    "image": "image-classification",
}
# Options that only some tasks read; giving one to another task is a mistake worth one clear error.
TASK_OPTIONS = {
    "text-classification": {"text_column", "text_pair_column", "label_column", "label_names"},
    "question-answering": set(),
    "causal-lm": {"text_column"},
    "image-classification": {"label_names"},
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
    eval_split: str = "dev",
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
        task: ``"text-classification"`` (alias ``"classification"``), ``"question-answering"`` (``"qa"``),
            ``"causal-lm"`` (``"clm"``) or ``"image-classification"`` (``"image"``).
        dataset: a Hugging Face hub dataset name (optional ``dataset_config``); needs ``datasets`` + network.
        train_file, validation_file: local ``.csv``/``.tsv``/``.json``/``.jsonl`` files (SQuAD v1 JSON for QA;
            also ``.txt``, one document per line, for causal-lm); image folders ``root/<label>/<images>`` for
            image-classification. Without a validation file, a seeded 10% of the training data is held out
            (by context for QA, by distinct document for causal-lm, by image for image-classification).
        text_column, text_pair_column, label_column: classification fields (default ``"text"``, none,
            ``"label"``). Labels may be strings or integers; the label set is the sorted training labels.
            causal-lm reads ``text_column`` (default ``"text"``) of record files.
        seed: seed of the subsampling and of any hold-out split.
        validation_split: hub split used for evaluation.
        eval_split: which held-out side of the embedded data to evaluate on: ``"dev"`` (default; where
            choices are made) or ``"test"`` (for reporting only: nothing should be tuned on it).
        label_names: fixed label order for classification (e.g. to match a trained model's ``id2label``).
        metric: primary metric: ``"accuracy"`` (default) or ``"macro_f1"`` for classification (text or
            images); ``"f1"`` (default) or ``"exact_match"`` for QA; ``"perplexity"`` for causal-lm.
        max_train_samples, max_eval_samples: keep a seeded subset of that many examples (documents for
            causal-lm, images for image-classification).
        max_length: default tokens per feature (128 for classification and causal-lm blocks, 384 for QA;
            ignored for images).
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
    _check_task_options(kind, text_column=text_column, text_pair_column=text_pair_column,
                        label_column=label_column, label_names=label_names)
    if eval_split not in SPLIT_NAMES:
        raise DataError(f"eval_split={eval_split!r} is unknown; choose one of {list(SPLIT_NAMES)}.")
    if eval_split != "dev" and not (kind == "text-classification" and dataset is None and train_file is None):
        raise DataError(f"eval_split={eval_split!r} applies to the embedded Rotten Tomatoes data only; give your "
                        "own held-out data as the validation data instead.")
    common: dict[str, Any] = {"metric": metric}
    if max_length is not None and kind != "image-classification":
        common["max_length"] = max_length
    if kind == "causal-lm":
        built: Task = _load_causal_lm(dataset, dataset_config, validation_split, train_file, validation_file,
                                      text_column or "text", seed, common)
    elif kind == "image-classification":
        built = _load_images(dataset, train_file, validation_file, label_names, seed, common)
    elif kind == "question-answering":
        common |= {"doc_stride": doc_stride, "max_answer_length": max_answer_length}
        built = _load_qa(dataset, dataset_config, validation_split, train_file, validation_file, seed, common)
    else:
        columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
        built = _load_classification(
            dataset, dataset_config, validation_split, train_file, validation_file, columns, label_names, seed, common,
            eval_split,
        )
    built.train_examples = subsample(built.train_examples, max_train_samples, seed)
    built.eval_examples = subsample(built.eval_examples, max_eval_samples, seed)
    return built


def _check_task_options(kind: str, **given: Any) -> None:
    """Options another task reads are refused here, rather than silently ignored."""
    if kind == "text-classification":
        return
    stray = sorted(k for k, v in given.items() if v is not None and k not in TASK_OPTIONS[kind])
    if stray:
        raise DataError(f"{stray} do(es) not apply to task {kind!r}; leave them out.")


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
    eval_split: str = "dev",
) -> ClassificationTask:
    if dataset is None and train_file is None:
        given = [k for k, v in columns.items() if v is not None] + (["label_names"] if label_names else [])
        if given:
            raise DataError(f"{given} given without data; pass train_file=... or dataset=... with them.")
        return _embedded(common, eval_split)
    if train_file is not None:
        train, train_where = read_records(train_file), str(train_file)
        if validation_file is not None:
            evaluation, eval_where = read_records(validation_file), str(validation_file)
        else:  # check the whole file first, so bad rows are numbered as in the file
            check_rows(train, {"text_column": columns["text_column"] or "text",
                               "text_pair_column": columns["text_pair_column"],
                               "label_column": columns["label_column"] or "label"}, train_where)
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


def _embedded(common: dict[str, Any], eval_split: str) -> ClassificationTask:
    splits = rotten_tomatoes_split()

    def examples(rows: list[dict[str, Any]]) -> list[TextExample]:
        return [TextExample(text=r["text"], label=r["label"]) for r in rows]

    source = f"embedded: Rotten Tomatoes reviews ({DATA_PIP}), split by movie, evaluated on {eval_split}"
    held_out = getattr(splits, eval_split)
    return ClassificationTask(examples(splits.train), examples(held_out), list(LABEL_NAMES), source=source, **common)


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


def _load_causal_lm(
    dataset: str | None,
    config: str | None,
    validation_split: str,
    train_file: PathLike | None,
    validation_file: PathLike | None,
    text_column: str,
    seed: int,
    common: dict[str, Any],
) -> CausalLMTask:
    if dataset is None and train_file is None:
        raise DataError(
            "causal-lm has no embedded dataset: pass train_file=... (a .txt file, one document per line, or "
            ".csv/.json/.jsonl with a text column) and optionally validation_file=..."
        )
    if train_file is not None:
        train = read_documents(train_file, text_column)
        if validation_file is not None:
            evaluation = read_documents(validation_file, text_column)
        else:
            train, evaluation = _holdout_documents(train, train_file, seed)
        source = f"files: train={train_file}, validation={validation_file or 'held-out 10% of train documents'}"
    else:
        where = f"dataset {dataset!r} split"
        train = documents_from_records(load_hub_split(dataset, config, "train"), text_column, f"{where} 'train'")
        evaluation = documents_from_records(
            load_hub_split(dataset, config, validation_split), text_column, f"{where} {validation_split!r}"
        )
        source = f"hub: {dataset}" + (f"/{config}" if config else "")
    return CausalLMTask(train, evaluation, source=source, **common)


def _holdout_documents(documents: list[str], train_file: PathLike, seed: int) -> tuple[list[str], list[str]]:
    if len(documents) < 2:
        raise DataError(
            f"{train_file} holds a single document, too little to hold out an evaluation split; give "
            "validation_file=..., or put one document per line."
        )
    return holdout(documents, HOLDOUT_FRACTION, seed, key=lambda d: d)  # copies of a document stay together


def _load_images(
    dataset: str | None,
    train_folder: PathLike | None,
    validation_folder: PathLike | None,
    label_names: Sequence[str] | None,
    seed: int,
    common: dict[str, Any],
) -> ImageTask:
    if dataset is not None or train_folder is None:
        raise DataError(
            "image-classification reads a local image folder: pass train_file=<folder> laid out as "
            "<folder>/<label>/<image files> (and optionally validation_file=<folder> with the same layout). "
            "Hub datasets are not supported for images."
        )
    classes = scan_image_folder(train_folder)
    names = _image_label_names(classes, label_names, train_folder)
    index = {name: i for i, name in enumerate(names)}
    train = folder_examples(classes, index, str(train_folder))
    if validation_folder is not None:
        eval_classes = scan_image_folder(validation_folder)
        evaluation = folder_examples(eval_classes, index, str(validation_folder))
    else:
        if len(train) < 2:
            raise DataError(f"{train_folder} holds a single image; give validation_file=<folder> as well.")
        train, evaluation = holdout(train, HOLDOUT_FRACTION, seed)
    verify_images([e.path for e in train + evaluation])
    source = f"image folders: train={train_folder}, validation={validation_folder or 'held-out 10% of train'}"
    return ImageTask(train, evaluation, names, source=source, **common)


def _image_label_names(classes: dict[str, Any], given: Sequence[str] | None, where: PathLike) -> list[str]:
    names = choose_label_names(given, set(classes))
    if len(names) < 2:
        raise DataError(
            f"{where} has fewer than 2 classes ({names}); image classification needs at least two class "
            f"sub-folders: {where}/<label>/<image files>."
        )
    return names


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
