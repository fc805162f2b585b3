"""``load_task``: one entry point from user options to a validated :class:`~blockprune.tasks.base.Task`.

Sources: local files (``train_file`` [+ ``validation_file``] [+ ``test_file``]: CSV/TSV/JSON/JSONL/parquet, or a
folder saved with ``Dataset.save_to_disk``; image folders for image classification), a named ``dataset`` (text tasks only:
a hub name, or a folder saved with ``DatasetDict.save_to_disk``; with ``dataset_config`` and the splits named
by ``train_split`` / ``validation_split`` / ``test_split``; needs ``datasets``, see :mod:`.hf`), and, for
text classification with nothing given, the embedded offline Rotten Tomatoes task. All reading and checking
happens here, before any tokenization or training, so bad input fails in seconds with one clear message.

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

from blockprune.tasks.base import DataError, Task, subsample
from blockprune.tasks.causal_lm import CausalLMTask, documents_from_records, read_documents
from blockprune.tasks.classification import (
    ClassificationTask,
    TextExample,
    check_rows,
    choose_label_names,
    classification_task,
)
from blockprune.tasks.embedded import DATA_PIP, LABEL_NAMES, rotten_tomatoes_split
from blockprune.tasks.hf import DatasetSpec, load_splits
from blockprune.tasks.images import ImageTask, folder_examples, scan_image_folder, verify_images
from blockprune.tasks.qa import DEFAULT_DOC_STRIDE, QATask
from blockprune.tasks.qa_data import read_squad, squad_from_records
from blockprune.tasks.records import Record, columns_of, read_records

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
    test_file: PathLike | None = None,
    dataset_config: str | None = None,
    train_split: str = "train",
    validation_split: str = "validation",
    test_split: str | None = None,
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
        dataset: a Hugging Face hub dataset name, or a local folder saved with ``DatasetDict.save_to_disk``
            (or holding one such folder per config); needs the ``datasets`` package (and a network for the hub).
        dataset_config: the dataset's configuration (``"mnli"`` of ``"glue"``; the sub-folder of a local one).
        train_split, validation_split: the splits of ``dataset`` to train on and to evaluate on.
        test_split: an optional held-out split of ``dataset``, loaded into ``task.test_examples`` and scored
            only for reporting (:meth:`Task.test_task`); never trained on or used to choose anything.
        train_file, validation_file: local ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` files or
            folders saved with ``Dataset.save_to_disk`` (SQuAD v1 JSON or flat records for QA;
            also ``.txt``, one document per line, for causal-lm); image folders ``root/<label>/<images>`` for
            image-classification. Without a validation file, a seeded 10% of the training data is held out
            (by context for QA, by distinct document for causal-lm, by image for image-classification).
        test_file: a held-out local file (or image folder) in the training file's format and columns, loaded
            into ``task.test_examples`` like ``test_split``: scored only for reporting, never for choices.
        text_column, text_pair_column, label_column: classification fields (default ``"text"``, none,
            ``"label"``). Labels may be strings or integers; the label set is the sorted training labels.
            causal-lm reads ``text_column`` (default ``"text"``) of record files.
        seed: seed of the subsampling and of any hold-out split.
        label_names: fixed label order for classification (e.g. to match a trained model's ``id2label``).
        metric: primary metric: ``"accuracy"`` (default) or ``"macro_f1"`` for classification (text or
            images); ``"f1"`` (default) or ``"exact_match"`` for QA; ``"perplexity"`` for causal-lm.
        max_train_samples, max_eval_samples: keep a seeded subset of that many examples (documents for
            causal-lm, images for image-classification); ``max_eval_samples`` limits the test split too.
        max_length: default tokens per feature (128 for classification and causal-lm blocks, 384 for QA;
            ignored for images).
        doc_stride, max_answer_length: QA window overlap and longest answer, in tokens.

    Raises:
        DataError: any bad option or bad data, with the fix in the message.

    Example:
        >>> task = load_task(train_file="train.csv", validation_file="dev.csv",
        ...                  text_column="review", label_column="sentiment")     # doctest: +SKIP
        >>> task = load_task(dataset="glue", dataset_config="mnli", text_column="premise",
        ...                  text_pair_column="hypothesis", validation_split="validation_matched")  # doctest: +SKIP
    """
    kind = TASK_ALIASES.get(task)
    if kind is None:
        raise DataError(f"Unknown task {task!r}; choose one of {sorted(set(TASK_ALIASES.values()))}.")
    if dataset is not None and (train_file is not None or validation_file is not None):
        raise DataError("Give either dataset= (hub) or train_file/validation_file (local), not both.")
    for name, given in (("validation_file", validation_file), ("test_file", test_file)):
        if given is not None and train_file is None:
            hint = "; a dataset's held-out split is test_split=" if dataset is not None and name == "test_file" else ""
            raise DataError(f"{name}={given} was given without train_file; give the training file too{hint}.")
    spec = _dataset_spec(dataset, dataset_config, train_split, validation_split, test_split)
    _check_task_options(kind, text_column=text_column, text_pair_column=text_pair_column,
                        label_column=label_column, label_names=label_names)
    common: dict[str, Any] = {"metric": metric}
    if max_length is not None and kind != "image-classification":
        common["max_length"] = max_length
    if kind == "causal-lm":
        built: Task = _load_causal_lm(spec, train_file, validation_file, text_column or "text", seed, common)
        if test_file is not None:
            built.test_examples = read_documents(test_file, text_column or "text")
    elif kind == "image-classification":
        built = _load_images(dataset, train_file, validation_file, label_names, seed, common)
        if test_file is not None:
            index = {name: i for i, name in enumerate(built.label_names)}
            built.test_examples = folder_examples(scan_image_folder(test_file), index, str(test_file))
            verify_images([e.path for e in built.test_examples])
    elif kind == "question-answering":
        common |= {"doc_stride": doc_stride, "max_answer_length": max_answer_length}
        built = _load_qa(spec, train_file, validation_file, seed, common)
        if test_file is not None:
            built.test_examples = read_squad(test_file)
    else:
        columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
        built = _load_classification(spec, train_file, validation_file, columns, label_names, seed, common,
                                     test_file)
    if test_file is not None:
        built.source += f", test={test_file}"
    built.train_examples = subsample(built.train_examples, max_train_samples, seed)
    built.eval_examples = subsample(built.eval_examples, max_eval_samples, seed)
    built.test_examples = subsample(built.test_examples, max_eval_samples, seed)
    return built


