"""ONNX export of any supported model (dense, masked-as-zeros, or shrunk), a parity check, and ONNX latency.

A shrunk model has a different number of heads (and FFN neurons) in every layer, and a layer may have no
heads at all (:class:`~blockprune.surgery.arch.EmptyAttention`) or no FFN neurons. Those shapes live in the weights,
so the exported graph simply carries them; batch and sequence axes stay dynamic.

Exporter choice: on torch 2.13 the legacy TorchScript exporter (``dynamo=False``) still works and is ~20×
faster to run, but it is deprecated and slated for removal, so the default is the ``torch.export``-based
exporter (``dynamo=True``). Both are tested for parity on uneven heads and on a layer with 0 heads and
0 neurons. The example inputs always contain padding so that no exporter can bake away the attention mask.

The exported file carries ``blockprune.*`` metadata (vocabulary sizes, output name) that
:func:`measure_onnx_latency` reads to build valid inputs. Files are written to a temporary path in the target
folder and renamed into place. Models over 2 GB (the protobuf limit) are not supported.

``onnx`` and ``onnxruntime`` (and ``onnxscript`` for the default exporter) are optional:
``pip install blockprune[onnx]``.

Example:
    >>> path = export_onnx(model, "out/model.onnx")        # doctest: +SKIP
    >>> check_onnx(model, path)                            # doctest: +SKIP
    3.1e-07
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from blockprune.deploy.measure import progress_bar, summarize_times, vocab_size_of

__all__ = ["MissingOnnxError", "OnnxExportError", "OnnxMismatchError", "check_onnx", "export_onnx",
           "measure_onnx_latency", "onnx_input_names"]

_META_PREFIX = "blockprune."


class MissingOnnxError(ImportError):
    """An optional ONNX dependency is not installed."""


class OnnxExportError(ValueError):
    """The exporter could not turn the model into an ONNX graph."""


class OnnxMismatchError(ValueError):
    """ONNX Runtime and PyTorch disagree by more than the tolerance."""


def require_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise MissingOnnxError(
            f"'{name}' is not installed; ONNX export/checking needs it: pip install blockprune[onnx]"
        ) from exc


def onnx_input_names(model: nn.Module) -> list[str]:
    """Inputs the exported graph takes: ``input_ids``, ``attention_mask`` and, if the model accepts it,
    ``token_type_ids``.

    Example:
        >>> onnx_input_names(bert)          # doctest: +SKIP
        ['input_ids', 'attention_mask', 'token_type_ids']
    """
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


class _Positional(nn.Module):
    """Calls the model with its inputs given positionally and returns its first output tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]


