"""SQuAD v1 metrics: exact match and token-overlap F1 after the official answer normalization.

An answer is normalized by lowercasing, removing ASCII punctuation, removing the articles *a*, *an* and *the*,
and collapsing whitespace. Each prediction is scored against every gold answer and keeps the best score;
the dataset score is the mean over questions, as a fraction in [0, 1] (the official script prints x100).

Example:
    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    >>> exact_match("an apple", ["Apple"]), round(f1("red apple pie", ["the apple"]), 3)
    (1.0, 0.5)
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop articles, collapse whitespace (the official SQuAD order)."""
    text = text.lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _f1_one(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred_tokens)
    recall = common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals any normalized gold answer, else 0.0."""
    return max((float(normalize_answer(prediction) == normalize_answer(g)) for g in golds), default=0.0)


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Best token-overlap F1 of the prediction over the gold answers."""
    return max((_f1_one(prediction, g) for g in golds), default=0.0)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean ``exact_match`` and ``f1`` over questions, each in [0, 1].

    Example:
        >>> squad_scores(["Paris", "blue sky"], [["paris"], ["the sky"]])
        {'exact_match': 0.5, 'f1': 0.8333333333333333}
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions; give one per question.")
    n = max(len(golds), 1)
    return {
        "exact_match": sum(exact_match(p, g) for p, g in zip(predictions, golds, strict=True)) / n,
        "f1": sum(f1(p, g) for p, g in zip(predictions, golds, strict=True)) / n,
    }
