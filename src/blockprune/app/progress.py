"""Where a long run is: one line per stage on stderr, with the time so far and a rough estimate of the rest.

::

    stage 2/6 prune ...
    stage 2/6 prune done in 312.4 s (elapsed 6:40, about 2:55 left)
    stage 3/6 shrink already done (skipped)

The estimate is deliberately simple. Every stage has an expected *cost* in "training-example steps" (given
by the pipeline's stage table: about epochs × training examples for a training stage, a third of that per
example for a forward-only pass such as evaluation or benchmarking). The seconds per unit of cost are read
off the stages this process actually ran (skipped stages tell nothing), and the stages still to come are
assumed to go at that rate. Model loading, tokenisation and other fixed costs are not modelled, so on tiny
runs the estimate is poor; on real runs training dominates, but the prune stage's extra cost per step
(teacher forward, scores) is a guess too. Hence "about": a guide, not a promise.

Example:
    >>> clock = StageClock([("teacher", 100.0), ("prune", 150.0)], enabled=True)   # doctest: +SKIP
    >>> clock.start("teacher"); clock.done("teacher", 12.3)                         # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

__all__ = ["StageClock", "clock_time"]


def clock_time(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss`` from one hour on)."""
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class StageClock:
    """Prints the stage lines for a run whose stages (``(name, expected cost)``, in order) are ``plan``.

    Args:
        plan: every stage this run will execute, in order, with its expected relative cost (>= 0).
        enabled: print at all (``--no-progress`` turns it off).
        stream: where to print (default: ``sys.stderr`` at the time of printing).
    """

    def __init__(self, plan: Sequence[tuple[str, float]], enabled: bool = True, stream: TextIO | None = None) -> None:
        self.names = [name for name, _ in plan]
        self.costs = dict(plan)
        self.enabled = enabled
        self.stream = stream
        self.began = time.perf_counter()
        self.ran_seconds = 0.0
        self.ran_cost = 0.0

    def _label(self, name: str) -> str:
        k = self.names.index(name) + 1 if name in self.names else "?"
        return f"stage {k}/{len(self.names)} {name}"

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream or sys.stderr, flush=True)

    def start(self, name: str) -> None:
        """A stage begins."""
        self._print(f"{self._label(name)} ...")

    def skipped(self, name: str) -> None:
        """A stage is already done (its ``done.json`` exists) and is not run again."""
        self._print(f"{self._label(name)} already done (skipped)")

    def remaining(self, name: str) -> float | None:
        """Estimated seconds for the stages after ``name``, at the rate of the stages run so far (None: unknown)."""
        later = self.names[self.names.index(name) + 1:] if name in self.names else []
        cost = sum(self.costs[n] for n in later)
        if not later or self.ran_cost <= 0 or self.ran_seconds <= 0:
            return None
        return self.ran_seconds / self.ran_cost * cost

    def done(self, name: str, seconds: float) -> None:
        """A stage finished after ``seconds``."""
        self.ran_seconds += seconds
        self.ran_cost += self.costs.get(name, 0.0)
        left = self.remaining(name)
        rest = f", about {clock_time(left)} left" if left is not None else ""
        elapsed = clock_time(time.perf_counter() - self.began)
        self._print(f"{self._label(name)} done in {seconds:.1f} s (elapsed {elapsed}{rest})")
