"""What every task offers the pipeline: a processor, datasets, a collator, a model class and ``evaluate``.

The pipeline never looks inside a dataset; it loads the model's input processor with
:meth:`Task.load_processor` (a tokenizer for text, an image processor for images), asks the :class:`Task` for
features (unpadded, so each batch is padded only to its longest member by :meth:`Task.collate`), builds the
model with :meth:`Task.model_class` and :meth:`Task.model_kwargs`, and scores it with :meth:`Task.evaluate`,
whose result always holds the task's primary metric under :attr:`Task.metric_name`; whether that metric is
better high (accuracy) or low (perplexity) is :attr:`Task.higher_is_better`.

:meth:`Task.evaluate` is the same loop for every task (evaluation features, batches in inference mode, the
model's mode restored); a task only says what one batch keeps (:meth:`Task.eval_step`) and how the kept
values become metrics (:meth:`Task.score`).

Example:
    >>> from blockprune.tasks import load_task
    >>> task = load_task()                        # doctest: +SKIP
    >>> task.name, task.metric_name               # doctest: +SKIP
    ('text-classification', 'accuracy')
"""

from __future__ import annotations

import copy
import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset

Record = dict[str, Any]  # one raw example, as read from a file or a dataset

T = TypeVar("T")

# Keys a collator passes to the model besides the tokenizer's own inputs.
TARGET_KEYS = ("labels", "start_positions", "end_positions")


class DataError(ValueError):
    """Bad task input (file, column, label, ...). The message names the thing and the fix."""


class FeatureDataset(Dataset):
    """A list of tokenized features (one dict per model input row), as a torch ``Dataset``.

    Example:
        >>> ds = FeatureDataset([{"input_ids": [101, 102], "labels": 1}])
        >>> len(ds), ds[0]["labels"]
        (1, 1)
    """

    def __init__(self, features: list[dict[str, Any]]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.features)


class PaddingCollator:
    """Pads a batch to its longest member, keeping only model inputs and targets.

    Extra keys (QA offsets, example ids) stay in the dataset for post-processing and never reach the model.

    Example:
        >>> collate = PaddingCollator(tokenizer)      # doctest: +SKIP
        >>> batch = collate([ds[0], ds[1]])           # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any, pad_to_multiple_of: int | None = None) -> None:
        from transformers import DataCollatorWithPadding

        self.keep = set(tokenizer.model_input_names) | set(TARGET_KEYS)
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.pad([{k: v for k, v in f.items() if k in self.keep} for f in features])


def subsample(items: list[T], limit: int | None, seed: int) -> list[T]:
    """Return at most ``limit`` items, chosen deterministically from ``seed``, in their original order.

    Example:
        >>> subsample(list(range(10)), 3, seed=0) == subsample(list(range(10)), 3, seed=0)
        True
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise DataError(f"max samples must be a positive integer, got {limit}; pass None to keep everything.")
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def check_metric(metric: str | None, allowed: Sequence[str]) -> str:
    """Return ``metric`` (default: the first allowed one) after checking it is one of ``allowed``."""
    if metric is None:
        return allowed[0]
    if metric not in allowed:
        raise DataError(f"Unknown metric {metric!r} for this task; choose one of {list(allowed)}.")
    return metric


