"""How big and how fast a model is: parameters, FLOPs per token, latency, and speedup between two models.

Sizes and FLOPs come from :mod:`blockprune.deploy.counts` (read from the modules, never from ``config``).

A model whose pruned weights are merely zero keeps its full shapes, so its FLOPs (and latency) are those of
the dense model; only shrinking makes it smaller and faster. :func:`speedup` shows both numbers side by side:
the *theoretical* speedup (ratio of block-linear + attention FLOPs) and the *measured* one (ratio of median
latencies, timed alternately so that drift on a shared machine hits both models alike).

Latency is timed on a device (``cpu``, ``cuda``, ``cuda:N``) in a precision (``fp32``, ``fp16``, ``bf16``);
see :mod:`blockprune.deploy.devices` for the checks and the timer (CUDA events on GPUs). The caller's model is never
changed: when it is not already on that device in that dtype, a deep copy is moved and cast for the timing
(and dropped afterwards); otherwise it is timed as it is, in eval mode, and its training flag restored.

This module never imports the training side; it works on any supported model, masked models included
(a wrapper exposing ``base_layer`` is looked through).

Example:
    >>> report = measure(model, seq_len=128, batch_sizes=(1,))     # doctest: +SKIP
    >>> print(report.to_markdown())                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import json
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from blockprune.deploy.counts import count_params, ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.devices import check_bench_settings, device_name, dtype_name, machine, pass_timer
from blockprune.surgery.arch import (
    UnsupportedModelError,
    get_arch,
)

__all__ = [
    "MeasureReport",
    "measure",
    "measure_latency",
    "random_inputs",
    "speedup",
]


# --------------------------------------------------------------------------------------------- latency


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def vocab_size_of(model: nn.Module) -> int:
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if isinstance(emb, nn.Embedding):
        return emb.num_embeddings
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not size:
        raise UnsupportedModelError(f"{type(model).__name__} has no input embedding nor config.vocab_size")
    return int(size)


def random_inputs(
    model: nn.Module, batch_size: int, seq_len: int, device: str | torch.device = "cpu", seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random inputs on ``device``: token ids (below the vocabulary size) with an all-ones attention mask.

    Encoder-decoders also get the same ids as ``decoder_input_ids``. Vision models (``main_input_name`` is
    ``pixel_values``) get random images at the config's ``image_size`` instead (``seq_len`` is then ignored:
    the patch count sets the length), in ``dtype``.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size} and {seq_len}")
    gen = torch.Generator().manual_seed(seed)
    if _is_vision(model):
        config = model.config
        size = config.image_size if isinstance(config.image_size, (tuple, list)) else (config.image_size,) * 2
        pixels = torch.randn(batch_size, config.num_channels, *size, generator=gen)
        return {"pixel_values": pixels.to(device=device, dtype=dtype)}
    ids = torch.randint(0, vocab_size_of(model), (batch_size, seq_len), generator=gen).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs


def _is_vision(model: nn.Module) -> bool:
    return getattr(model, "main_input_name", "input_ids") == "pixel_values"


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Set torch's intra-op thread count for the duration (``None``: leave it), yielding the count in use."""
    old = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)


def _iqr(values: Sequence[float]) -> float:
    """Interquartile range (75th minus 25th percentile, linear interpolation)."""
    q1, q3 = np.percentile(np.asarray(values, dtype=float), [25, 75])
    return float(q3 - q1)


def summarize_times(times_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(times_ms, dtype=float)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
    }


