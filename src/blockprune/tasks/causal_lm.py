"""Causal language modelling: plain text grouped into fixed-length blocks, scored by perplexity.

Documents come from a ``.txt`` file (one document per non-blank line, as the Hugging Face ``text`` loader
reads it) or from the text column of a ``.csv``/``.tsv``/``.json``/``.jsonl``/``.parquet`` file or of a
dataset split. Each document is tokenized without special tokens, the documents are joined with the
tokenizer's end-of-sequence token (when it has one) and the token stream is cut into blocks of ``max_length``
tokens. Training drops the short tail block (unless it is the only one), so every training batch is full;
evaluation keeps it so that every token is scored.
Targets are the inputs themselves: the model shifts them by one position.

Perplexity is ``exp`` of the mean next-token cross-entropy over all scored tokens, so *lower is better*
(``CausalLMTask.higher_is_better`` is ``False``).

Example:
    >>> task = load_task("causal-lm", train_file="train.txt", validation_file="valid.txt")   # doctest: +SKIP
    >>> task.evaluate(model, tokenizer, progress=False)                                      # doctest: +SKIP
    {'perplexity': 31.7, 'loss': 3.456, 'tokens': 20480.0}
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from blockprune.tasks.base import DataError, FeatureDataset, Task
from blockprune.tasks.records import Record, check_not_missing, read_records, read_text, require_columns

METRICS = ("perplexity",)
DEFAULT_MAX_LENGTH = 128
TEXT_SUFFIXES = (".txt", ".text")
RECORD_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
IGNORE_INDEX = -100


def read_documents(path: str | os.PathLike[str], text_column: str = "text") -> list[str]:
    """Read the documents of a ``.txt`` file (non-blank lines) or of a record file's ``text_column``.

    Raises:
        DataError: missing or empty file, unknown extension, missing column or empty texts (rows named).

    Example:
        >>> read_documents("train.txt")[:2]        # doctest: +SKIP
        ['The first paragraph.', 'The second one.']
    """
    path = Path(path)
    if path.suffix.lower() in TEXT_SUFFIXES:
        if not path.is_file():
            raise DataError(f"Text file not found: {path}. Check the path (train_file / validation_file).")
        text = read_text(path, f"Text file {path} holds no text; give a file with at least one non-blank line.")
        return [line.strip() for line in text.splitlines() if line.strip()]
    if path.suffix.lower() not in RECORD_SUFFIXES and not path.is_dir():  # a folder: a Dataset.save_to_disk table
        raise DataError(
            f"Unsupported text file type {path.suffix!r} for {path}; use .txt (one document per line) or "
            ".csv/.tsv/.json/.jsonl/.parquet with a text column."
        )
    return documents_from_records(read_records(path), text_column, str(path))


def documents_from_records(records: list[Record], text_column: str, where: str) -> list[str]:
    """The ``text_column`` of every record, after checking the column exists and no text is empty."""
    if not records:
        raise DataError(f"{where} holds no documents; give at least one.")
    require_columns(records, {"text_column": text_column}, where)
    check_not_missing(records, text_column, where)
    return [str(r[text_column]) for r in records]


def group_blocks(token_lists: Sequence[Sequence[int]], block_size: int, separator: int | None,
                 keep_tail: bool) -> list[list[int]]:
    """Join token lists (``separator`` between them) and cut the stream into blocks of ``block_size``.

    The short tail block is kept when ``keep_tail`` is true or when it is the only block; a tail of fewer
    than 2 tokens is always dropped (it has no next token to predict).

    Example:
        >>> group_blocks([[1, 2, 3], [4, 5]], block_size=2, separator=0, keep_tail=True)
        [[1, 2], [3, 0], [4, 5]]
        >>> group_blocks([[1, 2, 3], [4, 5]], block_size=4, separator=None, keep_tail=False)
        [[1, 2, 3, 4]]
    """
    if block_size < 2:
        raise DataError(f"max_length={block_size} is too short for language modelling; use at least 2 tokens.")
    stream: list[int] = []
    for i, tokens in enumerate(token_lists):
        if i and separator is not None:
            stream.append(separator)
        stream.extend(tokens)
    full = len(stream) // block_size * block_size
    blocks = [stream[i : i + block_size] for i in range(0, full, block_size)]
    tail = stream[full:]
    if len(tail) >= 2 and (keep_tail or not blocks):
        blocks.append(tail)
    return blocks


class CausalLMCollator:
    """Right-pads ``input_ids`` (with ``pad_id``), ``attention_mask`` (0) and ``labels`` (-100, ignored).

    Example:
        >>> batch = CausalLMCollator(pad_id=0)([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9]}])
        >>> batch["labels"].tolist()
        [[5, 6, 7], [8, 9, -100]]
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)

        def padded(values: Sequence[int], fill: int) -> list[int]:
            return list(values) + [fill] * (width - len(values))

        return {
            "input_ids": torch.tensor([padded(f["input_ids"], self.pad_id) for f in features]),
            "attention_mask": torch.tensor([padded([1] * len(f["input_ids"]), 0) for f in features]),
            "labels": torch.tensor([padded(f.get("labels", f["input_ids"]), IGNORE_INDEX) for f in features]),
        }


