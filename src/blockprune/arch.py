"""Where the prunable parts of each supported architecture live: one table, data only.

A transformer block couples its linears in two known ways, so no graph tracing is needed:

* an attention group: the Q/K/V output rows and the O input columns of one head belong together;
* an FFN neuron: the up (and gate) output row and the down input column belong together.

``ARCHITECTURES`` maps a ``model_type`` to an :class:`ArchSpec` holding dotted paths *relative to one
block* (one element of the ``layers`` ModuleList). Adding an architecture is one entry here plus one
tiny-config test. Both the training side (patching) and the shrink/measure side read this table.

Example:
    >>> spec = get_arch("bert")
    >>> spec.ffn.up
    'intermediate.dense'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AttentionSpec:
    """One multi-head attention inside a block.

    Attributes:
        module: path of the module that owns the head-count attributes (and reshapes into heads).
        q, k, v, o: paths of the projections. Q/K/V rows and O columns are grouped by head.
        heads_attr: attribute on ``module`` holding its number of heads.
        head_dim_attr: attribute on ``module`` holding the size of one head.
        size_attrs: attributes on ``module`` equal to ``heads * head_dim`` (kept in sync by shrink).
    """

    module: str
    q: str
    k: str
    v: str
    o: str
    heads_attr: str = "num_attention_heads"
    head_dim_attr: str = "attention_head_size"
    size_attrs: tuple[str, ...] = ()


@dataclass(frozen=True)
class FFNSpec:
    """The feed-forward part of a block: ``down(act(up(x)) [* gate(x)])``.

    Attributes:
        up: path of the up-projection; its output rows are the neurons.
        down: path of the down-projection; its input columns are the neurons.
        act: path of the activation module/function applied to ``up``'s output.
        gate: path of a gate projection (gated MLPs), or ``None``.
    """

    up: str
    down: str
    act: str
    gate: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    """Layout of one ``model_type``.

    Attributes:
        layers: dotted suffix of the ``nn.ModuleList`` holding the blocks (matched against module names,
            so task heads such as ``bert.`` prefixes do not matter).
        attention: the attention groups of one block.
        ffn: the feed-forward group of one block.
    """

    layers: str
    attention: tuple[AttentionSpec, ...]
    ffn: FFNSpec


_BERT_LIKE = ArchSpec(
    layers="encoder.layer",
    attention=(
        AttentionSpec(
            module="attention.self",
            q="attention.self.query",
            k="attention.self.key",
            v="attention.self.value",
            o="attention.output.dense",
            size_attrs=("all_head_size",),
        ),
    ),
    ffn=FFNSpec(up="intermediate.dense", down="output.dense", act="intermediate.intermediate_act_fn"),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": ArchSpec(
        layers="transformer.layer",
        attention=(
            AttentionSpec(
                module="attention",
                q="attention.q_lin",
                k="attention.k_lin",
                v="attention.v_lin",
                o="attention.out_lin",
                heads_attr="n_heads",
                size_attrs=("dim",),
            ),
        ),
        ffn=FFNSpec(up="ffn.lin1", down="ffn.lin2", act="ffn.activation"),
    ),
}


class UnsupportedModelError(ValueError):
    """The model's ``model_type`` has no entry in :data:`ARCHITECTURES`."""


def model_type_of(model_or_config: nn.Module | object | str) -> str:
    """Return the ``model_type`` string of a model, a config or a plain string."""
    if isinstance(model_or_config, str):
        return model_or_config
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise UnsupportedModelError(
            f"{type(model_or_config).__name__} has no config.model_type; blockprune supports Hugging Face "
            f"models of these types: {', '.join(sorted(ARCHITECTURES))}"
        )
    return model_type


def get_arch(model_or_config: nn.Module | object | str) -> ArchSpec:
    """Look up the :class:`ArchSpec` of a model, config or ``model_type``.

    Raises:
        UnsupportedModelError: the type is not in the table; the message lists the supported ones.
    """
    model_type = model_type_of(model_or_config)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}. "
            "Add an ArchSpec entry to blockprune.arch.ARCHITECTURES to support it."
        ) from None


def find_blocks(model: nn.Module, spec: ArchSpec | None = None) -> list[nn.Module]:
    """Return the transformer blocks of ``model`` in order.

    Raises:
        UnsupportedModelError: no ``nn.ModuleList`` named like ``spec.layers`` exists in the model.
    """
    spec = spec or get_arch(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == spec.layers or name.endswith("." + spec.layers)):
            return list(module)
    raise UnsupportedModelError(
        f"{type(model).__name__} has no module list named '*{spec.layers}'; its layout does not match "
        "the architecture table entry for its model_type."
    )


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Return the attribute at a dotted ``path`` under ``root`` (modules or plain callables)."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    """Replace the module at a dotted ``path`` under ``root``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = get_path(root, parent_path) if parent_path else root
    setattr(parent, leaf, value)


def num_heads(block: nn.Module, attn: AttentionSpec) -> int:
    """Number of heads the attention module of ``block`` currently has."""
    return int(getattr(get_path(block, attn.module), attn.heads_attr))


def head_dim(block: nn.Module, attn: AttentionSpec) -> int:
    """Size of one head of the attention module of ``block``."""
    return int(getattr(get_path(block, attn.module), attn.head_dim_attr))


class EmptyAttention(nn.Module):
    """Stands in for an attention module that lost every head.

    Its output is exactly what the original produced with zero heads: a tensor of width 0 (the
    following O projection, with 0 input columns, then adds only its bias), or, when the O projection
    lives inside the attention module, O's bias itself. ``out`` keeps its original attribute name so the
    state-dict keys do not change.
    """

    def __init__(self, heads_attr: str, head_dim_attr: str, head_dim: int, out_name: str | None = None,
                 out: nn.Linear | None = None) -> None:
        super().__init__()
        setattr(self, heads_attr, 0)
        setattr(self, head_dim_attr, head_dim)
        self._out_name = out_name
        if out_name is not None and out is not None:
            self.add_module(out_name, out)

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, None]:
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self._out_name is not None:
            return getattr(self, self._out_name)(empty), None
        return empty, None
