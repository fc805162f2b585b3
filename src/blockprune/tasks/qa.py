"""Extractive question answering: windowed features, span post-processing and the :class:`QATask`.

A context longer than one window is cut into overlapping windows (``max_length`` tokens, ``doc_stride``
tokens of overlap) with a fast tokenizer's ``return_overflowing_tokens``. Training features point at the
answer's first and last token, or at the CLS token when the answer is not wholly inside the window.
Evaluation features keep each token's character offsets (``None`` outside the context) and the index of
their example, so :func:`postprocess` can pick, per example, the best-scoring valid span over all windows.

Example:
    >>> task = load_task("question-answering", train_file="train.json", validation_file="dev.json")  # doctest: +SKIP
    >>> task.evaluate(model, tokenizer)      # doctest: +SKIP
    {'f1': 0.87, 'exact_match': 0.79}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from blockprune.tasks.base import DataError, FeatureDataset, Task, run_batches
from blockprune.tasks.qa_data import QAExample
from blockprune.tasks.qa_metrics import squad_scores

METRICS = ("f1", "exact_match")
DEFAULT_MAX_LENGTH = 384
DEFAULT_DOC_STRIDE = 128
Offsets = list[tuple[int, int] | None]


def qa_features(
    examples: Sequence[QAExample], tokenizer: Any, max_length: int, doc_stride: int, train: bool
) -> FeatureDataset:
    """Tokenize (question, context) pairs into windows; ``train`` adds start/end positions, else offsets.

    Each feature holds the tokenizer's model inputs and ``example_index``; training features add
    ``start_positions``/``end_positions`` (from the first gold answer), evaluation features add
    ``offset_mapping`` (character span per token, ``None`` outside the context) and ``example_id``.

    Raises:
        DataError: the tokenizer is not a fast one, or the window settings cannot hold question + context.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("Question answering needs a fast tokenizer (offset mapping); load it with use_fast=True.")
    if not 0 <= doc_stride < max_length:
        raise DataError(f"doc_stride={doc_stride} must be >= 0 and smaller than max_length={max_length}.")
    _check_room(examples, tokenizer, max_length, doc_stride)
    encoded = tokenizer(
        [e.question for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    inputs = [k for k in tokenizer.model_input_names if k in encoded]
    features = []
    for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
        example = examples[example_index]
        feature: dict[str, Any] = {k: encoded[k][i] for k in inputs} | {"example_index": example_index}
        in_context = [s == 1 for s in encoded.sequence_ids(i)]
        offsets: Offsets = [
            tuple(o) if c else None for o, c in zip(encoded["offset_mapping"][i], in_context, strict=True)
        ]
        if train:
            cls_index = _cls_index(feature["input_ids"], tokenizer)
            start, end = answer_tokens(offsets, example.answer_starts[0], len(example.answers[0]), cls_index)
            feature |= {"start_positions": start, "end_positions": end}
        else:
            feature |= {"offset_mapping": offsets, "example_id": example.id}
        features.append(feature)
    return FeatureDataset(features)


def _check_room(examples: Sequence[QAExample], tokenizer: Any, max_length: int, doc_stride: int) -> None:
    """Every window must hold the question, the special tokens and more than ``doc_stride`` context tokens."""
    lengths = [len(ids) for ids in tokenizer([e.question for e in examples], add_special_tokens=False)["input_ids"]]
    longest = max(range(len(examples)), key=lengths.__getitem__)
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - lengths[longest]
    if room <= doc_stride:
        raise DataError(
            f"Question id {examples[longest].id!r} takes {lengths[longest]} tokens, leaving {room} context tokens per "
            f"window of max_length={max_length}, not more than doc_stride={doc_stride}. Use a larger max_length or "
            "a smaller doc_stride."
        )


def _cls_index(input_ids: list[int], tokenizer: Any) -> int:
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def answer_tokens(offsets: Offsets, char_start: int, char_length: int, cls_index: int) -> tuple[int, int]:
    """First and last token of the answer ``[char_start, char_start + char_length)`` in one window.

    Returns ``(cls_index, cls_index)`` when the window's context does not hold the whole answer.

    Example:
        >>> answer_tokens([None, (0, 3), (4, 9), (10, 12), None], 4, 8, cls_index=0)
        (2, 3)
    """
    char_end = char_start + char_length
    context = [j for j, o in enumerate(offsets) if o is not None]
    if not context or offsets[context[0]][0] > char_start or offsets[context[-1]][1] < char_end:
        return cls_index, cls_index
    start = max(j for j in context if offsets[j][0] <= char_start)
    end = min(j for j in context if offsets[j][1] >= char_end)
    return start, end


def postprocess(
    examples: Sequence[QAExample],
    features: Sequence[dict[str, Any]],
    start_logits: Sequence[torch.Tensor],
    end_logits: Sequence[torch.Tensor],
    n_best: int = 20,
    max_answer_length: int = 30,
) -> list[str]:
    """The predicted answer text of each example: its best span over all of its windows.

    For every window, the ``n_best`` highest start and end logits are paired; a pair is a candidate when both
    tokens lie in the context, ``end >= start`` and the span has at most ``max_answer_length`` tokens. The
    candidate with the highest ``start_logit + end_logit`` wins; an example with no candidate gets ``""``.

    Args:
        examples: the evaluation examples.
        features: evaluation features from :func:`qa_features` (``train=False``), in the logits' order.
        start_logits, end_logits: one 1-D tensor per feature (padding positions beyond the feature are ignored).
    """
    best: dict[int, tuple[float, str]] = {}
    for feature, starts, ends in zip(features, start_logits, end_logits, strict=True):
        offsets: Offsets = feature["offset_mapping"]
        index = feature["example_index"]
        span = _best_span(offsets, starts[: len(offsets)], ends[: len(offsets)], n_best, max_answer_length)
        if span is not None and (index not in best or span[0] > best[index][0]):
            context = examples[index].context
            best[index] = (span[0], context[offsets[span[1]][0] : offsets[span[2]][1]])
    return [best[i][1] if i in best else "" for i in range(len(examples))]


def _best_span(
    offsets: Offsets, starts: torch.Tensor, ends: torch.Tensor, n_best: int, max_answer_length: int
) -> tuple[float, int, int] | None:
    k = min(n_best, len(offsets))
    top_starts = torch.topk(starts, k).indices.tolist()
    top_ends = torch.topk(ends, k).indices.tolist()
    best = None
    for s in top_starts:
        for e in top_ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                continue
            score = float(starts[s] + ends[e])
            if best is None or score > best[0]:
                best = (score, s, e)
    return best


class QATask(Task):
    """Extractive QA (SQuAD v1): F1 (primary, unless ``metric="exact_match"``) and exact match, in [0, 1].

    The window overlap is ``min(doc_stride, max_length // 2)``, so a short ``max_length`` passed to
    :meth:`train_dataset` / :meth:`evaluate` still gets a valid stride.

    Build it with :func:`blockprune.tasks.load_task` (``task="question-answering"``).
    """

    name = "question-answering"
    metrics = METRICS
    max_length = DEFAULT_MAX_LENGTH

    def __init__(
        self,
        train: list[QAExample],
        eval: list[QAExample],
        metric: str | None = None,
        source: str = "",
        max_length: int = DEFAULT_MAX_LENGTH,
        doc_stride: int = DEFAULT_DOC_STRIDE,
        max_answer_length: int = 30,
        n_best: int = 20,
    ) -> None:
        super().__init__(train, eval, metric, source, max_length)
        self.doc_stride = doc_stride
        self.max_answer_length = max_answer_length
        self.n_best = n_best

    def model_class(self) -> type:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def _stride(self, max_length: int) -> int:
        """The configured stride, shrunk for short windows so it stays below the window."""
        return min(self.doc_stride, max_length // 2)

    def train_dataset(self, tokenizer: Any, max_length: int | None = None) -> FeatureDataset:
        length = max_length or self.max_length
        return qa_features(self.train_examples, tokenizer, length, self._stride(length), train=True)

    def eval_dataset(self, tokenizer: Any, max_length: int | None = None) -> FeatureDataset:
        length = max_length or self.max_length
        return qa_features(self.eval_examples, tokenizer, length, self._stride(length), train=False)

    def predict(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        batch_size: int = 64,
        max_length: int | None = None,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> list[str]:
        """The predicted answer text for every evaluation example."""
        features = self.eval_dataset(tokenizer, max_length)
        outputs = run_batches(model, features, self.collate(tokenizer), batch_size, device, progress, self.eval_step)
        return self.answers(features, outputs)

    def answers(self, features: FeatureDataset, outputs: list[dict[str, torch.Tensor]]) -> list[str]:
        """The answer text of every evaluation example from its windows' start and end logits."""
        starts = [row for o in outputs for row in o["start_logits"]]
        ends = [row for o in outputs for row in o["end_logits"]]
        return postprocess(self.eval_examples, features, starts, ends, self.n_best, self.max_answer_length)

    def score(self, dataset: FeatureDataset, outputs: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """SQuAD ``f1`` and ``exact_match`` of the predicted answers on the evaluation examples.

        Example:
            >>> task.evaluate(model, tokenizer, progress=False)     # doctest: +SKIP
            {'f1': 0.87, 'exact_match': 0.79}
        """
        scores = squad_scores(self.answers(dataset, outputs), [e.answers for e in self.eval_examples])
        return {"f1": scores["f1"], "exact_match": scores["exact_match"]}

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"doc_stride": self.doc_stride, "max_answer_length": self.max_answer_length}
