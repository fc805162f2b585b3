"""Text (and text-pair) classification: label mapping, validation, tokenization, accuracy and macro-F1.

Labels may be strings or integers; the label set is taken from the training split and sorted (numerically
when every label is an integer), and an evaluation label outside that set is an error rather than a silent
zero score. Metrics are fractions in [0, 1]; the primary one is accuracy unless ``metric="macro_f1"``.

Example:
    >>> accuracy([1, 0, 1], [1, 1, 1])
    0.6666666666666666
    >>> round(macro_f1([1, 0, 1], [1, 1, 1]), 3)   # class 0: F1 0, class 1: F1 0.8
    0.4
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from blockprune.tasks.base import DataError, FeatureDataset, Task
from blockprune.tasks.records import Record, check_not_missing, format_rows, is_missing, require_columns

METRICS = ("accuracy", "macro_f1")
DEFAULT_MAX_LENGTH = 128


@dataclass(frozen=True)
class TextExample:
    """One example: its text, an optional second text, and the label id."""

    text: str
    label: int
    text_pair: str | None = None


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to the label."""
    if not labels:
        return 0.0
    return sum(int(p == y) for p, y in zip(predictions, labels, strict=True)) / len(labels)


def macro_f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes seen in labels or predictions (F1 is 0 when undefined)."""
    classes = sorted(set(labels) | set(predictions))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y == c)
        fp = sum(1 for p, y in zip(predictions, labels, strict=True) if p == c and y != c)
        fn = sum(1 for p, y in zip(predictions, labels, strict=True) if p != c and y == c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def label_key(value: Any) -> str:
    """Canonical label: integers (and integral floats) as decimal strings, everything else ``str(value).strip()``."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sorted_labels(keys: set[str]) -> list[str]:
    """Sort label keys numerically when all are integers, else alphabetically."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def label_predictions(outputs: Sequence[dict[str, torch.Tensor]]) -> list[int]:
    """The predicted class of every example of batch outputs (``logits``), in order.

    Example:
        >>> label_predictions([{"logits": torch.tensor([[0.0, 1.0], [2.0, 0.0]])}])
        [1, 0]
    """
    return torch.cat([o["logits"] for o in outputs]).argmax(-1).tolist()


def label_scores(outputs: Sequence[dict[str, torch.Tensor]], labels: Sequence[int]) -> dict[str, float]:
    """Accuracy, macro-F1 and the example-weighted mean loss of batch outputs (``logits``, ``loss``) vs ``labels``.

    Example:
        >>> out = [{"logits": torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "loss": torch.tensor(0.5)}]
        >>> label_scores(out, [1, 1])
        {'accuracy': 0.5, 'macro_f1': 0.3333333333333333, 'loss': 0.5}
    """
    predictions = label_predictions(outputs)
    sizes = [len(o["logits"]) for o in outputs]
    loss = sum(float(o["loss"]) * n for o, n in zip(outputs, sizes, strict=True)) / max(sum(sizes), 1)
    return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels), "loss": loss}


class LabelTask(Task):
    """A task whose examples each carry one class id (``example.label``): text or image classification.

    It holds the class names, gives the model head its label maps, and scores the evaluation examples with
    :func:`label_scores` (accuracy, macro-F1, mean cross-entropy loss).
    """

    metrics = METRICS

    def __init__(
        self,
        train: list[Any],
        eval: list[Any],
        label_names: list[str],
        metric: str | None = None,
        source: str = "",
        max_length: int | None = None,
    ) -> None:
        super().__init__(train, eval, metric, source, max_length)
        self.label_names = label_names

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.label_names)

    def model_kwargs(self) -> dict[str, Any]:
        return {
            "num_labels": self.num_labels,
            "id2label": dict(enumerate(self.label_names)),
            "label2id": {name: i for i, name in enumerate(self.label_names)},
        }

    def score(self, dataset: Dataset, outputs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Accuracy, macro-F1 and mean cross-entropy loss on the evaluation examples.

        Example:
            >>> task.evaluate(model, tokenizer, progress=False)     # doctest: +SKIP
            {'accuracy': 0.83, 'macro_f1': 0.82, 'loss': 0.41}
        """
        return label_scores(outputs, [e.label for e in self.eval_examples])


