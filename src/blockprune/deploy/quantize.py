"""Dynamic int8 quantization of a (shrunk) model's transformer-block linears, for CPU inference.

What is quantized: every ``nn.Linear`` inside the transformer blocks (for BERT: Q, K, V, the attention output,
the FFN up and down projections), each with its own shape, so the uneven widths a shrink leaves are fine.
Weights become int8 with one scale per output row (symmetric); at run time each input is quantized to 8 bits
(7 on CPUs without AVX-512 VNNI, see :func:`input_bits`) with one scale for the whole input tensor of that call, the
product is accumulated in int32 and rescaled to fp32; biases stay fp32. Linears with no weights (the O
projection of a layer with 0 heads, the FFN of a layer with 0 neurons: shapes ``(0, n)`` or ``(n, 0)``) stay
fp32: they cost nothing, and the int8 kernel returns uninitialised memory for an empty product. Embeddings, LayerNorms, the pooler and the task head stay fp32:
they are a small share of the time, and the head's few outputs are where rounding would show most.

Backend: ``torch.ao.quantization.quantize_dynamic`` (fbgemm / x86 kernels, or qnnpack on ARM), which replaces
each chosen linear by ``torch.ao.nn.quantized.dynamic.Linear`` (here with per-row weight scales and, where the
CPU allows, 8-bit inputs). Of the candidates on torch 2.13 it is the only one that makes the model faster in
eager mode: a rough one-off comparison on the embedded MiniLM (batch 32 x seq 128, 2 threads, in one process on
a shared noisy machine, ``benchmarks/int8_backends.py``) gave 2.2x over fp32 for stock ``quantize_dynamic``
(per-tensor weights, 7-bit inputs; this module's variant uses the same kernels and was not timed then), 1.7x for
ONNX Runtime's dynamic quantization of the exported file (another runtime, and a file instead of a model: see
:mod:`blockprune.onnx_int8`), and 0.97x (no gain) for torchao 0.18's ``Int8DynamicActivationInt8WeightConfig``.
torchao is the maintained successor, but its wheel has no CPU kernel for this scheme and runs a decomposed
Python path meant to be fused by ``torch.compile``; compiled, an FFN of MiniLM's shape matched ``quantize_dynamic``, after
~20 s of compiling (per shape, with a C++ toolchain), which a load-and-run tool cannot afford. So no extra
dependency either. ``quantize_dynamic`` is marked deprecated (its warnings are silenced here); if a future torch
removes it, :func:`quantize_model` says so in one error. Caveat of its per-call input scale: one example's
output can change slightly with the other examples (and the padding) of its batch.

The result is deterministic: the weight scales depend only on the weights, and the int8 products are summed
exactly in int32, so the same model and input give bit-identical outputs every time on a given machine (the
input bits and the kernels depend on the CPU).

Example:
    >>> model = quantize_model(load_pruned("runs/demo/model"))       # doctest: +SKIP
    >>> quantized_linears(model)[:2]                                  # doctest: +SKIP
    ['bert.encoder.layer.0.attention.self.query', 'bert.encoder.layer.0.attention.self.key']
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from blockprune.surgery.arch import iter_blocks

SCHEMES = ("int8",)
"""The quantization schemes :func:`quantize_model` knows."""

__all__ = ["SCHEMES", "QuantizeError", "check_scheme", "input_bits", "is_quantized", "quantization_record",
           "quantize_model", "quantized_linears", "size_bytes"]


class QuantizeError(ValueError):
    """A model cannot be quantized as asked (unknown scheme, already quantized, no int8 backend)."""


def check_scheme(scheme: Any, flag: str = "scheme ") -> str:
    """Return ``scheme`` if it is known, else raise one :class:`QuantizeError` naming the choices."""
    if scheme not in SCHEMES:
        raise QuantizeError(f"{flag}{scheme!r} is not a quantization scheme; choose one of {list(SCHEMES)}")
    return scheme


def _backend() -> ModuleType:
    """``torch.ao.quantization`` with ``quantize_dynamic``, or one error naming the torch versions that have it."""
    try:
        import torch.ao.quantization as ao
    except ImportError as err:
        ao = None
        reason = str(err)
    else:
        reason = "it has no quantize_dynamic"
    if ao is None or not hasattr(ao, "quantize_dynamic") or not hasattr(ao, "per_channel_dynamic_qconfig"):
        raise QuantizeError(f"int8 quantization needs torch.ao.quantization.quantize_dynamic, which torch "
                            f"{torch.__version__} lacks ({reason}); install a torch of the range blockprune pins")
    return ao


def dynamic_linear_class() -> type:
    """The module class that replaces a quantized linear (``torch.ao.nn.quantized.dynamic.Linear``)."""
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


FBGEMM_8BIT_FLAGS = frozenset({"avx512_vnni"})
"""``/proc/cpuinfo`` flags under which fbgemm runs its int8 GEMM with VNNI (32-bit sums): ``fbgemmInstructionSet``
picks its ``avx512_vnni`` kernels only when cpuinfo reports AVX-512 VNNI, and has no kernels for AVX-VNNI (the
256-bit, non-AVX-512 kind, flag ``avx_vnni``) nor for AMX, so on such a CPU it runs its AVX2 kernels, whose
``vpmaddubsw`` sums pairs in 16 bits. (Every CPU with ``amx_int8`` also has ``avx512_vnni``.)"""
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""Flags under which ONNX Runtime's MLAS has 32-bit-sum int8 kernels: it dispatches AVX-VNNI as well
(``MlasGemmU8S8KernelAvxVnni``), see :mod:`blockprune.deploy.onnx_int8`."""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    return frozenset(next((line.split(":", 1)[1].split() for line in text.splitlines()
                           if line.startswith("flags")), []))


