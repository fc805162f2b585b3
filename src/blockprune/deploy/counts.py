"""What a model holds, read from its modules: block linears, heads and FFN width per layer, parameters, FLOPs.

Everything is read from the *modules* through the architecture table (:mod:`blockprune.surgery.arch`), never
from ``config``: after :func:`blockprune.surgery.shrink.shrink` the config still states the original sizes,
while the linears carry the real ones. Heads per layer are ``Q.out_features // head_dim`` (0 when the attention
was replaced by :class:`~blockprune.surgery.arch.EmptyAttention`), FFN width is ``up.out_features``. A wrapper
exposing ``base_layer`` (a masked linear) is looked through, so masked models count too.

Example:
    >>> heads_per_layer(model), flops_per_token(model, seq_len=128)["total"]    # doctest: +SKIP
    ([12, 12, 12, 12, 12, 12], 43487232)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from blockprune.surgery.arch import (
    AttentionSpec,
    StackSpec,
    UnsupportedModelError,
    get_path,
    has_path,
    head_dim,
    iter_blocks,
    num_heads,
)

# --------------------------------------------------------------------------------------------- structure


def _linear_weight(module: nn.Module, where: str) -> torch.Tensor:
    """The 2-D ``(out, in)`` weight of a linear, looking through wrappers that expose ``base_layer``."""
    seen = 0
    while not isinstance(module, nn.Linear) and hasattr(module, "base_layer") and seen < 8:
        module = module.base_layer
        seen += 1
    weight = getattr(module, "weight", None)
    if callable(weight) and hasattr(module, "_packed_params"):  # an int8 linear (blockprune.deploy.quantize) unpacks it
        weight = weight()
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UnsupportedModelError(
            f"{where} is a {type(module).__name__} without a 2-D weight; blockprune expects an nn.Linear there "
            "(or a wrapper with a base_layer). Check the ArchSpec entry for this model_type."
        )
    return weight


def _optional(block: nn.Module, path: str | None) -> nn.Module | None:
    """The module at ``path`` under ``block``, or ``None`` when it is absent (e.g. inside an EmptyAttention)."""
    if path is None:
        return None
    try:
        return get_path(block, path)
    except AttributeError:
        return None


def _ffn_paths(stack: StackSpec) -> list[str]:
    return [p for p in (stack.ffn.up, stack.ffn.gate, stack.ffn.down) if p is not None]


def _attention_paths(block: nn.Module, stack: StackSpec, per_token: bool = False) -> list[str]:
    """Q/K/V/O (and extra per-head projections, unless ``per_token``: they run once per sequence) paths."""
    paths: list[str] = []
    for attn in stack.attention:
        extras = [] if per_token else [p for p in attn.extra_rows if has_path(block, p)]
        paths += [attn.q, attn.k, attn.v, *extras, attn.o]
    return list(dict.fromkeys(paths))


def _layer_linears(block: nn.Module, stack: StackSpec, layer: int, paths: list[str] | None = None
                   ) -> dict[str, torch.Tensor]:
    """Weights of the prunable linears of one block, keyed by their dotted path (absent ones skipped)."""
    if paths is None:
        paths = _attention_paths(block, stack) + _ffn_paths(stack)
    weights: dict[str, torch.Tensor] = {}
    for path in dict.fromkeys(paths):
        module = _optional(block, path)
        if module is not None:
            weights[path] = _linear_weight(module, f"layer {layer} '{path}'")
    return weights


def block_linears(model: nn.Module) -> list[dict[str, torch.Tensor]]:
    """The weights of every prunable transformer-block linear, one ``{path: weight}`` dict per layer.

    Linears that no longer exist (Q/K/V of a layer whose attention became an ``EmptyAttention``) are left out.

    Example:
        >>> [sorted(layer) for layer in block_linears(model)][0][:2]      # doctest: +SKIP
        ['attention.output.dense', 'attention.self.key']
    """
    return [_layer_linears(block, stack, i) for i, (stack, block) in enumerate(iter_blocks(model))]


def _heads(block: nn.Module, attn: AttentionSpec) -> int:
    """Query heads of one attention (0 once it became an EmptyAttention)."""
    return num_heads(block, attn)


def heads_per_layer(model: nn.Module) -> list[int]:
    """Number of query heads each layer really has (read from the modules, not from config).

    A decoder block of an encoder-decoder counts its self- and cross-attention heads together; layers are
    numbered across stacks (encoder first).

    Example:
        >>> heads_per_layer(shrunk_bert)          # doctest: +SKIP
        [12, 7, 0, 12, 3, 9]
    """
    return [sum(_heads(block, attn) for attn in stack.attention) for stack, block in iter_blocks(model)]


def ffn_per_layer(model: nn.Module) -> list[int]:
    """Number of FFN neurons each layer really has (``up.out_features``; 0 when every neuron was removed).

    Example:
        >>> ffn_per_layer(shrunk_bert)            # doctest: +SKIP
        [1536, 801, 0, 1200, 64, 700]
    """
    return [_out_features(get_path(block, stack.ffn.up), stack.ffn.up) for stack, block in iter_blocks(model)]


def _out_features(module: nn.Module, where: str) -> int:
    """Output width of a linear (``Conv1D`` stores its weight ``(in, out)``), looking through wrappers."""
    weight = _linear_weight(module, where)
    while hasattr(module, "base_layer") and not isinstance(module, (nn.Linear, Conv1D)):
        module = module.base_layer
    return int(weight.shape[1] if isinstance(module, Conv1D) else weight.shape[0])


# --------------------------------------------------------------------------------------------- counts


def count_params(model: nn.Module) -> dict[str, int]:
    """Count parameters.

    Returns:
        ``total`` (each shared tensor once), ``embedding`` (all ``nn.Embedding`` tables), ``non_embedding``,
        ``linear`` (weight elements of the prunable block linears: Q, K, V, O, up, gate, down; biases not
        included) and ``linear_nonzero`` (how many of those weights are non-zero: the density of a model whose
        masks were baked in as zeros; all of them for a model on the ``meta`` device, which has no values).

    Example:
        >>> count_params(model)["linear"]        # doctest: +SKIP
        21233664
    """
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values()) + _packed_params(model)
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    embedding = sum(unique[i].numel() for i in embedding_ids if i in unique)
    weights = [w for layer in block_linears(model) for w in layer.values()]
    return {
        "total": total,
        "embedding": embedding,
        "non_embedding": total - embedding,
        "linear": sum(w.numel() for w in weights),
        "linear_nonzero": int(sum(w.numel() if w.is_meta else int(torch.count_nonzero(
            w.int_repr() if w.is_quantized else w.detach())) for w in weights)),
    }


def _packed_params(model: nn.Module) -> int:
    """Weights and biases of int8 linears (blockprune.deploy.quantize), which hold them packed, not as parameters."""
    total = 0
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            bias = module.bias()
            total += module.weight().numel() + (bias.numel() if bias is not None else 0)
    return total


def flops_per_token(model: nn.Module, seq_len: int) -> dict[str, Any]:
    """FLOPs (2 × multiply-accumulates) per token of the transformer blocks at sequence length ``seq_len``.

    ``linear`` counts ``2 * in * out`` for each block linear; ``attention`` counts the score (``Q K^T``) and
    context (``P V``) matmuls, ``2 * seq_len * heads * head_dim`` each, per layer (query heads; cross-attention
    is counted as if the encoder sequence had ``seq_len`` tokens too). Embeddings, norms, activations, softmax
    and task heads are not counted, nor DeBERTa's relative-position projections, which run once per sequence
    over the position table rather than per token. Shapes are read from the modules, so a model with zeros
    still counts as dense.

    Returns:
        ``linear``, ``attention``, ``total`` (their sum), ``total_per_sequence`` (``total * seq_len``),
        ``linear_per_layer``, ``attention_per_layer``, ``ffn_linear`` (the FFN part of ``linear``),
        ``attention_linear`` (the Q/K/V/O part) and ``seq_len``.

    Example:
        >>> flops_per_token(model, 128)["total"]          # doctest: +SKIP
        45613056
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    linear_per_layer: list[int] = []
    attention_per_layer: list[int] = []
    ffn = 0
    for i, (stack, block) in enumerate(iter_blocks(model)):
        attention = _layer_linears(block, stack, i, _attention_paths(block, stack, per_token=True))
        ffn_layer = sum(2 * w.numel() for w in _layer_linears(block, stack, i, _ffn_paths(stack)).values())
        linear_per_layer.append(sum(2 * w.numel() for w in attention.values()) + ffn_layer)
        ffn += ffn_layer
        width = sum(_heads(block, attn) * head_dim(block, attn) for attn in stack.attention)
        attention_per_layer.append(2 * 2 * seq_len * width)
    linear, attention = sum(linear_per_layer), sum(attention_per_layer)
    return {
        "seq_len": seq_len,
        "linear": linear,
        "attention": attention,
        "total": linear + attention,
        "total_per_sequence": (linear + attention) * seq_len,
        "linear_per_layer": linear_per_layer,
        "attention_per_layer": attention_per_layer,
        "ffn_linear": ffn,
        "attention_linear": linear - ffn,
    }

