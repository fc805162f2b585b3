"""int8 ONNX: ONNX Runtime's dynamic quantization of an exported model, and how far it moves from fp32 PyTorch.

:func:`quantize_onnx` runs ``onnxruntime.quantization.quantize_dynamic`` on the MatMuls whose weight is a
constant, non-empty 2-D matrix — in an exported BERT-like model, exactly the transformer-block linears (Q, K, V,
O, FFN up/down) — with int8 weights per output channel; the attention products, the pooler and head (exported as
``Gemm``), the embeddings and the empty linears of a layer with 0 heads or 0 neurons stay fp32 (ORT cannot
quantize an empty matrix). That is what :mod:`blockprune.quantize` quantizes in PyTorch. On x86 CPUs without
VNNI/AMX the weights use 7 bits (ORT's ``reduce_range``): its int8 product there sums pairs in 16 bits, which
full-range weights saturate (on an AVX2-only EPYC the test model's largest logit error fell from 0.089 to 0.026).

An int8 file cannot match PyTorch to 1e-4, so :func:`compare_onnx` reports the largest logit difference and
the argmax agreement with the fp32 PyTorch model instead of failing (:func:`blockprune.deploy.export.check_onnx` does).

Example:
    >>> export_onnx(model, "out/m.onnx"); quantize_onnx("out/m.onnx", "out/m.int8.onnx")   # doctest: +SKIP
    >>> compare_onnx(model, "out/m.int8.onnx")                                            # doctest: +SKIP
    {'max_abs_diff': 0.011, 'agreement': 1.0, 'batch_size': 8, 'seq_len': 16}
"""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blockprune.deploy.export import example_inputs, ort_session, require_module, temp_beside
from blockprune.deploy.quantize import vnni_cpu

__all__ = ["compare_onnx", "quantize_onnx"]


def _weight_matmuls(graph: Any) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant, non-empty 2-D initializer."""
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    names = []
    for node in graph.node:
        dims = shapes.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if dims is not None and len(dims) == 2 and all(dims):
            names.append(node.name)
    return names


def _pairs_saturate() -> bool:
    """Whether ORT's int8 products here sum pairs in 16 bits: x86 without VNNI/AMX (see the module docstring)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") and not vnni_cpu()


def quantize_onnx(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``path``: ``source`` (an fp32 file from :func:`blockprune.deploy.export.export_onnx`) with its block linears
    dynamically quantized to int8 (see the module docstring). Written atomically; metadata is kept.

    Returns:
        ``path`` and ``quantized_matmuls`` (how many MatMuls became int8).
    """
    onnx = require_module("onnx")
    require_module("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source, path = Path(source), Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no ONNX file at {source}; create it with export_onnx(model, path)")
    model = onnx.load(str(source))
    nodes = _weight_matmuls(model.graph)
    if not nodes:
        raise ValueError(f"{source} has no MatMul with a constant weight to quantize; export it with export_onnx")
    with temp_beside(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes, reduce_range=_pairs_saturate())
        quantized = onnx.load(str(tmp))
        if not quantized.metadata_props:  # keep the blockprune.* metadata that measure_onnx_latency reads
            quantized.metadata_props.extend(model.metadata_props)
            onnx.save(quantized, str(tmp))
    return {"path": path, "quantized_matmuls": len(nodes)}


def compare_onnx(model: nn.Module, path: str | os.PathLike[str], batch_size: int = 8, seq_len: int = 16,
                 seed: int = 1) -> dict[str, Any]:
    """Run ONNX Runtime and fp32 PyTorch on the same random padded inputs; return the largest absolute
    difference of the first output and, for logits, how often their argmax (last axis) agrees.

    Raises:
        ValueError: the outputs' shapes differ (the file comes from another model).
    """
    session = ort_session(path)
    names = [i.name for i in session.get_inputs()]
    inputs = example_inputs(model, names, batch_size, seq_len, seed)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0].astype(np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            want = model(**inputs)[0].double().numpy()
    finally:
        model.train(was_training)
    if got.shape != want.shape:
        raise ValueError(f"ONNX output shape {got.shape} differs from PyTorch {want.shape} for {path}; the file was "
                         "exported from another model: export it again")
    agreement = float((got.argmax(-1) == want.argmax(-1)).mean())
    return {"max_abs_diff": float(np.abs(got - want).max()), "agreement": agreement, "batch_size": batch_size,
            "seq_len": seq_len}
