"""The frontier's verdicts: rows summarized over seeds, the claims a gap supports, and the goals, chosen by attributes.

Why here: the rules are the protocol (dev chooses, test reports, a claim needs a gap beyond the seeds' spread and a
paired bootstrap interval that excludes 0) and hold for every task and edition; what differs between editions is
data (:class:`GoalRules`). Goals pick their points by the attributes each row takes from its declared point
(method, preset, target, kind, layers), never by the shape of a name.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import frontier_stats as fs
from frontier_spec import TASKS, Point

ATTRIBUTES = ("method", "preset", "target", "kind", "layers", "variant", "task", "label")


@dataclass(frozen=True)
class GoalRules:
    """What an edition's goals check."""

    targets: tuple[float, ...]  # speed goals, in the order they are reported
    thresholds: dict[float, tuple[float, float]] = field(default_factory=dict)  # target: (max points below the
    # reference, min points above the layer drop at that target); a target without one is compared, not judged
    hybrid: tuple[float, float] | None = None  # issue 12: hybrid-filled at ≥ this measured speed, ≥ −this points
    measured_presets: tuple[str, ...] = ("hybrid-filled",)  # compete at every goal their measured speed meets
    speed_tolerance: float = 0.0  # a point measuring this share below a target still meets it (timing noise)
    baselines: tuple[str, ...] = ("magnitude-oneshot", "magnitude-gradual", "torch-pruning", "small-pretrained")

    def meets(self, b32: float | None, target: float) -> bool:
        return bool(b32) and b32 >= target * (1.0 - self.speed_tolerance)


def with_point(row: dict[str, Any], point: Point | None) -> dict[str, Any]:
    """A row (or record) with its declared point's attributes (the table's words win over the record's)."""
    if point is None:
        return row
    return row | {a: getattr(point, a) for a in ATTRIBUTES}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict[str, Any]], table: dict[str, Point] | None = None) -> list[dict[str, Any]]:
    """One row per point: test accuracy mean ± std over seeds, speedups (one shape per point when uniform), and
    the point's declared attributes (``table``: name → Point; without it the records' own keys)."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in records):
        rs = [r for r in records if r["name"] == name]
        acc, std = mean_std([r["metric"] * 100 for r in rs])
        speed = [r["speedup_measured_b32"] for r in rs if r["speedup_measured_b32"]]
        row = {"name": name, "label": rs[0]["label"], "method": rs[0]["method"], "seeds": len(rs),
               "preset": rs[0].get("preset", ""), "target": rs[0].get("target"), "kind": rs[0].get("target_kind"),
               "task": rs[0].get("task", "rotten-tomatoes"),
               "acc": acc, "std": std, "delta_ref": acc - rs[0]["reference_metric"] * 100,
               "delta_control": acc - rs[0]["control_metric"] * 100 if rs[0]["control_metric"] else None,
               "b32": statistics.median(speed) if speed else None,
               "iqr": statistics.median([r["speedup_iqr_b32"] for r in rs if r["speedup_iqr_b32"]] or [0]),
               "b1": statistics.median([r["speedup_measured_b1"] for r in rs if r["speedup_measured_b1"]] or [0]),
               "testset": statistics.median(
                   [r["speedup_measured_testset"] for r in rs if r["speedup_measured_testset"]] or [0]),
               "theoretical": rs[0]["speedup_theoretical"],
               "dev": statistics.fmean(r["dev_metric"] * 100 for r in rs),
               "per_seed": ", ".join(f"{r['metric'] * 100:.2f}" for r in rs),
               "correct": [r["test_correct"] for r in rs] if all(r.get("test_correct") for r in rs) else None,
               "min_efficiency": min((r["efficiency_b32"] for r in rs if r["efficiency_b32"]), default=None)}
        rows.append(with_point(row, (table or {}).get(name)))
    return rows


def pick(rows: Iterable[dict[str, Any]], **attributes: Any) -> list[dict[str, Any]]:
    """The rows whose attributes equal the given ones (a tuple value: any of them)."""
    def match(row: dict[str, Any]) -> bool:
        return all(row.get(k) in v if isinstance(v, tuple) else row.get(k) == v for k, v in attributes.items())

    return [r for r in rows if match(r)]


def reached(misses: list[str], sep: str = ", ") -> str:
    """A goal's verdict from what it missed: ``reached``, or ``NOT reached (<each miss>)``."""
    return f"NOT reached ({sep.join(misses)})" if misses else "reached"