def _dataset_spec(
    dataset: str | None, config: str | None, train_split: str, validation_split: str, test_split: str | None
) -> DatasetSpec | None:
    """The named dataset and its splits; split or config options without ``dataset`` are refused."""
    if dataset is not None:
        return DatasetSpec(str(dataset), config, train_split, validation_split, test_split)
    given = {"dataset_config": config, "test_split": test_split,
             "train_split": None if train_split == "train" else train_split,
             "validation_split": None if validation_split == "validation" else validation_split}
    stray = [f"{k}={v!r}" for k, v in given.items() if v is not None]
    if stray:
        raise DataError(f"{', '.join(stray)} name(s) a config or split of a dataset, but no dataset= was given; "
                        "pass dataset=<hub name or saved folder>, or leave them out.")
    return None


def _check_task_options(kind: str, **given: Any) -> None:
    """Options another task reads are refused here, rather than silently ignored."""
    if kind == "text-classification":
        return
    stray = sorted(k for k, v in given.items() if v is not None and k not in TASK_OPTIONS[kind])
    if stray:
        raise DataError(f"{stray} do(es) not apply to task {kind!r}; leave them out.")


def _load_classification(
    spec: DatasetSpec | None,
    train_file: PathLike | None,
    validation_file: PathLike | None,
    columns: dict[str, str | None],
    label_names: Sequence[str] | None,
    seed: int,
    common: dict[str, Any],
    test_file: PathLike | None = None,
) -> ClassificationTask:
    if spec is None and train_file is None:
        given = [k for k, v in columns.items() if v is not None] + (["label_names"] if label_names else [])
        if given:
            raise DataError(f"{given} given without data; pass train_file=... or dataset=... with them.")
        return _embedded(common)
    test: list[Record] | None = None
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
        splits = load_splits(spec)
        train, evaluation, test = splits.train, splits.validation, splits.test
        train_where, eval_where = spec.where(spec.train_split), spec.where(spec.validation_split)
        source = spec.describe()
    options = dict(
        text_column=columns["text_column"] or "text",
        label_column=columns["label_column"] or "label",
        text_pair_column=columns["text_pair_column"],
        label_names=label_names,
        train_where=train_where,
    )
    task = classification_task(train, evaluation, eval_where=eval_where, source=source, **options, **common)
    if test_file is not None:
        test = read_records(test_file)
        _require_training_columns(test, columns, str(test_file))
    if test is not None:  # checked like the validation split, against the training labels
        test_where = spec.where(str(spec.test_split)) if spec is not None else str(test_file)
        _refuse_hidden_labels(test, str(options["label_column"]), test_where)
        task.test_examples = classification_task(train, test, eval_where=test_where, **options).eval_examples
    return task