class ClassificationTask(LabelTask):
    """Sequence classification on (text[, text_pair], label) examples.

    Build it with :func:`classification_task` (validated records) or :func:`blockprune.tasks.load_task`.

    Example:
        >>> task = load_task(train_file="train.csv", validation_file="dev.csv")     # doctest: +SKIP
        >>> model = task.model_class().from_pretrained(path, **task.model_kwargs())   # doctest: +SKIP
        >>> task.evaluate(model, tokenizer)["accuracy"]                              # doctest: +SKIP
    """

    name = "text-classification"
    max_length = DEFAULT_MAX_LENGTH

    def model_class(self) -> type:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def train_dataset(self, tokenizer: Any, max_length: int | None = None) -> FeatureDataset:
        return self._tokenize(self.train_examples, tokenizer, max_length or self.max_length)

    def eval_dataset(self, tokenizer: Any, max_length: int | None = None) -> FeatureDataset:
        return self._tokenize(self.eval_examples, tokenizer, max_length or self.max_length)

    @staticmethod
    def _tokenize(examples: list[TextExample], tokenizer: Any, max_length: int) -> FeatureDataset:
        texts = [e.text for e in examples]
        pairs = [e.text_pair or "" for e in examples] if any(e.text_pair is not None for e in examples) else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        keys = list(encoded.keys())
        features = [{k: encoded[k][i] for k in keys} | {"labels": e.label} for i, e in enumerate(examples)]
        return FeatureDataset(features)


def check_rows(records: list[Record], columns: dict[str, str | None], where: str) -> None:
    """One clear error for an empty file, a missing column or a missing value (rows numbered as in ``where``)."""
    if not records:
        raise DataError(f"{where} holds no examples; give at least one row.")
    require_columns(records, columns, where)
    for column in columns.values():
        if column is not None:
            check_not_missing(records, column, where)


def classification_task(
    train_records: list[Record],
    eval_records: list[Record],
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    label_names: Sequence[str] | None = None,
    train_where: str = "training data",
    eval_where: str = "evaluation data",
    **task_kwargs: Any,
) -> ClassificationTask:
    """Validate raw records and turn them into a :class:`ClassificationTask`.

    Args:
        train_records, eval_records: one dict per example.
        text_column, label_column, text_pair_column: field names.
        label_names: fixed label order; default: the training labels, sorted.
        train_where, eval_where: names of the sources, used in error messages (e.g. the file path).
        **task_kwargs: ``metric``, ``source``, ``max_length``.

    Raises:
        DataError: missing columns, empty texts, missing labels, fewer than two classes, unknown eval labels.
    """
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    for records, where in ((train_records, train_where), (eval_records, eval_where)):
        check_rows(records, columns, where)
    names = _label_names(train_records, label_column, label_names, train_where)
    index = {name: i for i, name in enumerate(names)}
    _check_labels(eval_records, label_column, index, eval_where)
    if label_names is not None:
        _check_labels(train_records, label_column, index, train_where)

    def examples(records: list[Record]) -> list[TextExample]:
        return [
            TextExample(
                text=str(r[text_column]),
                label=index[label_key(r[label_column])],
                text_pair=str(r[text_pair_column]) if text_pair_column else None,
            )
            for r in records
        ]

    return ClassificationTask(examples(train_records), examples(eval_records), names, **task_kwargs)


def choose_label_names(given: Sequence[Any] | None, found: set[str]) -> list[str]:
    """The class order: ``given`` (as label keys, checked for duplicates), else the ``found`` keys, sorted.

    Raises:
        DataError: ``given`` names a class twice.

    Example:
        >>> choose_label_names(None, {"10", "9"}), choose_label_names(["b", "a"], {"a", "b"})
        (['9', '10'], ['b', 'a'])
    """
    if given is None:
        return sorted_labels(found)
    names = [label_key(n) for n in given]
    if len(set(names)) != len(names):
        raise DataError(f"label_names {list(given)} has duplicates; give each class once.")
    return names


def _label_names(records: list[Record], column: str, given: Sequence[str] | None, where: str) -> list[str]:
    names = choose_label_names(given, {label_key(r[column]) for r in records})
    if len(names) < 2:
        raise DataError(
            f"{where}: column {column!r} has fewer than 2 classes ({names}); classification needs at least two. "
            "Check label_column, or add examples of the other classes."
        )
    return names


def _check_labels(records: list[Record], column: str, index: dict[str, int], where: str) -> None:
    bad = [
        (i, r[column])
        for i, r in enumerate(records, start=1)
        if is_missing(r[column]) or label_key(r[column]) not in index
    ]
    if bad:
        unknown = sorted({label_key(v) for _, v in bad})
        raise DataError(
            f"{where}: column {column!r} has labels {unknown} that are not in the label set {list(index)} "
            f"(rows {format_rows([i for i, _ in bad])}, 1-based). Fix those labels, or train on data that has them."
        )