def example_inputs(
    model: nn.Module, names: list[str], batch_size: int, seq_len: int, seed: int, pad: bool = True
) -> dict[str, torch.Tensor]:
    """Random ids below the vocabulary size; the mask pads the tail of the first row (when long enough)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size_of(model), (batch_size, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    if pad and seq_len > 2:
        mask[0, -max(1, seq_len // 4):] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {name: inputs[name] for name in names}


def _output_name(model: nn.Module, inputs: dict[str, torch.Tensor]) -> str:
    with torch.inference_mode():
        out = model(**inputs)
    keys = list(out.keys()) if hasattr(out, "keys") else []
    return str(keys[0]) if keys else "output"


@contextlib.contextmanager
def temp_beside(path: Path) -> Iterator[Path]:
    """A temporary file path in ``path``'s folder, renamed onto ``path`` on success, removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _export_graph(wrapper: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], output: str, tmp: Path,
                  opset: int, dynamo: bool) -> None:
    """Run one of torch's exporters, writing to ``tmp``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used")  # harmless renaming note
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator")  # parity is checked instead
        if dynamo:
            require_module("onnxscript")
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            program = torch.onnx.export(
                wrapper, args, dynamo=True, opset_version=opset, input_names=names, output_names=[output],
                dynamic_shapes={n: {0: batch, 1: seq} for n in names}, verbose=False,
            )
            program.save(str(tmp), external_data=False)
        else:
            out_ndim = wrapper(*args).dim()
            out_axes = {0: "batch", 1: "seq"} if out_ndim >= 3 else {0: "batch"}
            torch.onnx.export(
                wrapper, args, str(tmp), dynamo=False, opset_version=opset, input_names=names,
                output_names=[output], dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, output: out_axes},
            )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    seq_len: int = 16,
    opset: int = 18,
    batch_size: int = 2,
    dynamo: bool = True,
) -> Path:
    """Export ``model``'s first output (``logits`` or ``last_hidden_state``) to ONNX with dynamic batch/seq axes.

    Args:
        model: any supported model; uneven heads per layer, 0-head layers and 0-neuron FFNs are fine.
        path: the ``.onnx`` file to write (atomically).
        seq_len: sequence length of the example inputs used for tracing (the graph accepts any length).
        opset: ONNX opset version.
        batch_size: batch size of the example inputs (>= 2, so the batch axis is not specialised to 1).
        dynamo: ``True`` uses the ``torch.export``-based exporter (default, needs onnxscript); ``False`` the
            deprecated TorchScript one (much faster to run while it still exists).

    Returns:
        The written path.

    Raises:
        MissingOnnxError: onnx (or onnxscript) is not installed.
        OnnxExportError: the exporter failed; the message carries the exporter's reason.

    Example:
        >>> export_onnx(shrunk, "out/shrunk.onnx")          # doctest: +SKIP
        PosixPath('out/shrunk.onnx')
    """
    onnx = require_module("onnx")
    if batch_size < 2 or seq_len < 2:
        raise ValueError(f"export_onnx needs batch_size >= 2 and seq_len >= 2 to keep axes dynamic, got "
                         f"{batch_size} and {seq_len}")
    path = Path(path)
    names = onnx_input_names(model)
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        inputs = {k: v.to(device) for k, v in example_inputs(model, names, batch_size, seq_len, seed=0).items()}
        output = _output_name(model, inputs)
        wrapper = _Positional(model).eval()
        with temp_beside(path) as tmp:
            try:
                _export_graph(wrapper, tuple(inputs.values()), names, output, tmp, opset, dynamo)
            except Exception as exc:  # the exporters raise many unrelated types
                kind = "torch.export-based (dynamo=True)" if dynamo else "TorchScript (dynamo=False)"
                raise OnnxExportError(
                    f"the {kind} ONNX exporter failed on {type(model).__name__}: {type(exc).__name__}: {exc}. "
                    f"Try export_onnx(..., dynamo={not dynamo})."
                ) from exc
            _stamp(onnx, tmp, model, output)
    finally:
        model.train(was_training)
    return path


def _stamp(onnx: ModuleType, file: Path, model: nn.Module, output: str) -> None:
    """Add ``blockprune.*`` metadata (vocab sizes, output name) to the ONNX file in place."""
    proto = onnx.load(str(file))
    config = getattr(model, "config", None)
    meta = {"vocab_size": vocab_size_of(model), "type_vocab_size": getattr(config, "type_vocab_size", 1) or 1,
            "output": output, "model_type": getattr(config, "model_type", "")}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = _META_PREFIX + key, str(value)
    onnx.save(proto, str(file))


def ort_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    ort = require_module("onnxruntime")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}; create it with export_onnx(model, path)")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    atol: float = 1e-4,
    batch_size: int = 3,
    seq_len: int = 11,
    seed: int = 1,
) -> float:
    """Compare ONNX Runtime with PyTorch on random inputs (with padding); return the max absolute difference.

    The default shape differs from :func:`export_onnx`'s example shape, so the dynamic axes are exercised.

    Raises:
        OnnxMismatchError: shapes differ or the difference exceeds ``atol``.

    Example:
        >>> check_onnx(model, "out/model.onnx", atol=1e-4)     # doctest: +SKIP
        2.9e-07
    """
    session = ort_session(path)
    names = [i.name for i in session.get_inputs()]
    inputs = example_inputs(model, names, batch_size, seq_len, seed)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.inference_mode():
            want = model(**{k: v.to(device) for k, v in inputs.items()})[0].float().cpu().numpy()
    finally:
        model.train(was_training)
    if got.shape != want.shape:
        raise OnnxMismatchError(f"ONNX output shape {got.shape} differs from PyTorch {want.shape} for {path}; "
                                "the file was probably exported from another model — re-export it")
    diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
    if not diff <= atol:
        raise OnnxMismatchError(f"ONNX Runtime differs from PyTorch by {diff:.3g} > atol={atol:g} on {path}; "
                                "re-export (or try export_onnx(..., dynamo=False/True)) and report the model")
    return diff


def measure_onnx_latency(
    path: str | os.PathLike[str],
    batch_size: int,
    seq_len: int,
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Time ONNX Runtime (CPU) on random token ids with an all-ones attention mask.

    Args:
        path: an ``.onnx`` file (from :func:`export_onnx`; other files work, with ids drawn below 2).
        batch_size, seq_len: input shape.
        repeats, warmup: timed and untimed runs.
        threads: ONNX Runtime intra-op threads (``None``: ``torch.get_num_threads()``, so it matches torch runs).
        progress: show a tqdm bar.

    Returns:
        ``median_ms``, ``p90_ms``, ``mean_ms``, ``min_ms``, ``batch_size``, ``seq_len``, ``threads``,
        ``warmup``, ``repeats`` and ``provider``.

    Example:
        >>> measure_onnx_latency("out/model.onnx", 1, 128, threads=1)["median_ms"]   # doctest: +SKIP
        7.9
    """
    if repeats < 1 or warmup < 0 or batch_size < 1 or seq_len < 1:
        raise ValueError("measure_onnx_latency needs repeats, batch_size, seq_len >= 1 and warmup >= 0")
    threads = torch.get_num_threads() if threads is None else threads
    session = ort_session(path, threads)
    meta = session.get_modelmeta().custom_metadata_map
    vocab = int(meta.get(_META_PREFIX + "vocab_size", 2))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(batch_size, seq_len), dtype=np.int64)
    given = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    unknown = [i.name for i in session.get_inputs() if i.name not in given]
    if unknown:
        raise ValueError(f"{path} takes inputs {unknown} that measure_onnx_latency cannot fill; it supports "
                         f"{sorted(given)} (files written by export_onnx)")
    feed = {i.name: given[i.name] for i in session.get_inputs()}

    def run() -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return (time.perf_counter() - start) * 1000.0

    for _ in range(warmup):
        run()
    times = [run() for _ in progress_bar(range(repeats), progress, f"onnx b{batch_size}")]
    return {"batch_size": batch_size, "seq_len": seq_len, "threads": threads, "warmup": warmup,
            "repeats": repeats, "provider": session.get_providers()[0], **summarize_times(times)}