def vnni_cpu(flags: frozenset[str] | None = None) -> bool:
    """Whether ``flags`` (default: this CPU's) name any int8 dot-product instructions: VNNI (either kind) or AMX.

    This is what ONNX Runtime dispatches on; torch's fbgemm needs more (:func:`fbgemm_vnni`).
    """
    return bool(VNNI_FLAGS & (cpu_flags() if flags is None else flags))


def fbgemm_vnni(flags: frozenset[str] | None = None) -> bool:
    """Whether fbgemm multiplies int8 here with 32-bit sums: AVX-512 VNNI in ``flags`` (default: this CPU's)."""
    return bool(FBGEMM_8BIT_FLAGS & (cpu_flags() if flags is None else flags))


def input_bits(flags: frozenset[str] | None = None, engine: str | None = None) -> int:
    """Bits of the dynamically quantized inputs: 8 with torch's x86 kernels on AVX-512 VNNI, else torch's 7.

    fbgemm (torch's x86 int8 kernels) quantizes inputs to 7 bits by default (``reduce_range``), because its AVX2
    and AVX-512 kernels sum pairs of int8 products in 16 bits, which 8-bit inputs could saturate; its AVX-512 VNNI
    kernels sum in 32 bits, so there the 8th bit is safe, and it halves the rounding error (on the embedded MiniLM
    the mean token cosine to fp32 went from 0.961 to 0.989). A CPU with only AVX-VNNI (256-bit) runs the AVX2
    kernels (see :data:`FBGEMM_8BIT_FLAGS`), so it keeps 7 bits. Other engines (qnnpack on ARM) keep torch's
    default. ``flags`` and ``engine`` default to this CPU's and torch's current engine (given: for tests).
    """
    engine = torch.backends.quantized.engine if engine is None else engine
    return 8 if engine in ("x86", "fbgemm") and fbgemm_vnni(flags) else 7


@functools.cache
def _full_range_class() -> type:
    """``torch.ao.nn.quantized.dynamic.Linear`` whose inputs use all 8 bits (see :func:`input_bits`)."""
    base = dynamic_linear_class()

    class FullRangeDynamicLinear(base):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            packed = self._packed_params._packed_params
            return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False).to(x.dtype)

        def _get_name(self) -> str:
            return "DynamicQuantizedLinear8bit"

    return FullRangeDynamicLinear


def _is_quantized_linear(module: nn.Module) -> bool:
    try:
        return isinstance(module, dynamic_linear_class())
    except ImportError:
        return False