def progress_bar(iterable: range, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def _model_dtype(model: nn.Module) -> torch.dtype:
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    return param.dtype if param is not None else torch.float32


@contextlib.contextmanager
def _placed(model: nn.Module, dev: torch.device, dtype: torch.dtype) -> Iterator[nn.Module]:
    """``model`` in eval mode on ``dev`` in ``dtype``: itself when it already is there, else a deep copy.

    The caller's model is left as it was (device, dtype and training flag).
    """
    if _model_device(model) == dev and _model_dtype(model) == dtype:
        was_training = model.training
        try:
            yield model.eval()
        finally:
            model.train(was_training)
        return
    yield copy.deepcopy(model).to(device=dev, dtype=dtype).eval()


def _resolve(model: nn.Module, device: str | torch.device, dtype: str | torch.dtype | None,
             threads: int | None) -> tuple[torch.device, torch.dtype]:
    """Checked device and dtype (``dtype=None``: the model's own)."""
    return check_bench_settings(device, _model_dtype(model) if dtype is None else dtype, threads)


def _dtype_label(model: nn.Module, dtype: str | torch.dtype | None) -> str:
    """The name of the precision asked for (``None``: the model's own), as reports write it."""
    if dtype is None:
        return dtype_name(_model_dtype(model))
    return dtype if isinstance(dtype, str) else dtype_name(dtype)


@contextlib.contextmanager
def _timing_errors(dev: torch.device, dtype: torch.dtype, batch_size: int, seq_len: int) -> Iterator[None]:
    """Turn the failures a user can fix (out of memory, an op missing in a reduced precision) into ValueError."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise ValueError(f"out of memory on {dev} timing batch {batch_size} x seq {seq_len}; use smaller batch "
                         "sizes or a shorter sequence length") from None
    except (RuntimeError, NotImplementedError) as err:
        if dtype == torch.float32 or "not implemented for" not in str(err):
            raise
        reason = str(err).splitlines()[0]
        raise ValueError(f"the model cannot run in {dtype_name(dtype)} on {dev} with torch {torch.__version__} "
                         f"({reason}); use fp32" + (" or bf16" if dtype == torch.float16 else "")) from None


def measure_latency(
    model: nn.Module,
    batch_size: int,
    seq_len: int,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    progress: bool = False,
    dtype: str | torch.dtype | None = None,
) -> dict[str, Any]:
    """Time the forward pass on random token ids with an all-ones attention mask.

    The model runs in eval mode under ``torch.inference_mode`` on ``device`` in ``dtype`` (on a deep copy
    when it is elsewhere or in another dtype; the caller's model is never changed). On CUDA each pass is
    timed with CUDA events (see :func:`blockprune.deploy.devices.pass_timer`).

    Args:
        model: any supported model.
        batch_size: sequences per forward pass.
        seq_len: tokens per sequence.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        warmup: untimed passes first.
        repeats: timed passes.
        threads: torch intra-op threads to use (``None``: the current setting); restored afterwards.
        progress: show a tqdm bar over the timed passes.
        dtype: ``"fp32"``, ``"fp16"``, ``"bf16"`` (or the torch dtype); ``None``: the model's own.

    Returns:
        ``median_ms``, ``p90_ms``, ``mean_ms``, ``min_ms``, ``iqr_ms`` plus ``batch_size``, ``seq_len``,
        ``device``, ``device_name`` (GPU or processor model), ``dtype``, ``threads``
        (``torch.get_num_threads()`` during the run), ``warmup`` and ``repeats``.

    Example:
        >>> measure_latency(model, batch_size=1, seq_len=128, threads=1)["median_ms"]   # doctest: +SKIP
        11.8
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    dev, dt = _resolve(model, device, dtype, threads)
    inputs = random_inputs(model, batch_size, seq_len, dev, dtype=dt)
    with (_placed(model, dev, dt) as timed, pinned_threads(threads) as used, torch.inference_mode(),
          _timing_errors(dev, dt, batch_size, seq_len)):
        run = pass_timer(timed, inputs, dev)
        for _ in range(warmup):
            run()
        times = [run() for _ in progress_bar(range(repeats), progress, f"latency b{batch_size}")]
    return {"batch_size": batch_size, "seq_len": seq_len, "device": str(dev), "device_name": device_name(dev),
            "dtype": dtype_name(dt), "threads": used, "warmup": warmup, "repeats": repeats, **summarize_times(times),
            "iqr_ms": _iqr(times)}


# --------------------------------------------------------------------------------------------- report


def _versions() -> dict[str, str]:
    import transformers

    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__}


def _machine() -> str:
    host = machine()
    return f"{host['arch']} {host['cpu']}, {host['cpu_count']} cpus, {host['platform']}"


@dataclass
class MeasureReport:
    """Size and speed of one model; JSON round-trips through :meth:`to_json` / :meth:`from_json`.

    Attributes:
        model_type: ``config.model_type``.
        model_class: class name of the model.
        seq_len: sequence length used for FLOPs and latency.
        params: :func:`count_params`.
        flops: :func:`flops_per_token`.
        heads_per_layer: real heads per layer.
        ffn_per_layer: real FFN neurons per layer.
        latency: one :func:`measure_latency` dict per batch size (empty when latency was not measured).
        device: where latency was measured (``cpu``, ``cuda``, ``cuda:N``).
        threads: torch intra-op threads during the measurement.
        dtype: the precision latency was measured in (``fp32``, ``fp16``, ``bf16``).
        device_name: the GPU's name on CUDA, the processor's model name on CPU ("" when not measured).
        torch_version / transformers_version: library versions.
        machine: processor, cpu count and OS.
    """

    model_type: str
    model_class: str
    seq_len: int
    params: dict[str, int]
    flops: dict[str, Any]
    heads_per_layer: list[int]
    ffn_per_layer: list[int]
    latency: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"
    threads: int = 1
    torch_version: str = ""
    transformers_version: str = ""
    machine: str = ""
    dtype: str = "fp32"
    device_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict."""
        return asdict(self)

    def to_json(self, indent: int = 2) -> str:
        """Sorted, indented JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasureReport:
        """Rebuild a report from :meth:`to_dict` output (unknown keys are an error)."""
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"MeasureReport got unknown keys {unknown}; expected a subset of {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> MeasureReport:
        """Rebuild a report from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    def to_markdown(self) -> str:
        """A human-readable Markdown summary (tables of sizes, FLOPs, shapes and latency)."""
        p, f = self.params, self.flops
        density = p["linear_nonzero"] / p["linear"] if p["linear"] else 0.0
        lines = [
            f"## {self.model_class} ({self.model_type})",
            "",
            "| quantity | value |",
            "|---|---|",
            f"| parameters (total) | {p['total']:,} |",
            f"| parameters (embedding) | {p['embedding']:,} |",
            f"| parameters (non-embedding) | {p['non_embedding']:,} |",
            f"| block-linear weights | {p['linear']:,} |",
            f"| block-linear non-zero | {p['linear_nonzero']:,} ({density:.1%}) |",
            f"| FLOPs/token @ seq {self.seq_len} (linear) | {f['linear']:,} |",
            f"| FLOPs/token @ seq {self.seq_len} (attention) | {f['attention']:,} |",
            f"| FLOPs/token @ seq {self.seq_len} (total) | {f['total']:,} |",
            f"| heads per layer | {' '.join(map(str, self.heads_per_layer))} |",
            f"| FFN width per layer | {' '.join(map(str, self.ffn_per_layer))} |",
        ]
        if self.latency:
            name = f" ({self.device_name})" if self.device_name else ""
            lines += ["", f"Latency on {self.device}{name}, {self.dtype}, {self.threads} thread(s), seq {self.seq_len}:",
                      "", "| batch | median ms | IQR ms | p90 ms | mean ms | repeats |", "|---|---|---|---|---|---|"]
            lines += [f"| {r['batch_size']} | {r['median_ms']:.3f} | {r.get('iqr_ms', float('nan')):.3f} | "
                      f"{r['p90_ms']:.3f} | {r['mean_ms']:.3f} | {r['repeats']} |" for r in self.latency]
        lines += ["", f"torch {self.torch_version}, transformers {self.transformers_version}; {self.machine}", ""]
        return "\n".join(lines)


def measure(
    model: nn.Module,
    seq_len: int = 128,
    batch_sizes: Sequence[int] = (1, 32),
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    latency: bool = True,
    progress: bool = False,
    dtype: str | torch.dtype | None = None,
) -> MeasureReport:
    """Measure size, FLOPs, per-layer shapes and (optionally) latency of ``model``.

    Latency is timed on ``device`` in ``dtype`` (``None``: the model's own) as in :func:`measure_latency`;
    ``device`` and ``dtype`` are checked before any timing.

    Example:
        >>> report = measure(model, seq_len=128, batch_sizes=(1, 32), repeats=10)   # doctest: +SKIP
        >>> report.latency[0]["median_ms"]                                           # doctest: +SKIP
        11.8
    """
    get_arch(model)  # an unsupported model fails here, before any timing
    runs: list[dict[str, Any]] = []
    used = torch.get_num_threads() if threads is None else threads
    dt: str | torch.dtype = _dtype_label(model, dtype)
    name = ""
    if latency:
        dev, dt = _resolve(model, device, dt, threads)
        runs = [measure_latency(model, b, seq_len, dev, warmup, repeats, threads, progress, dt) for b in batch_sizes]
        used = runs[0]["threads"] if runs else used
        name = device_name(dev)
    config = getattr(model, "config", None)
    return MeasureReport(
        model_type=str(getattr(config, "model_type", "")),
        model_class=type(model).__name__,
        seq_len=seq_len,
        params=count_params(model),
        flops=flops_per_token(model, seq_len),
        heads_per_layer=heads_per_layer(model),
        ffn_per_layer=ffn_per_layer(model),
        latency=runs,
        device=str(torch.device(device)),
        threads=used,
        dtype=_dtype_label(model, dt),
        device_name=name,
        machine=_machine(),
        **_versions(),
    )


# --------------------------------------------------------------------------------------------- speedup


def _interleaved(
    reference: nn.Module, model: nn.Module, batch_size: int, seq_len: int, dev: torch.device,
    warmup: int, repeats: int, progress: bool, dtype: torch.dtype = torch.float32,
) -> tuple[list[float], list[float]]:
    """Time both models alternately (ABBA order) so slow drift of the machine affects both alike.

    Repeat ``i`` times one pass of each model back to back, so ``ref[i] / model[i]`` is one paired ratio.
    """
    inputs = random_inputs(reference, batch_size, seq_len, dev, dtype=dtype)
    run_ref, run_model = pass_timer(reference, inputs, dev), pass_timer(model, inputs, dev)
    for _ in range(warmup):
        run_ref()
        run_model()
    ref_times: list[float] = []
    model_times: list[float] = []
    for i in progress_bar(range(repeats), progress, f"speedup b{batch_size}"):
        if i % 2 == 0:
            ref_times.append(run_ref())
            model_times.append(run_model())
        else:
            model_times.append(run_model())
            ref_times.append(run_ref())
    return ref_times, model_times


def speedup(
    reference: nn.Module,
    model: nn.Module,
    seq_len: int = 128,
    batch_sizes: Sequence[int] = (1, 32),
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    latency: bool = True,
    progress: bool = False,
    dtype: str | torch.dtype | None = None,
) -> dict[str, Any]:
    """Measured and theoretical speedup of ``model`` over ``reference``, side by side.

    The theoretical speedup is the ratio of block FLOPs per token (block linears + attention matmuls) at
    ``seq_len``; the measured one is the ratio of median latencies, timed alternately per batch size. Both
    models must take the same inputs (same vocabulary). Both are timed on ``device`` in ``dtype`` (``None``:
    the reference's own dtype), each on a copy when it is not already there (see :func:`measure_latency`).

    Returns:
        ``theoretical`` (total FLOPs ratio), ``theoretical_linear`` (block linears only), ``params_ratio``
        (total parameters reference / model), ``linear_params_ratio``, ``seq_len``, ``device``,
        ``device_name`` (GPU or processor model; only when latency is measured), ``dtype``, ``threads`` and
        ``batches``: one dict per batch size with ``batch_size``, ``reference_ms``, ``model_ms`` (medians),
        ``reference_iqr_ms``, ``model_iqr_ms`` (their interquartile ranges), ``measured`` (reference_ms /
        model_ms), ``measured_iqr`` (interquartile range of the per-repeat ratios ``reference[i] / model[i]``
        of passes timed back to back: the spread of the speedup), ``theoretical`` and ``efficiency``
        (measured / theoretical).

    Example:
        >>> s = speedup(dense, shrunk, batch_sizes=(32,), repeats=10)    # doctest: +SKIP
        >>> s["batches"][0]["measured"], s["theoretical"]                # doctest: +SKIP
        (1.83, 1.95)
    """
    ref_flops, model_flops = flops_per_token(reference, seq_len), flops_per_token(model, seq_len)
    ref_params, model_params = count_params(reference), count_params(model)
    theoretical = ref_flops["total"] / model_flops["total"] if model_flops["total"] else float("inf")
    theoretical_linear = ref_flops["linear"] / model_flops["linear"] if model_flops["linear"] else float("inf")
    result: dict[str, Any] = {
        "seq_len": seq_len,
        "theoretical": theoretical,
        "theoretical_linear": theoretical_linear,
        "params_ratio": ref_params["total"] / model_params["total"],
        "linear_params_ratio": ref_params["linear"] / model_params["linear"] if model_params["linear"] else float("inf"),
        "reference_flops_per_token": ref_flops["total"],
        "model_flops_per_token": model_flops["total"],
        "device": str(torch.device(device)),
        "dtype": _dtype_label(reference, dtype),
        "threads": torch.get_num_threads() if threads is None else threads,
        "batches": [],
    }
    if not latency:
        return result
    if not _is_vision(reference) and vocab_size_of(reference) != vocab_size_of(model):
        raise ValueError("speedup needs two models with the same vocabulary (they are fed the same token ids)")
    dev, dt = _resolve(reference, device, dtype, threads)
    result |= {"device": str(dev), "device_name": device_name(dev), "dtype": dtype_name(dt)}
    with (_placed(reference, dev, dt) as timed_ref, _placed(model, dev, dt) as timed_model,
          pinned_threads(threads) as used, torch.inference_mode()):
        result["threads"] = used
        for b in batch_sizes:
            with _timing_errors(dev, dt, b, seq_len):
                ref_times, model_times = _interleaved(timed_ref, timed_model, b, seq_len, dev, warmup, repeats,
                                                      progress, dt)
            result["batches"].append(_batch_row(b, ref_times, model_times, theoretical))
    return result


def _batch_row(batch_size: int, ref_times: list[float], model_times: list[float], theoretical: float
               ) -> dict[str, Any]:
    """One batch size's speedup entry from the paired (ABBA) times of the two models."""
    ref_ms, model_ms = statistics.median(ref_times), statistics.median(model_times)
    measured = ref_ms / model_ms
    ratios = [r / m for r, m in zip(ref_times, model_times, strict=True)]
    return {
        "batch_size": batch_size, "reference_ms": ref_ms, "model_ms": model_ms,
        "reference_iqr_ms": _iqr(ref_times), "model_iqr_ms": _iqr(model_times),
        "measured": measured, "measured_iqr": _iqr(ratios),
        "theoretical": theoretical, "efficiency": measured / theoretical, "repeats": len(ref_times),
    }
