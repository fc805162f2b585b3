"""Where and in which precision latency is timed: device and dtype checks, device names, a per-pass timer.

Benchmarks should run on the user's hardware (``cpu`` or a CUDA GPU) in the precision they will deploy
(``fp32``, ``fp16`` or ``bf16``). Everything that can be wrong about such a request is checked here, up front,
with one clear error naming the option (:func:`check_bench_settings`), so that ``blockprune prune
--bench-device cuda`` on a machine without CUDA fails before any training rather than after it.

Timing one forward pass (:func:`pass_timer`): on CPU the wall time between two ``time.perf_counter`` calls;
on CUDA a pair of CUDA events recorded around the pass, with ``torch.cuda.synchronize`` before (so earlier
queued work is not counted) and after (so the pass is finished before the events are read).

fp16 on CPU is accepted when this torch can run the operations a transformer needs in fp16 (checked by
running them once on tiny tensors; torch >= 2.1 can). It is usually *slower* than fp32 on CPUs without
native fp16 arithmetic; bf16 is the reduced precision to try on CPUs (fast on those with AVX512-BF16/AMX).

This module never imports the training side.

Example:
    >>> dev, dtype = check_bench_settings("cpu", "bf16", threads=4)
    >>> (str(dev), dtype, device_name(dev) != "")
    ('cpu', torch.bfloat16, True)
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["DTYPES", "check_bench_settings", "check_device", "check_dtype", "device_name", "dtype_name", "pass_timer"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""The precisions latency can be timed in, by the name the CLI uses."""

SUPPORTED_DEVICES = "cpu, cuda or cuda:N"


def check_device(device: str | torch.device, flag: str = "device") -> torch.device:
    """The ``torch.device`` for ``device``, or a ``ValueError`` naming ``flag`` and the fix.

    Accepted: ``cpu``, ``cuda``, ``cuda:N`` (only where CUDA is available and GPU ``N`` exists).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{flag} {device!r} is not a device name; use {SUPPORTED_DEVICES}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"{flag} {device!r}: timing on {dev.type!r} is not supported; use {SUPPORTED_DEVICES}")
    if not torch.cuda.is_available():
        build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise ValueError(f"{flag} {device!r}: CUDA is not available on this machine (torch {torch.__version__}, "
                         f"{build}); use {flag} cpu, or run on a machine with an NVIDIA GPU and a CUDA build of torch")
    count = torch.cuda.device_count()
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"{flag} {device!r}: this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})")
    return dev


def dtype_name(dtype: torch.dtype) -> str:
    """``fp32`` / ``fp16`` / ``bf16`` for a torch dtype (else torch's own name)."""
    return next((name for name, d in DTYPES.items() if d == dtype), str(dtype).removeprefix("torch."))


def _probe(dtype: torch.dtype, dev: torch.device) -> None:
    """Run the operations of a transformer forward pass once on tiny tensors in ``dtype`` on ``dev``."""
    x = torch.ones(2, 3, 4, dtype=dtype, device=dev)
    w = torch.ones(4, 4, dtype=dtype, device=dev)
    y = torch.nn.functional.linear(x, w, w[0])
    y = torch.nn.functional.layer_norm(y, (4,)) + torch.nn.functional.gelu(y) + torch.nn.functional.silu(y)
    torch.softmax(y @ y.transpose(-1, -2), dim=-1)
    torch.nn.functional.scaled_dot_product_attention(x[None], x[None], x[None])
    torch.nn.functional.embedding(torch.zeros(2, dtype=torch.long, device=dev), w)


def check_dtype(dtype: str | torch.dtype, dev: torch.device, flag: str = "dtype") -> torch.dtype:
    """The torch dtype for ``dtype`` (``fp32``/``fp16``/``bf16``) if this torch can run it on ``dev``.

    Raises:
        ValueError: an unknown name, or a precision this torch/device cannot compute in (the message says
            what to use instead).
    """
    if isinstance(dtype, torch.dtype):  # a torch dtype (e.g. a model's own): any floating-point one
        if not dtype.is_floating_point:
            raise ValueError(f"{flag} {dtype} is not a floating-point dtype; choose one of {', '.join(DTYPES)}")
        resolved = dtype
    elif dtype in DTYPES:
        resolved = DTYPES[dtype]
    else:
        raise ValueError(f"{flag} {dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
    if resolved in (torch.float32, torch.float64):
        return resolved
    if dev.type == "cuda" and resolved == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{flag} bf16: {device_name(dev)} has no bf16 arithmetic (it needs compute capability "
                         "8.0 or newer); use fp16 or fp32")
    try:
        _probe(resolved, dev)
    except (RuntimeError, NotImplementedError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        hint = "use bf16 or fp32 on CPU" if dev.type == "cpu" else "use fp32"
        raise ValueError(f"{flag} {dtype_name(resolved)} is not supported on {dev} by torch {torch.__version__} "
                         f"({reason}); {hint}") from None
    return resolved


def check_bench_settings(
    device: str | torch.device, dtype: str | torch.dtype = "fp32", threads: int | None = None,
    flags: tuple[str, str, str] = ("device", "dtype", "threads"),
) -> tuple[torch.device, torch.dtype]:
    """Check a benchmark request before any work; return the device and dtype.

    ``flags`` names the three options in the messages (the CLI passes its flag names).

    Example:
        >>> check_bench_settings("cuda", flags=("--bench-device", "--bench-dtype", "--bench-threads"))  # doctest: +SKIP
        ValueError: --bench-device 'cuda': CUDA is not available on this machine ...
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{flags[2]} {threads!r} must be a whole number >= 1 (or left out: torch's choice)")
    dev = check_device(device, flags[0])
    return dev, check_dtype(dtype, dev, flags[1])


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def machine() -> dict[str, Any]:
    """The machine a number came from: the CPU model (from ``/proc/cpuinfo``; ``platform.processor()`` is empty
    on Linux), its architecture, cores, torch's threads, the platform and the GPU if there is one.

    Example:
        >>> machine()["cpu"]                                       # doctest: +SKIP
        'AMD EPYC 7B13'
    """
    return {"cpu": cpu_model(), "arch": platform.machine(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def device_name(dev: torch.device) -> str:
    """A human name for ``dev``: ``torch.cuda.get_device_name`` on CUDA, the processor's model name on CPU."""
    if dev.type == "cuda":
        return str(torch.cuda.get_device_name(dev))
    return cpu_model()


def pass_timer(model: Callable[..., Any], inputs: dict[str, Any], dev: torch.device) -> Callable[[], float]:
    """A closure running ``model(**inputs)`` once and returning its time in milliseconds.

    CPU: wall time (``time.perf_counter``). CUDA: two CUDA events recorded around the pass on the current
    stream, ``torch.cuda.synchronize`` before the start event and after the end event, then
    ``start.elapsed_time(end)``.
    """
    if dev.type != "cuda":
        def run_cpu() -> float:
            start = time.perf_counter()
            model(**inputs)
            return (time.perf_counter() - start) * 1000.0

        return run_cpu

    start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run_cuda() -> float:
        torch.cuda.synchronize(dev)
        start_event.record()
        model(**inputs)
        end_event.record()
        torch.cuda.synchronize(dev)
        return float(start_event.elapsed_time(end_event))

    return run_cuda