def pad_id_of(tokenizer: Any) -> int:
    """The tokenizer's pad token id, else its end-of-sequence id, else 0 (padded positions are masked anyway)."""
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy of a batch and the number of scored tokens (labels != -100)."""
    shifted = logits[:, :-1].float()
    targets = labels[:, 1:]
    total = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return float(total), int((targets != IGNORE_INDEX).sum())


class CausalLMTask(Task):
    """Next-token prediction on documents; primary metric ``perplexity`` (lower is better).

    ``train_examples`` / ``eval_examples`` are documents (strings), so ``max_train_samples`` counts
    documents; blocks are built from them by :meth:`train_dataset` / :meth:`eval_dataset`.
    Build it with :func:`blockprune.tasks.load_task` (``task="causal-lm"``).

    Example:
        >>> task = CausalLMTask(["a b c d"], ["a b"], max_length=4)
        >>> task.higher_is_better
        False
    """

    name = "causal-lm"
    metrics = METRICS
    higher_is_better = False
    max_length = DEFAULT_MAX_LENGTH

    def model_class(self) -> type:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def blocks(self, documents: Sequence[str], tokenizer: Any, max_length: int | None, keep_tail: bool,
               split: str) -> FeatureDataset:
        """Tokenize ``documents`` and group them into features ``{"input_ids", "attention_mask", "labels"}``."""
        length = max_length or self.max_length
        encoded = tokenizer(list(documents), add_special_tokens=False, verbose=False)["input_ids"]
        blocks = group_blocks(encoded, length, getattr(tokenizer, "eos_token_id", None), keep_tail)
        if not blocks:
            raise DataError(
                f"The {split} text has fewer than 2 tokens after tokenization; a language model needs more text."
            )
        return FeatureDataset([{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)} for b in blocks])

    def train_dataset(self, tokenizer: Any, max_length: int | None = None) -> FeatureDataset:
        return self.blocks(self.train_examples, tokenizer, max_length, keep_tail=False, split="training")

    def eval_dataset(self, tokenizer: Any, max_length: int | None = None) -> FeatureDataset:
        return self.blocks(self.eval_examples, tokenizer, max_length, keep_tail=True, split="evaluation")

    def collate(self, tokenizer: Any) -> CausalLMCollator:
        return CausalLMCollator(pad_id_of(tokenizer))

    def eval_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        """Summed token cross-entropy of one batch and its scored-token count; the logits are not kept."""
        labels = batch.pop("labels")
        return token_nll(model(**batch).logits, labels)

    def score(self, dataset: FeatureDataset, outputs: list[tuple[float, int]]) -> dict[str, float]:
        """Perplexity, mean token cross-entropy (``loss``) and the number of scored ``tokens``.

        Logits are reduced batch by batch by :meth:`eval_step` (never kept: they are ``batch x length x
        vocabulary``).

        Example:
            >>> task.evaluate(model, tokenizer, progress=False)     # doctest: +SKIP
            {'perplexity': 31.7, 'loss': 3.456, 'tokens': 20480.0}
        """
        total = sum(nll for nll, _ in outputs)
        count = sum(n for _, n in outputs)
        loss = total / max(count, 1)
        return {"perplexity": math.exp(min(loss, 700.0)), "loss": loss, "tokens": float(count)}
