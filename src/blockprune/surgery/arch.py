"""Where the prunable parts of each supported architecture live: one table, data only.

A transformer block couples its linears in two known ways, so no graph tracing is needed:

* an attention *unit*: the Q/K/V output rows and the O input columns of one head belong together. With
  grouped-query attention (Llama, Mistral, Qwen2) the unit is one key/value head together with all the
  query heads that read it: a KV head can only go when all its query heads go, and the query heads of a
  group can only go together, because the stock code needs the same number of query heads per KV head;
* an FFN neuron: the up (and gate) output row and the down input column belong together.

``ARCHITECTURES`` maps a ``model_type`` to an :class:`ArchSpec` holding dotted paths *relative to one
block* (one element of a ``layers`` ModuleList). Encoder-decoders have several block lists (stacks): the
first is described by the :class:`ArchSpec` itself, the others by :class:`StackSpec` entries in ``more``.
Both the training side (patching) and the shrink/measure side read this table, nothing else.

Adding an architecture
----------------------
1. Read the model's ``modeling_*.py`` in transformers: find the ``nn.ModuleList`` of blocks, the Q/K/V/O
   projections, the attribute holding the head size (and the head count, if any), every attribute
   derived from the head count that the forward pass reads (e.g. ``all_head_size``), and the FFN
   up/gate/down projections with the activation. Check that the attention reshapes with
   ``view(..., -1, head_dim)`` so that fewer heads still work.
2. Add one entry, e.g. for a BERT-like encoder whose blocks live in ``encoder.layer``::

       ARCHITECTURES["my-bert"] = ArchSpec(
           layers="encoder.layer",
           attention=(AttentionSpec(module="attention.self", q="attention.self.query",
                                    k="attention.self.key", v="attention.self.value",
                                    o="attention.output.dense", size_attrs=("all_head_size",)),),
           ffn=FFNSpec(up="intermediate.dense", down="output.dense", act="intermediate.intermediate_act_fn"),
       )

3. Add its tiny config to ``_FIELDS`` in ``tests/tiny.py`` and one ``Case`` line to ``CASES`` in
   ``tests/test_families.py`` (with the parameters one head unit and one FFN neuron cost, counted by hand):
   the shared tests then check masked training, finalize, exact shrink (whole layers included), cached
   generation for decoders, save/load and measurement for it. A table entry without a case fails a test.

Special layouts are data too: a fused QKV projection (GPT-2's ``c_attn``) is written by giving ``q``, ``k``
and ``v`` the same path; transformers' ``Conv1D`` (weight stored ``(in, out)``) is accepted wherever an
``nn.Linear`` is; extra per-head projections go in ``extra_rows``; a per-head position bias shared by all
layers goes in ``shared_bias``; decoders set ``keep_one`` (see :class:`AttentionSpec`). A ``model_type``
that cannot be shrunk exactly goes in :data:`REJECTED` with the reason. Hidden-dimension (residual width)
pruning needs a :class:`HiddenSpec` on the entry (embeddings, LayerNorms, pooler and head linears on the residual;
:mod:`blockprune.surgery.hidden` reads it); without one the type is refused for it. Types with no entry can still be
masked (no shrink) with ``Pruner(model, config, fallback=True)``.

Example:
    >>> spec = get_arch("bert")
    >>> spec.ffn.up
    'intermediate.dense'
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass(frozen=True)
class SharedBiasSpec:
    """A per-head additive attention bias computed once for *all* heads and shared by several layers.

    MPNet computes its relative-position bias in the encoder and hands it to every layer; T5 computes it in
    the first layer's self-attention, which returns it for the later layers. A layer that lost heads must
    add only its kept heads' slice, so shrink records the kept (original) head indices in a buffer
    ``blockprune_heads`` on the attention module and a forward hook slices the argument (and, when
    ``passed_on``, hands the full tensor on).

    Attributes:
        arg: name of the forward argument holding the bias, heads on dim 1 (a size-1 dim broadcasts).
        passed_on: the module returns the bias at output index 1 for the next layer (T5).
        producer: attribute that is true on the module computing the bias when ``arg`` is ``None``, through
            its ``compute_bias(query_length, key_length, device, past_seen_tokens)`` (T5); such a module
            keeps its full bias table and never becomes empty.
    """

    arg: str
    passed_on: bool = False
    producer: str | None = None


@dataclass(frozen=True)
class AttentionSpec:
    """One multi-head attention inside a block.

    Attributes:
        module: path of the module that owns the head attributes (and reshapes into heads).
        q, k, v, o: paths of the projections. Q/K/V rows and O columns are grouped by head. The same path
            for ``q``, ``k`` and ``v`` means one fused projection whose rows are ``[Q; K; V]`` (GPT-2).
            K/V may have fewer heads than Q (grouped-query attention): shapes tell.
        heads_attr: attribute on ``module`` holding its number of query heads, or ``None`` if it has none.
        head_dim_attr: attribute on ``module`` holding the size of one head.
        size_attrs: attributes on ``module`` equal to ``query heads * head_dim`` (kept in sync by shrink).
        extra_rows: further projections whose output rows are grouped like Q's (DeBERTa's relative-position
            projections); absent ones are skipped. They are masked and sliced with their head.
        keep_one: a layer that loses every head keeps one (whose output is exactly zero) instead of becoming
            :class:`EmptyAttention`, so that the KV cache still records the sequence length (decoders).
        shared_bias: a per-head bias shared across layers (see :class:`SharedBiasSpec`).
    """

    module: str
    q: str
    k: str
    v: str
    o: str
    heads_attr: str | None = "num_attention_heads"
    head_dim_attr: str = "attention_head_size"
    size_attrs: tuple[str, ...] = ()
    extra_rows: tuple[str, ...] = ()
    keep_one: bool = False
    shared_bias: SharedBiasSpec | None = None

    @property
    def fused(self) -> bool:
        """Whether Q, K and V live in one projection (rows ``[Q; K; V]``)."""
        return self.q == self.k == self.v


@dataclass(frozen=True)
class FFNSpec:
    """The feed-forward part of a block: ``down(act(up(x)) [* gate(x)])``.

    Attributes:
        up: path of the projection whose output goes through ``act``; its output rows are the neurons.
        down: path of the down-projection; its input columns are the neurons.
        act: path of the activation module/function applied to ``up``'s output.
        gate: path of the projection multiplied in (gated MLPs), or ``None``. In Llama's naming
            ``down(act(gate_proj(x)) * up_proj(x))`` this means ``up="mlp.gate_proj"``, ``gate="mlp.up_proj"``.
        keep_one: a block that loses every neuron keeps one, unfolded (GPT-2's ``Conv1D`` cannot take 0
            input features).
    """

    up: str
    down: str
    act: str
    gate: str | None = None
    keep_one: bool = False


@dataclass(frozen=True)
class HiddenSpec:
    """What a cut of the residual (hidden) width touches beyond the block linears, as data.

    The block linears come from the attention and FFN specs: Q/K/V and FFN up (and gate) read the residual
    (their input columns), O and FFN down write it (their output rows and biases). This adds the rest:

    Attributes:
        embeddings: embedding tables (paths under the base model, e.g. ``embeddings.word_embeddings``) whose
            columns are residual dimensions.
        embed_norm: the embeddings' LayerNorm (under the base model).
        norms: the LayerNorms of one block (paths relative to the block), all on the residual.
        entry: the module under the base model whose output starts the residual stream (the embeddings), unless
            ``project`` is present.
        pooler: a linear under the base model reading the first token of the residual (its input columns are
            cut, its output, which feeds the classifier, keeps its width); skipped when absent.
        project: a linear under the base model mapping narrower embeddings into the residual (ELECTRA's
            ``embeddings_project`` when ``embedding_size != hidden_size``); when the model has it, its output rows
            are the residual's entry and ``embeddings``/``embed_norm`` keep their width.
        heads: ``(class-name suffix, paths under the whole model)``: for a task class whose name ends with the
            suffix, the head linears whose input columns read the residual. A base model (no head) needs no
            entry; a task class with no entry is refused (its head is unknown).
    """

    embeddings: tuple[str, ...]
    embed_norm: str
    norms: tuple[str, ...]
    entry: str = "embeddings"
    pooler: str | None = None
    project: str | None = None
    heads: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class StackSpec:
    """One list of identical blocks.

    Attributes:
        layers: dotted suffix of the ``nn.ModuleList`` holding the blocks (matched against module names,
            so task-head prefixes such as ``bert.`` or ``model.`` do not matter).
        attention: the attention modules of one block (e.g. self- and cross-attention).
        ffn: the feed-forward part of one block.
    """

    layers: str
    attention: tuple[AttentionSpec, ...]
    ffn: FFNSpec


@dataclass(frozen=True)
class ArchSpec(StackSpec):
    """Layout of one ``model_type``: its first stack, plus any further stacks.

    Attributes:
        more: further block lists, e.g. the decoder of an encoder-decoder. Blocks are numbered across all
            stacks in order (encoder layers first). A stack missing from a model (T5's encoder-only class)
            is skipped.
        variants: ``(config attribute, spec)`` pairs: when the model's config has that attribute set, the
            spec is used instead (T5's gated FFN).
        hidden: where the residual width lives outside the block linears (:class:`HiddenSpec`), for
            hidden-dimension pruning; ``None``: this type cannot lose residual dimensions.
    """

    more: tuple[StackSpec, ...] = ()
    variants: tuple[tuple[str, ArchSpec], ...] = ()
    hidden: HiddenSpec | None = None

    @property
    def stacks(self) -> tuple[StackSpec, ...]:
        """All block lists, the first one (this spec) included."""
        return (self, *self.more)


# --------------------------------------------------------------------------------------------- the table

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


def _bart_attention(module: str, keep_one: bool = False) -> AttentionSpec:
    return AttentionSpec(module=module, q=f"{module}.q_proj", k=f"{module}.k_proj", v=f"{module}.v_proj",
                         o=f"{module}.out_proj", heads_attr="num_heads", head_dim_attr="head_dim",
                         keep_one=keep_one)


_BART_FFN = FFNSpec(up="fc1", down="fc2", act="activation_fn")

_T5_BIAS = SharedBiasSpec(arg="position_bias", passed_on=True, producer="has_relative_attention_bias")


def _t5_attention(module: str, keep_one: bool = False) -> AttentionSpec:
    return AttentionSpec(module=module, q=f"{module}.q", k=f"{module}.k", v=f"{module}.v", o=f"{module}.o",
                         heads_attr="n_heads", head_dim_attr="key_value_proj_dim", size_attrs=("inner_dim",),
                         keep_one=keep_one, shared_bias=_T5_BIAS)


def _t5_ffn(sub: str, gated: bool) -> FFNSpec:
    dense = f"layer.{sub}.DenseReluDense"
    if gated:
        return FFNSpec(up=f"{dense}.wi_0", gate=f"{dense}.wi_1", down=f"{dense}.wo", act=f"{dense}.act")
    return FFNSpec(up=f"{dense}.wi", down=f"{dense}.wo", act=f"{dense}.act")


def _t5(gated: bool) -> ArchSpec:
    decoder = StackSpec(
        layers="decoder.block",
        attention=(_t5_attention("layer.0.SelfAttention", keep_one=True), _t5_attention("layer.1.EncDecAttention")),
        ffn=_t5_ffn("2", gated),
    )
    variants = () if gated else (("is_gated_act", _t5(gated=True)),)
    return ArchSpec(layers="encoder.block", attention=(_t5_attention("layer.0.SelfAttention"),),
                    ffn=_t5_ffn("1", gated), more=(decoder,), variants=variants)


_LLAMA_LIKE = ArchSpec(
    layers="layers",
    attention=(
        AttentionSpec(module="self_attn", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                      o="self_attn.o_proj", heads_attr=None, head_dim_attr="head_dim", keep_one=True),
    ),
    ffn=FFNSpec(up="mlp.gate_proj", gate="mlp.up_proj", down="mlp.down_proj", act="mlp.act_fn"),
)

_BERT_TABLES = ("embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings")
_BERT_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")
_SEQUENCE_HEADS = (("ForTokenClassification", ("classifier",)), ("ForQuestionAnswering", ("qa_outputs",)))


def _bert_hidden(classifier: tuple[str, ...]) -> HiddenSpec:
    """BERT-like embeddings and norms; ``classifier``: what the sequence-classification head reads of the residual
    (nothing when it reads the pooler's output, as BERT's does; multiple choice always reads the pooler's)."""
    heads = (("ForSequenceClassification", classifier), ("ForMultipleChoice", ()), *_SEQUENCE_HEADS)
    return HiddenSpec(embeddings=_BERT_TABLES, embed_norm="embeddings.LayerNorm", norms=_BERT_NORMS,
                      pooler="pooler.dense", heads=heads)


_ROBERTA_HIDDEN = _bert_hidden(("classifier.dense",))

ARCHITECTURES: dict[str, ArchSpec] = {
    # encoders
    "bert": replace(_BERT_LIKE, hidden=_bert_hidden(())),
    "roberta": replace(_BERT_LIKE, hidden=_ROBERTA_HIDDEN),
    "xlm-roberta": replace(_BERT_LIKE, hidden=_ROBERTA_HIDDEN),
    "electra": replace(_BERT_LIKE, hidden=HiddenSpec(
        embeddings=_BERT_TABLES, embed_norm="embeddings.LayerNorm", norms=_BERT_NORMS, project="embeddings_project",
        heads=(("ForSequenceClassification", ("classifier.dense",)), *_SEQUENCE_HEADS))),
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
        hidden=HiddenSpec(embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
                          embed_norm="embeddings.LayerNorm", norms=("sa_layer_norm", "output_layer_norm"),
                          heads=(("ForSequenceClassification", ("pre_classifier",)),
                                 ("ForMultipleChoice", ("pre_classifier",)), *_SEQUENCE_HEADS)),
    ),
    "mpnet": ArchSpec(
        layers="encoder.layer",
        attention=(
            AttentionSpec(module="attention.attn", q="attention.attn.q", k="attention.attn.k", v="attention.attn.v",
                          o="attention.attn.o", size_attrs=("all_head_size",),
                          shared_bias=SharedBiasSpec(arg="position_bias")),
        ),
        ffn=_BERT_LIKE.ffn,
        hidden=HiddenSpec(embeddings=("embeddings.word_embeddings", "embeddings.position_embeddings"),
                          embed_norm="embeddings.LayerNorm", norms=("attention.LayerNorm", "output.LayerNorm"),
                          pooler="pooler.dense",
                          heads=(("ForSequenceClassification", ("classifier.dense",)), ("ForMultipleChoice", ()),
                                 *_SEQUENCE_HEADS)),
    ),
    "deberta-v2": ArchSpec(
        layers="encoder.layer",
        attention=(
            AttentionSpec(module="attention.self", q="attention.self.query_proj", k="attention.self.key_proj",
                          v="attention.self.value_proj", o="attention.output.dense", size_attrs=("all_head_size",),
                          extra_rows=("attention.self.pos_key_proj", "attention.self.pos_query_proj")),
        ),
        ffn=_BERT_LIKE.ffn,
    ),
    "vit": ArchSpec(
        layers="layers",
        attention=(
            AttentionSpec(module="attention", q="attention.q_proj", k="attention.k_proj", v="attention.v_proj",
                          o="attention.o_proj", head_dim_attr="head_dim"),
        ),
        ffn=FFNSpec(up="mlp.fc1", down="mlp.fc2", act="mlp.activation_fn"),
    ),
    # encoder-decoders
    "bart": ArchSpec(
        layers="encoder.layers",
        attention=(_bart_attention("self_attn"),),
        ffn=_BART_FFN,
        more=(StackSpec(layers="decoder.layers",
                        attention=(_bart_attention("self_attn", keep_one=True), _bart_attention("encoder_attn")),
                        ffn=_BART_FFN),),
    ),
    "t5": _t5(gated=False),
    # decoders
    "gpt2": ArchSpec(
        layers="h",
        attention=(
            AttentionSpec(module="attn", q="attn.c_attn", k="attn.c_attn", v="attn.c_attn", o="attn.c_proj",
                          heads_attr="num_heads", head_dim_attr="head_dim", size_attrs=("split_size",),
                          keep_one=True),
        ),
        ffn=FFNSpec(up="mlp.c_fc", down="mlp.c_proj", act="mlp.act", keep_one=True),
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}

REJECTED: dict[str, str] = {}
"""``model_type`` -> why its heads/neurons cannot be removed exactly (the error message says so)."""


class UnsupportedModelError(ValueError):
    """The model's ``model_type`` has no entry in :data:`ARCHITECTURES`."""


def _supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def model_type_of(model_or_config: nn.Module | object | str) -> str:
    """Return the ``model_type`` string of a model, a config or a plain string."""
    if isinstance(model_or_config, str):
        return model_or_config
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if not model_type:
        raise UnsupportedModelError(
            f"{type(model_or_config).__name__} has no config.model_type; blockprune supports Hugging Face "
            f"models of these types: {_supported()}"
        )
    return model_type


def get_arch(model_or_config: nn.Module | object | str) -> ArchSpec:
    """Look up the :class:`ArchSpec` of a model, config or ``model_type`` (config variants resolved).

    Raises:
        UnsupportedModelError: the type is not in the table (the message lists the supported ones and the
            masking-only fallback), or it is known not to shrink exactly (the message says why).
    """
    model_type = model_type_of(model_or_config)
    if model_type in REJECTED:
        raise UnsupportedModelError(
            f"model_type {model_type!r} cannot be pruned structurally with exact shrinking: {REJECTED[model_type]}. "
            "Use Pruner(model, config, fallback=True) for masking only."
        )
    try:
        spec = ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported: {_supported()}. Add an ArchSpec entry to "
            "blockprune.surgery.arch.ARCHITECTURES to support it (see that module's docstring), or use "
            "Pruner(model, config, fallback=True) to mask every nn.Linear without shrinking (no speedup)."
        ) from None
    config = None if isinstance(model_or_config, str) else getattr(model_or_config, "config", model_or_config)
    for attr, variant in spec.variants:
        if getattr(config, attr, False):
            return variant
    return spec


def _module_list(model: nn.Module, suffix: str) -> nn.ModuleList | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
            return module
    return None


def iter_blocks(model: nn.Module, spec: ArchSpec | None = None) -> list[tuple[StackSpec, nn.Module]]:
    """Every transformer block of ``model`` in order (stack by stack), each with its :class:`StackSpec`.

    Raises:
        UnsupportedModelError: no stack of ``spec`` exists in the model.
    """
    spec = spec or get_arch(model)
    blocks: list[tuple[StackSpec, nn.Module]] = []
    for stack in spec.stacks:
        found = _module_list(model, stack.layers)
        if found is not None:
            blocks += [(stack, block) for block in found]
    if not blocks:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no module list named '*{spec.layers}'; its layout does not match "
            "the architecture table entry for its model_type."
        )
    return blocks


def find_blocks(model: nn.Module, spec: ArchSpec | None = None) -> list[nn.Module]:
    """Return the transformer blocks of ``model`` in order (all stacks, encoder first).

    Raises:
        UnsupportedModelError: no ``nn.ModuleList`` named like a stack of ``spec`` exists in the model.
    """
    return [block for _, block in iter_blocks(model, spec)]


def get_path(root: nn.Module, path: str) -> nn.Module:
    """Return the attribute at a dotted ``path`` under ``root`` (modules or plain callables)."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def has_path(root: nn.Module, path: str) -> bool:
    """Whether a dotted ``path`` exists under ``root``."""
    try:
        get_path(root, path)
    except AttributeError:
        return False
    return True


def set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    """Replace the module at a dotted ``path`` under ``root``."""
    parent_path, _, leaf = path.rpartition(".")
    parent = get_path(root, parent_path) if parent_path else root
    setattr(parent, leaf, value)


# --------------------------------------------------------------------------------------------- linears


def is_linear_like(module: object) -> bool:
    """An ``nn.Linear`` or a transformers ``Conv1D`` (a linear whose weight is stored ``(in, out)``)."""
    return isinstance(module, (nn.Linear, Conv1D))


def features(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of an ``nn.Linear``, a ``Conv1D`` or a wrapper exposing them."""
    if isinstance(module, Conv1D):
        return module.nf, module.nx
    return module.out_features, module.in_features


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight of a linear-like module as an ``(out, in)`` view (``Conv1D`` weights are transposed)."""
    return as_out_in(module, module.weight)


def as_out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor laid out like ``module.weight`` (e.g. its gradient) as an ``(out, in)`` view."""
    return tensor.t() if isinstance(module, Conv1D) else tensor


# --------------------------------------------------------------------------------------------- heads


def head_dim(block: nn.Module, attn: AttentionSpec) -> int:
    """Size of one head of the attention module of ``block``."""
    return int(getattr(get_path(block, attn.module), attn.head_dim_attr))


def num_heads(block: nn.Module, attn: AttentionSpec) -> int:
    """Number of query heads the attention module of ``block`` currently has (0 once emptied)."""
    module = get_path(block, attn.module)
    if isinstance(module, EmptyAttention):
        return 0
    if attn.heads_attr is not None:
        return int(getattr(module, attn.heads_attr))
    return features(get_path(block, attn.o))[1] // head_dim(block, attn)


def num_units(block: nn.Module, attn: AttentionSpec) -> int:
    """Number of removable attention units: key/value heads (each with its group of query heads)."""
    if num_heads(block, attn) == 0:
        return 0
    rows = features(get_path(block, attn.k))[0]
    return rows // (3 if attn.fused else 1) // head_dim(block, attn)


class EmptyAttention(nn.Module):
    """Stands in for an attention module that lost every head.

    Its output is exactly what the original produced with zero heads: a tensor of width 0 (the
    following O projection, with 0 input columns, then adds only its bias), or, when the O projection
    lives inside the attention module, O's bias itself. ``out`` keeps its original attribute name so the
    state-dict keys do not change. With ``passthrough`` (T5), the forward argument of that name is returned
    as the second output, as the original module passes its position bias on to the next layer.
    """

    def __init__(self, heads_attr: str | None, head_dim_attr: str, head_dim: int, out_name: str | None = None,
                 out: nn.Module | None = None, passthrough: str | None = None) -> None:
        super().__init__()
        if heads_attr is not None:
            setattr(self, heads_attr, 0)
        setattr(self, head_dim_attr, head_dim)
        self._out_name = out_name
        self._passthrough = passthrough
        if out_name is not None and out is not None:
            self.add_module(out_name, out)

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> tuple[object, ...]:
        out = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self._out_name is not None:
            out = getattr(self, self._out_name)(out)
        if self._passthrough is not None:
            return out, kwargs.get(self._passthrough), None
        return out, None