def clusters_of(row: dict[str, Any]) -> tuple[str, ...] | None:
    """What the bootstrap resamples for a row's task: the embedded split's movies, or each example on its own."""
    spec = TASKS.get(row.get("task") or "rotten-tomatoes")
    if spec is None or spec.clusters == "movies":
        return fs.test_movies()
    return tuple(str(i) for i in range(len(row["correct"][0]))) if row.get("correct") else None


_BOOTSTRAPS: dict[tuple[str, str], dict[str, Any] | None] = {}


def bootstrap(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any] | None:
    """The paired bootstrap of two summarized rows (None unless both kept every seed's per-example answers)."""
    if not a.get("correct") or not b.get("correct"):
        return None
    key = ("|".join(a["correct"]), "|".join(b["correct"]))
    if key not in _BOOTSTRAPS:
        clusters = clusters_of(a)
        same = clusters is not None and all(len(c) == len(clusters) for c in (*a["correct"], *b["correct"]))
        _BOOTSTRAPS[key] = fs.paired_bootstrap(a["correct"], b["correct"], clusters) if same else None
    return _BOOTSTRAPS[key]


def verdict(a: dict[str, Any], b: dict[str, Any], gap: float) -> str:
    """Whether ``gap`` is a claim: larger than the two rows' seed spread and, where both rows kept their per-example
    answers, with a paired bootstrap interval that excludes 0 (frontier_stats.py). No claim on a single seed."""
    if min(a["seeds"], b["seeds"]) < 2:
        return "single seed on one side: no spread, no claim"
    spread = a["std"] + b["std"]
    boot = bootstrap(a, b)
    seeds = (f"larger than the seed spread ({spread:.2f})" if abs(gap) > spread
             else f"within noise (gap ≤ sum of the two stds, {spread:.2f})")
    if boot is None:  # records carried without their per-example answers: the seed spread alone decides
        return seeds
    if abs(gap) > spread and not fs.excludes_zero(boot):
        return f"within noise: {seeds}, but the {fs.describe(boot)}"
    return f"{seeds}; {fs.describe(boot)}"


def is_claim(a: dict[str, Any], b: dict[str, Any], gap: float) -> bool:
    """Whether :func:`verdict` makes a claim of ``gap``."""
    boot = bootstrap(a, b)
    return (min(a["seeds"], b["seeds"]) >= 2 and abs(gap) > a["std"] + b["std"]
            and (boot is None or fs.excludes_zero(boot)))


def compare(rows: list[dict[str, Any]], a: str, b: str) -> str:
    """``a`` vs ``b`` in points, saying whether the gap is larger than the spread of the seeds."""
    ra, rb = next((r for r in rows if r["name"] == a), None), next((r for r in rows if r["name"] == b), None)
    if ra is None or rb is None:
        return f"{a} vs {b}: not run yet"
    gap = ra["acc"] - rb["acc"]
    return f"{a} {ra['acc']:.2f} vs {b} {rb['acc']:.2f}: {gap:+.2f} points, {verdict(ra, rb, gap)}"


def goal_candidates(rows: Iterable[dict[str, Any]], target: float, rules: GoalRules) -> list[dict[str, Any]]:
    """The blockprune points a speed goal chooses from (by dev): those planned at ``target``, and every point of a
    ``measured_presets`` preset with ≥3 seeds whose measured b32 speedup is ≥ ``target`` and below the next goal's
    (the goals are set in measured speed: a hybrid-filled run planned at 2.2x that measures 2.27x competes at 2x)."""
    rows = list(rows)
    planned = [r for r in pick(rows, method="blockprune", kind="speedup", target=target)
               if r["preset"] not in rules.measured_presets]
    ceiling = min((t for t in rules.targets if t > target), default=float("inf"))
    measured = [r for r in pick(rows, method="blockprune", kind="speedup", preset=rules.measured_presets)
                if r["seeds"] >= 3 and rules.meets(r["b32"], target) and not rules.meets(r["b32"], ceiling)]
    return list({r["name"]: r for r in planned + measured}.values())


