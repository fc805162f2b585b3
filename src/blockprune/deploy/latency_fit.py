"""Closing the loop on a measured-latency target: time the shape the table planned, correct the table, step.

The latency table (:mod:`blockprune.deploy.latency_model`) predicts a shape from per-layer probes, and for the small
shapes of 4x-8x it errs both ways by 10-40% on a 2-core Xeon (``benchmarks/results/latency_targets.md``): the probes
miss what a whole small model pays. A speedup target is a promise about *measured* speed, so :func:`fit_budget`
times the planned model itself (random weights, the table's setting, the dense model timed alternately in the same
process), takes measured over predicted as a local correction of the table, and plans again with it. It keeps the
head count and moves the FFN width (``ffn_multiple`` neurons a step, a fine knob); it changes the heads by one only
when no FFN width at this head count can land within the tolerance. Each step costs one timing of two models
(seconds at batch 32 on a CPU). Where timing noise sends the step back to a shape already timed, it bisects the FFN
widths that bracket the target.

Of the shapes timed, the fit keeps one within the tolerance, preferring one that meets the target, then the one
keeping the most parameters; if none is within it, the slowest that meets the target, else the fastest. The timer
is a callable ``(heads, ffn, width) -> measured speedup``, so tests give a fake whose error against the table is
known.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from blockprune.deploy.latency_model import LatencyModelError, even_ffn, ffn_steps, predicted_speedup, shape_budget

ShapeTimer = Callable[[int, int, int], float]
"""Times the model with ``heads`` heads and ``ffn`` neurons in every layer at residual ``width``; returns its
measured speedup over the dense model."""

TOLERANCE = 0.05
MAX_STEPS = 6


def _predicted(table: dict[str, Any], heads: int, ffn: int, width: int) -> float:
    layers = table["key"]["dims"]["layers"]
    return predicted_speedup(table, {"heads": [heads] * layers, "ffn": [ffn] * layers, "hidden": width})


def _widest(table: dict[str, Any], heads: int, aim: float, width: int, multiple: int) -> int | None:
    """The widest FFN at ``heads`` whose predicted speedup reaches ``aim`` (None: not even an empty FFN does)."""
    fits = [f for f in ffn_steps(table["key"]["dims"]["ffn"], multiple) if _predicted(table, heads, f, width) >= aim]
    return max(fits) if fits else None


def next_shape(table: dict[str, Any], target: float, heads: int, correction: float, width: int, *,
               ffn_multiple: int = 16, tolerance: float = TOLERANCE, min_heads: int = 1) -> tuple[int, int] | None:
    """The next shape to time: the widest FFN whose speedup, predicted by the table and divided by ``correction``
    (predicted over measured at the last shape), meets ``target``, at ``heads``; at one head fewer where not even
    an empty FFN reaches it there, at one head more where even the full FFN is faster than ``tolerance`` allows.
    None when no head count in range is left."""
    dims = table["key"]["dims"]
    step, aim = dims["head_step"], target * correction
    h = heads
    while min_heads <= h <= dims["heads"]:
        f = _widest(table, h, aim, width, ffn_multiple)
        if f is None:
            if h > heads:  # one head more is too slow at any width, one fewer too fast: the full FFN at heads
                return heads, dims["ffn"]
            h -= step
        elif f == dims["ffn"] and _predicted(table, h, f, width) / correction > target * (1 + tolerance) \
                and h + step <= dims["heads"] and h >= heads:
            h += step
        else:
            return h, f
    return None


def fastest_even(table: dict[str, Any], target: float, width: int, *, ffn_multiple: int = 16,
                 min_heads: int = 1) -> dict[str, Any]:
    """The fastest shape of the even family (the fewest heads, the FFN at their fraction): where the table says a
    target is beyond every shape, the fit starts here, since the table can be pessimistic for the smallest shapes
    too (8x on MiniLM-L6: the table's best is 7.76x, the shape measures 8.2x)."""
    dims = table["key"]["dims"]
    h = max(dims["head_step"], min_heads)
    f = even_ffn(dims, h, ffn_multiple)
    layers = dims["layers"]
    return shape_budget(table, "uniform", target, [h] * layers, [f] * layers, width)


def _between(steps: list[dict[str, Any]], target: float, heads: int, multiple: int) -> tuple[int, int] | None:
    """An untimed FFN width halfway between the two timed at ``heads`` that bracket ``target`` (the narrower one
    measured above it, the wider one below), or None: where timing noise makes the secant step jump back to a
    shape already timed, bisection still narrows the gap."""
    timed = {s["ffn"]: s["measured"] for s in steps if s["heads"] == heads}
    above = [f for f, m in timed.items() if m >= target]
    below = [f for f, m in timed.items() if m < target]
    if not above or not below or max(above) >= min(below):
        return None
    middle = multiple * round((max(above) + min(below)) / 2 / multiple)
    return (heads, middle) if middle not in timed and max(above) < middle < min(below) else None


def _choice(steps: list[dict[str, Any]], target: float, tolerance: float, params: Callable[[int, int], float]
            ) -> dict[str, Any]:
    """Within the tolerance: one that meets the target, the most parameters. Else the slowest that meets the target
    (a target is a floor), and only where none does, the closest below it."""
    inside = [s for s in steps if abs(s["measured"] / target - 1) <= tolerance]
    if inside:
        return max(inside, key=lambda s: (s["measured"] >= target, params(s["heads"], s["ffn"])))
    meeting = [s for s in steps if s["measured"] >= target]
    if meeting:
        return min(meeting, key=lambda s: s["measured"])
    return max(steps, key=lambda s: s["measured"])


def fit_budget(table: dict[str, Any], target: float, timer: ShapeTimer, start: dict[str, Any], *,
               ffn_multiple: int = 16, tolerance: float = TOLERANCE, max_steps: int = MAX_STEPS, min_heads: int = 1,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Correct the uniform budget ``start`` (one of :func:`~blockprune.deploy.latency_model.uniform_budget`) until
    the model it plans *measures* within ``tolerance`` of ``target``, at most ``max_steps`` timings.

    Returns the budget of the shape chosen (see the module's docstring) with ``fit``: ``tolerance``, ``steps``
    (``heads``, ``ffn``, ``predicted``, ``measured`` of each shape timed, in order), ``measured_speedup`` and
    ``met`` (whether it lies within the tolerance), ``best_measured`` (the fastest shape timed).

    Raises:
        LatencyModelError: a budget that is not uniform, or a bad tolerance or step count.
    """
    if not 0 < tolerance < 1 or max_steps < 1:
        raise LatencyModelError(f"tolerance {tolerance!r} must lie in (0, 1) and max_steps {max_steps!r} be >= 1")
    if len(set(start["heads"])) != 1 or len(set(start["ffn"])) != 1:
        raise LatencyModelError(f"fit_budget corrects a uniform budget; got heads {start['heads']}, ffn {start['ffn']}")
    width = start["hidden"]
    entry = next(w for w in table["widths"] if w["hidden"] == width)["params"]
    heads, ffn = start["heads"][0], start["ffn"][0]
    steps: list[dict[str, Any]] = []
    while True:
        predicted = _predicted(table, heads, ffn, width)
        measured = float(timer(heads, ffn, width))
        steps.append({"heads": heads, "ffn": ffn, "predicted": predicted, "measured": measured})
        log(f"[blockprune] latency fit: {heads} heads, {ffn} neurons a layer: predicted {predicted:.2f}x, "
            f"measured {measured:.2f}x (target {target:g}x)")
        if abs(measured / target - 1) <= tolerance or len(steps) >= max_steps:
            break
        shape = next_shape(table, target, heads, predicted / measured, width, ffn_multiple=ffn_multiple,
                           tolerance=tolerance, min_heads=min_heads)
        if shape is None or any((s["heads"], s["ffn"]) == shape for s in steps):
            shape = _between(steps, target, heads, ffn_multiple)
        if shape is None:
            break
        heads, ffn = shape
    chosen = _choice(steps, target, tolerance,
                     lambda h, f: entry["fixed"] + entry["per_head"] * h + entry["per_neuron"] * f)
    layers = table["key"]["dims"]["layers"]
    budget = shape_budget(table, "uniform", target, [chosen["heads"]] * layers, [chosen["ffn"]] * layers, width)
    return budget | {"fit": {"tolerance": tolerance, "steps": steps, "measured_speedup": chosen["measured"],
                             "met": abs(chosen["measured"] / target - 1) <= tolerance,
                             "best_measured": max(s["measured"] for s in steps)}}
