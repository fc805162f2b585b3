"""Latency of the frontier's models against the dense reference: one process, pinned threads, interleaved.

Run on a quiet machine, after every training. Models with identical shapes run identical dense kernels, so
each distinct shape (heads and FFN width per layer, layer count) is timed once and shared by its runs.
Three workloads: random full-length batches (b32 × s128, b1 × s128) and the test set itself at its real
lengths (batches of 32 in file order, each padded to its longest member). Each repeat times the reference
and the candidate back to back, alternating which goes first (ABBA); the speedup of a repeat is the ratio
of the pair, and the report gives the median and interquartile range over ≥30 pairs.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from blockprune.deploy.counts import ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.measure import random_inputs


def shape_key(model: nn.Module, quantize: str | None = None) -> str:
    """Identical for models that run the same dense kernels (``;<quantize>`` appended for a quantized model)."""
    return f"heads={heads_per_layer(model)};ffn={ffn_per_layer(model)}" + (f";{quantize}" if quantize else "")


def parse_shape_key(key: str) -> tuple[list[int], list[int], str | None]:
    """The inverse of :func:`shape_key`: heads and FFN widths per layer, and the quantize scheme (or None)."""
    parts = key.split(";")
    fields = dict(part.split("=", 1) for part in parts[:2])
    if set(fields) != {"heads", "ffn"} or len(parts) > 3:
        raise ValueError(f"not a frontier shape key: {key!r}; expected 'heads=[..];ffn=[..]' and an optional "
                         "';<quantize>'")
    heads, ffn = (json.loads(fields[name]) for name in ("heads", "ffn"))
    if len(heads) != len(ffn):
        raise ValueError(f"shape key {key!r} has {len(heads)} layers of heads but {len(ffn)} of FFN widths")
    return heads, ffn, parts[2] if len(parts) == 3 else None


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


def test_set_batches(tokenizer: Any, task: Any, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """The evaluation set in order, in batches padded to their longest member (what a user's traffic looks like)."""
    dataset = task.eval_dataset(tokenizer)
    collate = task.collate(tokenizer)
    batches = []
    for start in range(0, len(dataset), batch_size):
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
    out["testset"] = _pairs(reference, model, test_batches, test_repeats)
    out["theoretical"] = flops_per_token(reference, seq_len)["total"] / flops_per_token(model, seq_len)["total"]
    return out
