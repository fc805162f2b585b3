"""The frontier's latency-planned shapes: planned once per task, target and residual cut, shared by every method
and every seed.

Why: a point "at 8x" must *measure* 8x on the benchmark host, and FLOPs plans measure 6-29% short of their target
there (benchmarks/results/latency_targets.md). A point declared with ``speed_model="measured"`` is planned with
``blockprune.deploy.plan.measured_plan``: ``struct``'s shape on this machine's latency table (batch 32 x the task's
length, 2 threads, cached in benchmarks/cache/latency), then timed and corrected until it measures within 5%. The
sparsities it chose are pinned in ``<runs>/plans/`` the first time a run needs them, so blockprune, Torch-Pruning
and magnitude train to the *same* shapes on every seed, and a run resumed another day keeps them. The harness
plans right before that first run, when nothing else of its own loads the cores; the timing pass still measures
every finished model afterwards, and that is the number the tables use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from frontier_spec import Point

BENCH = Path(__file__).resolve().parent
LATENCY_CACHE = BENCH / "cache" / "latency"
THREADS, BATCH = 2, 32


def plan_file(runs: Path, point: Point) -> Path:
    cut = point.settings.get("hidden_sparsity", 0.0)
    return runs / "plans" / f"struct-{point.target}-hidden{cut}.json"


def read_plan(runs: Path, point: Point) -> dict[str, Any] | None:
    """The pinned plan of a measured point (``error`` where its target cannot be planned), or None if not made."""
    path = plan_file(runs, point)
    return json.loads(path.read_text()) if path.is_file() else None


def pinned_plan(runs: Path, point: Point, teacher: Path, max_length: int) -> dict[str, Any]:
    """The point's pinned plan, made now (on this machine, which should be quiet) when the folder has none.

    Keys: ``sparsity``, ``attention_sparsity`` (what every method trains to), ``heads``, ``ffn``, ``hidden``,
    ``predicted`` (the table), ``fitted`` and ``met`` (the fit's timing), ``setting``; or ``error``."""
    from blockprune.atomic import write_text
    from blockprune.deploy.latency_model import Setting
    from blockprune.deploy.plan import PlanError, measured_plan

    pinned = read_plan(runs, point)
    if pinned is not None:
        from blockprune.deploy.devices import machine

        host, planned_on = machine()["cpu"], (pinned.get("setting") or {}).get("device_name")
        if planned_on and planned_on != host:  # fair still (every method trains to it), but not aimed at this CPU
            print(f"[frontier] note: {plan_file(runs, point).name} was planned on {planned_on}, this is {host}; "
                  "the timing pass measures what the shape gives here", flush=True)
        return pinned
    if point.speed_model != "measured":
        raise ValueError(f"{point.name} is planned in FLOPs, not on measured latency")
    setting = Setting(threads=THREADS, batch_size=BATCH, seq_len=max_length)
    print(f"[frontier] planning {point.name}'s shape on measured latency (this machine, {THREADS} threads, "
          f"batch {BATCH} x {max_length}); pinned in {plan_file(runs, point)}", flush=True)
    try:
        config, plan = measured_plan(str(teacher), "struct", point.target, dict(point.settings), 16, setting,
                                     latency_cache=LATENCY_CACHE)
    except PlanError as err:
        out: dict[str, Any] = {"error": str(err)}
    else:
        fit = plan.get("latency_fit") or {}
        out = {"sparsity": config.sparsity, "attention_sparsity": config.attention_sparsity,
               "heads": plan["heads"][0], "ffn": plan["ffn"][0], "hidden": (plan.get("hidden") or {}).get("after"),
               "predicted": plan["predicted_speedup"], "fitted": fit.get("measured_speedup"), "met": fit.get("met"),
               "fit_steps": fit.get("steps"), "setting": plan["latency_table"]}
    write_text(plan_file(runs, point), json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def sparsities(planned: dict[str, Any] | None) -> dict[str, float]:
    """The ``--set`` fields a pinned plan adds to a point's settings (none for a FLOPs point)."""
    return {"attention_sparsity": planned["attention_sparsity"]} if planned else {}