def _block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside a transformer block, by its full module name, in model order."""
    inside = {id(module) for _, block in iter_blocks(model) for module in block.modules()}
    return {name: module for name, module in model.named_modules()
            if id(module) in inside and type(module) is nn.Linear}


def is_quantized(model: nn.Module) -> bool:
    """Whether any linear of ``model`` is already an int8 dynamic linear."""
    return any(_is_quantized_linear(m) for m in model.modules())


def quantized_linears(model: nn.Module) -> list[str]:
    """Names of the int8 linears of ``model``, in model order.

    Example:
        >>> len(quantized_linears(quantize_model(bert_6_layers)))     # doctest: +SKIP
        36
    """
    return [name for name, m in model.named_modules() if _is_quantized_linear(m)]


def quantize_model(model: nn.Module, scheme: str = "int8") -> nn.Module:
    """Quantize the transformer-block linears of ``model`` **in place** and return it, in eval mode, on the CPU.

    Copy first (``copy.deepcopy``) to keep the fp32 model. Linears with 0 rows or 0 columns stay fp32; see
    the module docstring for what else stays fp32 and why. The result is for CPU inference only (no training).

    Args:
        model: a supported model (see :mod:`blockprune.arch`), shrunk or not, with fp32 weights.
        scheme: ``"int8"``: int8 weights (one scale per output row), inputs quantized dynamically to int8.

    Raises:
        QuantizeError: unknown ``scheme``, a model already quantized or not in fp32, or a torch without the backend.

    Example:
        >>> small = quantize_model(load_pruned("runs/demo/model"))     # doctest: +SKIP
    """
    check_scheme(scheme)
    if is_quantized(model):
        raise QuantizeError(f"{type(model).__name__} is already quantized; quantize the fp32 model once")
    targets = {name: m for name, m in _block_linears(model).items() if m.weight.numel() > 0}
    wrong = sorted({str(m.weight.dtype) for m in targets.values()} - {str(torch.float32)})
    if wrong:
        raise QuantizeError(f"int8 quantization starts from float32 weights, this model has {wrong}; "
                            "load it in float32 (or call model.float()) first")
    ao = _backend()
    model.cpu().eval()
    linear = _full_range_class() if input_bits() == 8 else dynamic_linear_class()
    with warnings.catch_warnings():  # the deprecation notices of torch.ao.quantization (see the module docstring)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantiz.* deprecated", category=UserWarning)
        ao.quantize_dynamic(model, {name: ao.per_channel_dynamic_qconfig for name in targets},
                            mapping={nn.Linear: linear}, inplace=True)
    return model


def quantization_record(scheme: str) -> dict[str, Any]:
    """What ``quantization.json`` says about a scheme (see :func:`blockprune.store.saving.save_pruned`)."""
    check_scheme(scheme)
    return {"format": "blockprune-quantization", "version": 1, "scheme": scheme,
            "backend": "torch.ao.quantization.quantize_dynamic (per-channel weights; inputs 8-bit on x86 CPUs with "
                       "AVX-512 VNNI, else 7-bit)",
            "quantized": "every non-empty nn.Linear inside the transformer blocks: int8 weights (one scale per "
                         "output row), int8 inputs quantized at run time; everything else fp32",
            "weights": "fp32 in model.safetensors, quantized at load (deterministic)"}


def _quantized_linear_bytes(module: nn.Module) -> int:
    """int8 values (1 byte each) + one fp32 scale per output row + the fp32 bias."""
    weight = module.weight()
    bias = module.bias()
    return weight.numel() + 4 * weight.shape[0] + (4 * bias.numel() if bias is not None else 0)


def size_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model as it would be stored: int8 linears packed, every other tensor at its own dtype.

    A quantized linear counts its int8 weights (1 byte each), one fp32 scale per output row and its fp32 bias
    (zero points are all 0 and not counted). Every other parameter and buffer of the state dict (fp32
    embeddings, norms, empty linears, pooler, head; persistent integer buffers) counts ``numel * element_size``;
    a tensor shared by several modules (tied weights) counts once. File headers and metadata are not counted.
    On an fp32 model, ``total`` is the size of its weights as :func:`blockprune.store.saving.save_pruned` writes them.

    Returns:
        ``total``, ``quantized_linear`` (the int8 linears, with scales and biases) and ``rest``.

    Example:
        >>> size_bytes(quantize_model(model))["total"] < size_bytes(fp32_model)["total"]   # doctest: +SKIP
        True
    """
    stored = {id(t) for t in model.state_dict(keep_vars=True).values() if isinstance(t, torch.Tensor)}
    seen: set[int] = set()
    quantized = rest = 0
    for module in model.modules():
        if _is_quantized_linear(module):
            quantized += _quantized_linear_bytes(module)
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if id(tensor) in stored and id(tensor) not in seen:
                seen.add(id(tensor))
                rest += tensor.numel() * tensor.element_size()
    return {"total": quantized + rest, "quantized_linear": quantized, "rest": rest}
