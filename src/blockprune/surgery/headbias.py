"""Per-head position biases shared across layers, after some layers lost heads.

MPNet and T5 add a learned relative-position bias to the attention scores, one slice per head. It is
computed once for all heads — by the MPNet encoder, or by T5's first self-attention, which returns it so
that the later layers reuse it — and then added by every layer. Once shrink removed heads from a layer,
that layer must add only its kept heads' slices, taken from the *full* tensor (other layers keep other
heads). So the bias table itself is never sliced; instead :func:`select_heads` stores the kept original
head indices in a buffer ``blockprune_heads`` on the attention module (saved with the weights) and adds
two forward hooks:

* before: slice the bias argument to the kept heads (a size-1 head dim broadcasts and is left alone). When
  the argument is missing, T5's producer computes the full bias itself with its ``compute_bias``; any
  other T5 attention uses a zero bias of shape ``(1, 1, 1, 1)``, which broadcasts to any head count.
* after (when the module passes the bias on, as T5 does): return the full tensor instead of the slice.

:func:`blockprune.surgery.shrink.apply_shapes` installs the same hooks when a saved model is loaded.

Example:
    >>> select_heads(attention_module, torch.tensor([0, 2]), SharedBiasSpec("position_bias"))   # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from functools import lru_cache, partial
from typing import Any

import torch
from torch import nn

from blockprune.surgery.arch import SharedBiasSpec

BUFFER = "blockprune_heads"
_FULL = "_blockprune_full_bias"


def selected_heads(module: nn.Module) -> torch.Tensor | None:
    """The kept original head indices of ``module``, or ``None`` when it has all its heads."""
    return module._buffers.get(BUFFER)


def select_heads(module: nn.Module, heads: torch.Tensor, spec: SharedBiasSpec) -> None:
    """Make ``module`` add only the shared-bias slices of ``heads`` (original indices), installing the hooks once."""
    heads = heads.to(dtype=torch.long, device=_device(module))
    if BUFFER in module._buffers:
        module._buffers[BUFFER] = heads
        return
    module.register_buffer(BUFFER, heads)
    module.register_forward_pre_hook(partial(_before, spec), with_kwargs=True)
    if spec.passed_on:
        module.register_forward_hook(partial(_after, spec), with_kwargs=True)


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _full_bias(module: nn.Module, spec: SharedBiasSpec, arguments: dict[str, Any]) -> torch.Tensor | None:
    """The bias for all heads when the caller passed none: T5's producer computes it, others use zero."""
    if not spec.passed_on:
        return None
    hidden = next(iter(arguments.values()))
    if spec.producer is None or not getattr(module, spec.producer, False):
        return hidden.new_zeros(1, 1, 1, 1)
    extra = arguments.get("kwargs", {})
    cache = arguments.get("cache", extra.get("past_key_values"))
    past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
    length = hidden.shape[1]
    return module.compute_bias(length, past + length, device=hidden.device, past_seen_tokens=past)


@lru_cache(maxsize=64)
def _signature(forward: Any) -> inspect.Signature:
    return inspect.signature(forward)


def _before(spec: SharedBiasSpec, module: nn.Module, args: tuple[Any, ...],
            kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    bound = _signature(type(module).forward).bind(module, *args, **kwargs)
    bias = bound.arguments.get(spec.arg)
    if bias is None:
        bias = _full_bias(module, spec, dict(list(bound.arguments.items())[1:]))
        if bias is None:
            return args, kwargs
    if spec.passed_on:
        setattr(module, _FULL, bias)
    heads = module._buffers[BUFFER]
    bound.arguments[spec.arg] = bias if bias.shape[1] == 1 else bias.index_select(1, heads.to(bias.device))
    return bound.args[1:], bound.kwargs


def _after(spec: SharedBiasSpec, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
           output: Any) -> Any:
    full = module.__dict__.pop(_FULL, None)
    if full is None or not isinstance(output, tuple) or len(output) < 2:
        return output
    return (output[0], full, *output[2:])