def _require_training_columns(records: list[Record], columns: dict[str, str | None], where: str) -> None:
    """A test file has the columns the training data is read by (it is scored with the same ones)."""
    wanted = {"text_column": "text", "label_column": "label"} | {k: v for k, v in columns.items() if v is not None}
    available = columns_of(records)
    missing = [f"{column!r} ({option})" for option, column in wanted.items() if column not in available]
    if records and missing:
        raise DataError(f"test_file {where} has no column {', '.join(missing)}, which the training data is read by; "
                        f"its columns are {available}. Give the test file the training file's columns.")


def _refuse_hidden_labels(records: list[Record], column: str, where: str) -> None:
    """A test split whose every label is -1 hides its labels (as GLUE's do); it cannot be scored."""
    if records and all(str(r.get(column)).strip() == "-1" for r in records):
        raise DataError(
            f"{where}: every {column!r} is -1, i.e. the labels are hidden (as in GLUE's test splits), so it "
            "cannot be scored; choose a labelled split as test_split (--test-split), e.g. validation_mismatched "
            "for MNLI, or leave it out."
        )


def _embedded(common: dict[str, Any]) -> ClassificationTask:
    """Train on the train side, evaluate on dev; the test side rides along for reporting (``task.test_task()``)."""
    splits = rotten_tomatoes_split()

    def examples(rows: list[dict[str, Any]]) -> list[TextExample]:
        return [TextExample(text=r["text"], label=r["label"]) for r in rows]

    source = f"embedded: Rotten Tomatoes reviews ({DATA_PIP}), split by movie (dev for choices, test for reports)"
    task = ClassificationTask(examples(splits.train), examples(splits.dev), list(LABEL_NAMES), source=source,
                              **common)
    task.test_examples = examples(splits.test)
    return task


def _load_qa(
    spec: DatasetSpec | None,
    train_file: PathLike | None,
    validation_file: PathLike | None,
    seed: int,
    common: dict[str, Any],
) -> QATask:
    if spec is None and train_file is None:
        raise DataError(
            "question-answering has no embedded dataset: pass train_file=... (and validation_file=...) in SQuAD v1 "
            "JSON, or dataset='squad' when online with the 'datasets' package."
        )
    test: list[Any] = []
    if train_file is not None:
        train = read_squad(train_file)
        if validation_file is not None:
            evaluation = read_squad(validation_file)
        else:
            train, evaluation = holdout(train, HOLDOUT_FRACTION, seed, key=lambda e: e.context)
        source = f"files: train={train_file}, validation={validation_file or 'held-out 10% of train'}"
    else:
        train, evaluation, test = _dataset_examples(spec, squad_from_records)
        source = spec.describe()
    task = QATask(train, evaluation, source=source, **common)
    task.test_examples = test
    return task


def _load_causal_lm(
    spec: DatasetSpec | None,
    train_file: PathLike | None,
    validation_file: PathLike | None,
    text_column: str,
    seed: int,
    common: dict[str, Any],
) -> CausalLMTask:
    if spec is None and train_file is None:
        raise DataError(
            "causal-lm has no embedded dataset: pass train_file=... (a .txt file, one document per line, or "
            ".csv/.json/.jsonl with a text column) and optionally validation_file=..."
        )
    test: list[str] = []
    if train_file is not None:
        train = read_documents(train_file, text_column)
        if validation_file is not None:
            evaluation = read_documents(validation_file, text_column)
        else:
            train, evaluation = _holdout_documents(train, train_file, seed)
        source = f"files: train={train_file}, validation={validation_file or 'held-out 10% of train documents'}"
    else:
        train, evaluation, test = _dataset_examples(
            spec, lambda records, where: documents_from_records(records, text_column, where)
        )
        source = spec.describe()
    task = CausalLMTask(train, evaluation, source=source, **common)
    task.test_examples = test
    return task


def _dataset_examples(
    spec: DatasetSpec, convert: Callable[[list[Record], str], list[T]]
) -> tuple[list[T], list[T], list[T]]:
    """Train, validation and test (empty without ``test_split``) examples of a named dataset, each checked."""
    splits = load_splits(spec)
    test = convert(splits.test, spec.where(str(spec.test_split))) if splits.test is not None else []
    return (convert(splits.train, spec.where(spec.train_split)),
            convert(splits.validation, spec.where(spec.validation_split)), test)


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
