"""Latency of the frontier's models against the dense reference: one process, pinned threads, interleaved.

Run on a quiet machine, after every training. Models with identical shapes run identical dense kernels, so
each distinct shape (heads and FFN width per layer, layer count) is timed once and shared by its runs.
Three workloads: random full-length batches (b32 × s128, b1 × s128) and the test set itself at its real
lengths (batches of 32 in file order, each padded to its longest member). Each repeat times the reference
and the candidate back to back, alternating which goes first (ABBA); the speedup of a repeat is the ratio
of the pair, and the report gives the median and interquartile range over ≥30 pairs.

**One pass per table.** Re-timing a subset on another host and mixing it into a table is what flipped the 3x
verdict twice, so a timing pass (:func:`timing_pass`) times every finished run of one task in one process and
stamps every timing with the pass's id (``timing_run``) and host CPU. The report reads one pass per task
(:func:`current_pass`) and refuses records of several (:func:`one_timing_run`).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blockprune.deploy.counts import ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.measure import random_inputs
from blockprune.surgery.hidden import narrowed_width


def shape_key(model: nn.Module, quantize: str | None = None) -> str:
    """Identical for models that run the same dense kernels: heads and FFN widths per layer, ``;hidden=<width>``
    for a model whose residual was cut, ``;<quantize>`` for a quantized one."""
    width = narrowed_width(model)
    return (f"heads={heads_per_layer(model)};ffn={ffn_per_layer(model)}" + (f";hidden={width}" if width else "")
            + (f";{quantize}" if quantize else ""))


def parse_shape_key(key: str) -> tuple[list[int], list[int], str | None, int | None]:
    """The inverse of :func:`shape_key`: heads and FFN widths per layer, the quantize scheme and the cut residual
    width (None where there is none)."""
    parts = key.split(";")
    hidden = int(parts.pop(2).removeprefix("hidden=")) if len(parts) > 2 and parts[2].startswith("hidden=") else None
    fields = dict(part.split("=", 1) for part in parts[:2])
    if set(fields) != {"heads", "ffn"} or len(parts) > 3:
        raise ValueError(f"not a frontier shape key: {key!r}; expected 'heads=[..];ffn=[..]', an optional "
                         "';hidden=<width>' and an optional ';<quantize>'")
    heads, ffn = (json.loads(fields[name]) for name in ("heads", "ffn"))
    if len(heads) != len(ffn):
        raise ValueError(f"shape key {key!r} has {len(heads)} layers of heads but {len(ffn)} of FFN widths")
    return heads, ffn, parts[2] if len(parts) == 3 else None, hidden


def _forward(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return (time.perf_counter() - start) * 1000.0


def _pairs(reference: nn.Module, model: nn.Module, batches: list[dict[str, torch.Tensor]], repeats: int,
           warmup: int = 2) -> dict[str, float]:
    for _ in range(warmup):
        _forward(reference, batches)
        _forward(model, batches)
    ref_ms, model_ms = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ref_ms.append(_forward(reference, batches))
            model_ms.append(_forward(model, batches))
        else:
            model_ms.append(_forward(model, batches))
            ref_ms.append(_forward(reference, batches))
    ratios = np.asarray(ref_ms) / np.asarray(model_ms)
    q1, q3 = np.percentile(ratios, [25, 75])
    return {"reference_ms": statistics.median(ref_ms), "model_ms": statistics.median(model_ms),
            "speedup": float(np.median(ratios)), "speedup_q1": float(q1), "speedup_q3": float(q3),
            "speedup_iqr": float(q3 - q1), "repeats": repeats}


def test_set_batches(tokenizer: Any, task: Any, batch_size: int = 32, limit: int | None = None
                     ) -> list[dict[str, torch.Tensor]]:
    """The evaluation set in order, in batches padded to their longest member (what a user's traffic looks like).

    ``limit``: at most this many batches, evenly strided over the file (a test set of 7,528 documents at 128 tokens
    takes a minute a pass on 2 cores; every 8th batch still covers every part of the file).
    """
    dataset = task.eval_dataset(tokenizer)
    collate = task.collate(tokenizer)
    starts = list(range(0, len(dataset), batch_size))
    if limit and len(starts) > limit:
        starts = starts[::-(-len(starts) // limit)]
    batches = []
    for start in starts:
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        batches.append({k: v for k, v in batch.items() if k != "labels"})
    return batches


@torch.inference_mode()
def time_against(reference: nn.Module, model: nn.Module, test_batches: list[dict[str, torch.Tensor]],
                 repeats: int = 30, test_repeats: int = 10, seq_len: int = 128) -> dict[str, Any]:
    """Speedups of ``model`` over ``reference`` on the three workloads, with the theoretical FLOPs ratio."""
    reference.eval()
    model.eval()
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    for batch_size in (32, 1):
        inputs = [random_inputs(reference, batch_size, seq_len)]
        out[f"b{batch_size}"] = _pairs(reference, model, inputs, repeats)
    out["testset"] = _pairs(reference, model, test_batches, test_repeats) | {"batches": len(test_batches)}
    out["theoretical"] = flops_per_token(reference, seq_len)["total"] / flops_per_token(model, seq_len)["total"]
    return out


class MixedTimingError(ValueError):
    """A task's table would mix speedups from several timing passes."""


def timing_fields(timing: dict[str, Any] | None) -> dict[str, Any]:
    """The speedup keys of a record, from one shape's entry of timing.json (None where it was not timed)."""
    timing = timing or {}
    b32, b1, testset = (timing.get(workload, {}) for workload in ("b32", "b1", "testset"))
    theoretical = timing.get("theoretical")
    return {
        "achieved": theoretical,
        "speedup_measured_b32": b32.get("speedup"), "speedup_iqr_b32": b32.get("speedup_iqr"),
        "speedup_measured_b1": b1.get("speedup"), "speedup_iqr_b1": b1.get("speedup_iqr"),
        "speedup_measured_testset": testset.get("speedup"), "speedup_iqr_testset": testset.get("speedup_iqr"),
        "speedup_theoretical": theoretical,
        "efficiency_b32": b32["speedup"] / theoretical if b32 and theoretical else None,
        "threads": timing.get("threads"),
    }


def read_timings(path: Path) -> dict[str, Any]:
    """timing.json: ``{"current": id, "passes": {id: {host_cpu, started, complete}}, "shapes": {key: timing}}``.

    A file from before passes existed (shape → timing) reads as no pass: its timings belong to no one run."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    if "passes" not in data:
        return {"current": None, "passes": {}, "shapes": {}}
    return data


def current_pass(data: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The id of the task's current timing pass and the shapes it timed (every other timing is stale)."""
    run = data.get("current")
    return run, {k: t for k, t in data.get("shapes", {}).items() if run and t.get("timing_run") == run}


def timing_pass(path: Path, shapes: dict[str, Callable[[], nn.Module]], reference: nn.Module,
                test_batches: list[dict[str, torch.Tensor]], host_cpu: str, force: bool = False,
                test_repeats: int = 10, log: Callable[[str], None] = print) -> str:
    """Time every shape of ``shapes`` (key → a builder of a model of that shape) in one new pass; returns its id.

    Without ``force``, a complete pass on this host that already covers every shape is kept as it is (nothing is
    timed). Otherwise every shape is timed again under a new ``timing_run`` id, written after each shape (a pass
    cut short stays incomplete and the report says so)."""
    from blockprune.atomic import write_text

    data = read_timings(path)
    run, done = current_pass(data)
    meta = data["passes"].get(run or "", {})
    if not force and run and meta.get("complete") and meta.get("host_cpu") == host_cpu and set(shapes) <= set(done):
        log(f"[frontier] every finished run is timed in pass {run} on {host_cpu}; --retime times them again")
        return run
    run = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    data["current"] = run
    data["passes"][run] = {"host_cpu": host_cpu, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                           "threads": torch.get_num_threads(), "shapes": len(shapes), "complete": False}
    for key, build in shapes.items():
        log(f"[frontier] pass {run}: timing {key} with {torch.get_num_threads()} threads")
        data["shapes"][key] = time_against(reference, build(), test_batches, test_repeats=test_repeats) | {
            "timing_run": run, "host_cpu": host_cpu}
        write_text(path, json.dumps(data, indent=1) + "\n")
    data["passes"][run]["complete"] = True
    write_text(path, json.dumps(data, indent=1) + "\n")
    return run


def one_timing_run(records: list[dict[str, Any]], task: str) -> str | None:
    """The one timing pass a task's timed records come from; :class:`MixedTimingError` (one line) if several."""
    runs: dict[str, int] = {}
    for r in records:
        if r.get("timing_run"):
            runs[r["timing_run"]] = runs.get(r["timing_run"], 0) + 1
    if len(runs) > 1:
        counts = ", ".join(f"{run} ({n} records)" for run, n in sorted(runs.items()))
        raise MixedTimingError(f"the {task} table would mix timing passes {counts}; run "
                               f"`python benchmarks/frontier.py --task {task} --retime` to time every run in one pass")
    return next(iter(runs), None)