class Task(ABC):
    """A fine-tuning task the pipeline can train on and evaluate.

    Attributes:
        name: ``"text-classification"``, ``"question-answering"``, ``"causal-lm"`` or ``"image-classification"``.
        metric_name: key of the primary metric in :meth:`evaluate`'s result.
        higher_is_better: ``True`` when a larger primary metric is better (accuracy, F1); ``False`` for
            perplexity. Compare runs with :meth:`better`.
        metrics: the primary metrics the task can report; the first is the default.
        max_length: default token length of one feature (unused by image tasks).
        source: human-readable origin of the data, for reports.
        train_examples, eval_examples: the raw examples (after any subsampling), one per question/text.
        test_examples: held-out examples evaluated only for reporting (a dataset's ``test_split``), never
            used for training or choosing; empty when there is none. Score them with :meth:`test_task`.
    """

    train_examples: list[Any]
    eval_examples: list[Any]
    test_examples: list[Any]
    name: str
    metrics: tuple[str, ...]
    metric_name: str
    higher_is_better: bool = True
    max_length: int
    source: str

    def __init__(
        self,
        train: list[Any],
        eval: list[Any],
        metric: str | None = None,
        source: str = "",
        max_length: int | None = None,
    ) -> None:
        """Keep the examples and check ``metric`` against :attr:`metrics`; ``max_length=None`` keeps the class default.

        Raises:
            DataError: ``metric`` is not one of :attr:`metrics`.
        """
        self.train_examples = train
        self.eval_examples = eval
        self.test_examples = []
        self.metric_name = check_metric(metric, self.metrics)
        self.source = source
        if max_length is not None:
            self.max_length = max_length

    @property
    def num_train(self) -> int:
        """Number of training examples (after any subsampling)."""
        return len(self.train_examples)

    @property
    def num_eval(self) -> int:
        """Number of evaluation examples (after any subsampling)."""
        return len(self.eval_examples)

    def test_task(self) -> Task:
        """This task with its test examples as the evaluation set, so ``task.test_task().evaluate(...)`` scores them.

        Raises:
            DataError: the task has no test examples.

        Example:
            >>> task = load_task(dataset="./glue_saved", test_split="test")         # doctest: +SKIP
            >>> task.test_task().evaluate(model, tokenizer)["accuracy"]             # doctest: +SKIP
        """
        if not self.test_examples:
            raise DataError("This task has no test examples; load it with test_split=... (--test-split).")
        twin = copy.copy(self)
        twin.eval_examples, twin.test_examples = list(self.test_examples), []
        return twin

    @abstractmethod
    def model_class(self) -> type:
        """The ``transformers`` auto class that builds a model with the right head for this task."""

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model_class().from_pretrained`` (e.g. ``num_labels``)."""
        return {}

    def load_processor(self, model_path: str | os.PathLike[str], trust_remote_code: bool = False) -> Any:
        """The input processor the other methods take as ``tokenizer``: here the model folder's tokenizer.

        Image tasks override this to return an image processor. Whatever it returns has ``save_pretrained``,
        so the pipeline saves it next to every model it writes.

        Example:
            >>> tokenizer = task.load_processor("runs/demo/teacher/model")     # doctest: +SKIP
        """
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)

    def better(self, a: float, b: float) -> bool:
        """True when primary-metric value ``a`` is strictly better than ``b`` (follows :attr:`higher_is_better`).

        Example:
            >>> task.better(12.0, 15.0)    # perplexity: lower wins           # doctest: +SKIP
            True
        """
        return a > b if self.higher_is_better else a < b

    @abstractmethod
    def train_dataset(self, tokenizer: Any, max_length: int | None = None) -> Dataset:
        """Unpadded training features with their targets (a :class:`FeatureDataset` for text tasks)."""

    @abstractmethod
    def eval_dataset(self, tokenizer: Any, max_length: int | None = None) -> Dataset:
        """Unpadded evaluation features, in the order of :attr:`eval_examples`' outputs."""

    def collate(self, tokenizer: Any) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
        """A data collator that pads each batch to its longest member."""
        return PaddingCollator(tokenizer)

    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 64,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> dict[str, float]:
        """Run ``model`` on the evaluation set and return its metrics (``metric_name`` among them).

        Example:
            >>> task.evaluate(model, tokenizer, batch_size=16, progress=False)     # doctest: +SKIP
            {'accuracy': 0.83, 'macro_f1': 0.82, 'loss': 0.41}
        """
        dataset = self.eval_dataset(tokenizer, max_length)
        outputs = run_batches(model, dataset, self.collate(tokenizer), batch_size, device, progress, self.eval_step)
        return self.score(dataset, outputs)

    def eval_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """What one evaluation batch (already on the model's device) keeps: by default the output tensors, on CPU."""
        return _to_cpu(model(**batch))

    @abstractmethod
    def score(self, dataset: Dataset, outputs: list[Any]) -> dict[str, float]:
        """Metrics (``metric_name`` among them) from the evaluation features and each batch's :meth:`eval_step`."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary for reports: task, source, sizes, metric."""
        return {
            "task": self.name,
            "source": self.source,
            "num_train": self.num_train,
            "num_eval": self.num_eval,
            **({"num_test": len(self.test_examples)} if self.test_examples else {}),
            "metric": self.metric_name,
            "higher_is_better": self.higher_is_better,
            "max_length": self.max_length,
        }


def run_batches(
    model: torch.nn.Module,
    dataset: Dataset,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    batch_size: int,
    device: str | torch.device,
    progress: bool,
    step: Callable[[torch.nn.Module, dict[str, torch.Tensor]], T],
    desc: str = "eval",
) -> list[T]:
    """Batch ``dataset`` in order and return ``step(model, batch)`` of each batch, in eval and inference mode.

    Each batch is moved to ``device`` before ``step`` sees it; the model's train/eval mode is restored afterwards.

    Example:
        >>> sizes = run_batches(model, ds, collate, 8, "cpu", False, lambda m, b: len(b["labels"]))  # doctest: +SKIP
    """
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    was_training = model.training
    model.eval()
    kept = []
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                kept.append(step(model, {k: v.to(device) for k, v in batch.items()}))
    finally:
        model.train(was_training)
    return kept


def _to_cpu(output: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu() for k, v in output.items() if isinstance(v, torch.Tensor)}
