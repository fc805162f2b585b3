"""How many bytes a saved model's weights take on disk, against a plain float32 dense save.

Reads only the safetensors headers (and the compact index of :mod:`blockprune.store.compact`), so it works on
any saved folder, compact or not.

Example:
    >>> size_report("runs/unstructured/model")["saved_bytes"]     # doctest: +SKIP
    53019064
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from blockprune.deploy.counts import block_linears
from blockprune.store.compact import SEPARATOR, parse_index
from blockprune.store.saving import load_pruned


def _fp32_bytes(shape: Iterable[int], floating: bool, stored: int) -> int:
    """Bytes of a tensor in a float32 dense save: 4 per element if floating, else what it takes now."""
    return math.prod(shape) * 4 if floating else stored


def _file_tensors(file: Path) -> tuple[dict[str, tuple[list[int], str, int]], dict[str, dict[str, Any]]]:
    """``{stored name: (shape, dtype, bytes)}`` from a safetensors header (no data read) and its index."""
    with open(file, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", None)
    sizes = {name: (entry["shape"], entry["dtype"], entry["data_offsets"][1] - entry["data_offsets"][0])
             for name, entry in header.items()}
    return sizes, parse_index(metadata)


def _linear_names(model: nn.Module) -> set[str]:
    pointers = {w.data_ptr() for layer in block_linears(model) for w in layer.values() if w.numel()}
    return {name for name, p in model.named_parameters(remove_duplicate=True) if p.numel() and p.data_ptr() in pointers}


def size_report(folder: str | Path, model: nn.Module | None = None) -> dict[str, int]:
    """Bytes on disk of a saved model's weights against a plain float32 dense save.

    Returns ``dense_bytes`` (every tensor of the folder's ``*.safetensors`` at float32 for floating tensors, own
    size otherwise: the tensor data a dense fp32 save holds), ``saved_bytes`` (the files' real sizes, headers
    included), and the same two for the weights of the pruned block linears alone (attention Q/K/V/O and FFN,
    as :func:`blockprune.deploy.counts.block_linears` lists them): ``linear_dense_bytes`` and
    ``linear_saved_bytes`` (their stored parts). Only the headers are read; ``model`` (the loaded model, to
    find the linears) is loaded with :func:`blockprune.store.saving.load_pruned` when not given.

    Example:
        >>> size_report("runs/unstructured/model")                  # doctest: +SKIP
        {'dense_bytes': 90866688, 'saved_bytes': 53019064, 'linear_dense_bytes': 42467328, ...}
    """
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights to measure")
    if model is None:
        model = load_pruned(folder)
    linears = _linear_names(model)
    out = {"dense_bytes": 0, "saved_bytes": 0, "linear_dense_bytes": 0, "linear_saved_bytes": 0}
    for file in files:
        sizes, index = _file_tensors(file)
        out["saved_bytes"] += file.stat().st_size
        for name, info in index.items():
            stored = sum(b for key, (_, _, b) in sizes.items() if key.startswith(name + SEPARATOR))
            dense = _fp32_bytes(info["shape"], True, stored)
            out["dense_bytes"] += dense
            if name in linears:
                out["linear_dense_bytes"] += dense
                out["linear_saved_bytes"] += stored
        for name, (shape, dtype, stored) in sizes.items():
            if SEPARATOR in name:
                continue
            dense = _fp32_bytes(shape, dtype.startswith(("F", "BF")), stored)
            out["dense_bytes"] += dense
            if name in linears:
                out["linear_dense_bytes"] += dense
                out["linear_saved_bytes"] += stored
    return out