def goals(rows: list[dict[str, Any]], rules: GoalRules, reference: dict[str, Any] | None = None) -> list[str]:
    """The goals, each said reached or not and by how much; where a target has no threshold, the best point's Δ
    and its comparisons. ``reference``: ``{"correct": [its answers]}`` for the interval of each Δ."""
    reference = reference or {}
    out = []
    for target in rules.targets:
        candidates = goal_candidates(rows, target, rules)
        if not candidates:
            continue
        # dev chooses among the points that measure the target; only where none does, among all of them
        fast_enough = [r for r in candidates if rules.meets(r["b32"], target)]
        best = max(fast_enough or candidates, key=lambda r: r["dev"])
        drop = next(iter(pick(rows, method="layer-drop", target=target)), None)
        if not best["b32"]:
            out.append(f"{target:g}x: {best['name']} not timed yet")
        else:
            out.append(best_line(best, target, fast_enough, drop, rules.thresholds.get(target), reference))
        for other in pick(rows, method=rules.baselines, target=target, kind=("speedup", "model")):
            gap = best["acc"] - other["acc"]
            out.append(f"{target:g}x: {best['name']} vs {other['name']}: {gap:+.2f} ({verdict(best, other, gap)})")
    if rules.hybrid:
        out += hybrid_goal(pick(rows, method="blockprune", preset="hybrid-filled"), *rules.hybrid)
    for who, methods in (("shrunk by blockprune", ("blockprune", "magnitude-oneshot", "magnitude-gradual")),
                         ("shrunk by torch-pruning (the peer's own output, for comparison)", ("torch-pruning",))):
        shrunk = [r for r in rows if r["min_efficiency"] is not None and r["method"] in methods]
        if shrunk:
            worst = min(shrunk, key=lambda r: r["min_efficiency"])
            out.append(f"measured/theoretical (b32×s128) of every model {who} ≥ 0.9: lowest "
                       f"{worst['min_efficiency']:.2f} ({worst['name']}): "
                       f"{'reached' if worst['min_efficiency'] >= 0.9 else 'NOT reached'}")
    return out


def best_line(best: dict[str, Any], target: float, fast_enough: list[dict[str, Any]], drop: dict[str, Any] | None,
              threshold: tuple[float, float] | None, reference: dict[str, Any]) -> str:
    """The best point at a target against the reference and the layer drop there (judged where a threshold is)."""
    within, above = threshold or (None, None)
    gap_ref = best["delta_ref"]
    ref_misses = ([f"by {-within - gap_ref:.2f}"] if within is not None and gap_ref < -within else []) + (
        [] if fast_enough else ["slower than the target"])
    goal = f": {reached(ref_misses)} (goal ≥ −{within} at ≥ {target:g}x measured)" if threshold else ""
    text = (f"{target:g}x: best blockprune point by dev = {best['name']} ({best['acc']:.2f} ± {best['std']:.2f}, "
            f"{best['b32']:.2f}x measured{'' if fast_enough else f', below {target:g}x'}) — "
            f"{gap_ref:+.2f} vs the reference{goal}")
    boot = bootstrap(best, reference)
    text += f" ({fs.describe(boot)})" if boot else ""
    if drop is not None:
        gap = best["acc"] - drop["acc"]
        noise = "" if is_claim(best, drop, gap) else ", within noise"
        fast = bool(drop["b32"]) and best["b32"] >= drop["b32"] - drop["iqr"] / 2
        speed = (f"at {'the same or higher' if fast else 'LOWER'} "
                 f"speed ({best['b32']:.2f}x vs {drop['b32']:.2f}x)") if drop["b32"] else "(not timed)"
        if threshold:
            misses = ([f"by {above - gap:.2f}"] if gap < above else []) + ([] if fast else ["slower"])
            text += (f"; vs {drop['name']} {gap:+.2f} {speed}: {reached(misses)} "
                     f"(goal ≥ +{above} at the same or higher speed{noise})")
        else:
            text += f"; vs {drop['name']} {gap:+.2f} {speed} ({verdict(best, drop, gap)})"
    return text


def hybrid_goal(rows: list[dict[str, Any]], target: float, within: float) -> list[str]:
    """Issue 12's hybrid goal: each timed hybrid-filled point at ≥ ``target`` measured, ≥ −``within`` points."""
    out = []
    for hybrid in rows:
        if not hybrid["b32"]:
            continue
        misses = [f"{max(target - hybrid['b32'], 0.01):.2f}x too slow"] if hybrid["b32"] < target else []
        misses += [f"{-within - hybrid['delta_ref']:.2f} points short"] if hybrid["delta_ref"] < -within else []
        out.append(f"{hybrid['name']}: {hybrid['acc']:.2f} ± {hybrid['std']:.2f} at {hybrid['b32']:.2f}x measured, "
                   f"{hybrid['delta_ref']:+.2f} vs the reference: {reached(misses, '; ')} "
                   f"(goal ≥ {target}x and ≥ −{within})")
    return out
