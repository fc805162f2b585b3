"""How sure a difference of test accuracy is: a paired bootstrap over the test set's movies and the seeds.

The seed spread alone misses half of the noise: every point is scored on the same 1,294 test reviews, and
reviews of one movie are not independent (a hard movie costs every model several of its reviews). So a gap
larger than the seeds' spread can still be an accident of which movies the test side drew. Each bootstrap
draw resamples the test *movies* with replacement (the same draw for both points: the comparison is paired)
and each point's seeds with replacement, then takes the difference of the two mean accuracies. The 2.5th and
97.5th percentiles of the draws bound the difference; where the interval holds 0 the data cannot tell the two
apart.

Example:
    >>> a = ["1101", "1111"]; b = ["0101", "0111"]
    >>> result = paired_bootstrap(a, b, ["m1", "m1", "m2", "m2"], draws=2000)
    >>> round(result["diff"], 1), result["low"] > 0
    (25.0, True)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

DRAWS = 10_000


def correct_string(predictions: Sequence[int], labels: Sequence[int]) -> str:
    """Per-example correctness as a string of 0/1 (compact in JSON: 1,294 characters for the test split)."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    return "".join("1" if p == y else "0" for p, y in zip(predictions, labels, strict=True))


def per_cluster(runs: Sequence[str], clusters: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Correct answers per (run, cluster) and examples per cluster."""
    names = {c: i for i, c in enumerate(dict.fromkeys(clusters))}
    index = np.fromiter((names[c] for c in clusters), dtype=np.int64, count=len(clusters))
    sizes = np.bincount(index, minlength=len(names)).astype(np.float64)
    correct = np.zeros((len(runs), len(names)))
    for row, run in enumerate(runs):
        if len(run) != len(clusters):
            raise ValueError(f"a run scored {len(run)} examples; the test split has {len(clusters)}")
        np.add.at(correct[row], index, np.frombuffer(run.encode(), dtype=np.uint8) - ord("0"))
    return correct, sizes


def paired_bootstrap(a: Sequence[str], b: Sequence[str], clusters: Sequence[str], draws: int = DRAWS,
                     seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Mean test accuracy of ``a``'s runs minus ``b``'s, in points, with a bootstrap interval at ``level``.

    ``a`` and ``b``: one correctness string per seed (:func:`correct_string`), on the same examples, whose
    clusters (movies) are ``clusters``. Returns ``diff`` (the observed difference), ``low`` and ``high`` (the
    interval), ``p_below_zero`` (the fraction of draws where ``a`` is not ahead) and ``draws``.
    """
    if not a or not b:
        raise ValueError("each side needs at least one run")
    correct_a, sizes = per_cluster(a, clusters)
    correct_b, _ = per_cluster(b, clusters)
    rng = np.random.default_rng(seed)
    k = len(sizes)
    weights = rng.multinomial(k, np.full(k, 1.0 / k), size=draws).astype(np.float64)  # movies drawn, per draw
    pick_a = rng.integers(0, len(a), size=(draws, len(a)))
    pick_b = rng.integers(0, len(b), size=(draws, len(b)))
    mean_a = correct_a[pick_a].mean(axis=1)  # draws × movies: the drawn seeds' mean correct answers per movie
    mean_b = correct_b[pick_b].mean(axis=1)
    diff = ((mean_a - mean_b) * weights).sum(axis=1) / (weights @ sizes) * 100
    observed = (correct_a.mean(axis=0) - correct_b.mean(axis=0)).sum() / sizes.sum() * 100
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diff, [tail, 100 - tail])
    return {"diff": float(observed), "low": float(low), "high": float(high),
            "p_below_zero": float((diff <= 0).mean()), "draws": draws, "level": level}


def excludes_zero(result: dict[str, Any]) -> bool:
    """Whether the interval of :func:`paired_bootstrap` lies on one side of 0."""
    return result["low"] > 0 or result["high"] < 0


def describe(result: dict[str, Any]) -> str:
    """One phrase for a report: the interval and whether it excludes 0."""
    interval = f"{result['level']:.0%} CI [{result['low']:+.2f}, {result['high']:+.2f}]"
    return (f"paired bootstrap over test movies and seeds: {interval}, "
            f"{'excludes 0' if excludes_zero(result) else 'holds 0'}")


@functools.cache
def test_movies() -> tuple[str, ...]:
    """The movie of every example of the embedded test split, in the order the test task scores them (read once)."""
    from blockprune.tasks.embedded import rotten_tomatoes_split

    return tuple(row["movie"] for row in rotten_tomatoes_split().test)
