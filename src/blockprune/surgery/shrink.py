"""Shrink: cut the attention heads and FFN neurons that pruning emptied out of a model, exactly.

After pruning, the masks are baked into the weights, so a pruned model is a full-size model with zeros in
it. This module finds the heads and neurons whose contribution is provably zero (or a constant) and slices
them out of the ``nn.Linear`` modules, giving a smaller *dense* model of the same stock class whose outputs
equal the unshrunk model's up to float rounding. It reads only the architecture table (:mod:`.arch`) and
never imports the training side, so it works on any model with zeros in its weights.

Exact removal rules (``d`` is the head size):

* head ``h`` (rows ``h*d:(h+1)*d`` of Q/K/V, columns of O) goes iff its V rows are all zero, or its O
  columns are all zero. With zero V rows the head outputs its V bias ``b`` whatever it attends to (softmax
  weights sum to 1), so ``O[:, h] · b`` is folded into O's bias first; if O has no bias and that is not 0
  the head stays. A head with only zero Q or K rows is kept: it still outputs mean(V)·O, which depends on
  the input. With grouped-query attention the unit is a key/value head with its ``r`` query heads: it goes
  iff its V rows are zero (folded through the O columns of all ``r`` query heads) or the O columns of all
  its query heads are zero. A fused ``[Q; K; V]``
  projection (GPT-2) loses the unit's rows in all three sections; extra per-head projections (DeBERTa's
  relative-position ones) lose the unit's rows too. A shared per-head position bias (MPNet, T5) is never
  sliced; each shrunk layer selects its kept heads from it (:mod:`.headbias`).
* FFN neuron ``j`` goes iff down's column ``j`` is zero, or its output is a constant ``c`` (up row zero,
  plus gate row zero for gated MLPs). ``c · down[:, j]`` is folded into down's bias first; if down has
  no bias and ``c != 0`` the neuron stays.
* a layer may lose every head (its attention becomes :class:`~blockprune.surgery.arch.EmptyAttention`, and O adds
  only its bias) or every neuron (up has 0 rows; down outputs its bias). Attentions marked ``keep_one``
  (decoder self-attention, whose KV cache tracks the sequence length) and T5's bias producer keep one
  unit instead, whose output is exactly zero. FFNs marked ``keep_one`` (GPT-2's ``Conv1D`` cannot take 0
  input features) keep neuron 0 unfolded.

``nn.Linear`` and transformers' ``Conv1D`` (GPT-2) are both sliced; each keeps its type.

Per-layer widths do not fit a stock ``config.json``, so :func:`shape_record` describes them as JSON and
:func:`apply_shapes` resizes a freshly built full-size model to them (used when loading a saved model). A residual
width cut by :func:`blockprune.surgery.hidden.shrink_hidden` is recorded too (``"hidden"``).

Example:
    >>> result = shrink(model)                     # doctest: +SKIP
    >>> result.params_after / result.params_before  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from blockprune.surgery.arch import (
    AttentionSpec,
    EmptyAttention,
    FFNSpec,
    features,
    get_path,
    has_path,
    head_dim,
    is_linear_like,
    iter_blocks,
    model_type_of,
    num_heads,
    num_units,
    set_path,
    weight_out_in,
)
from blockprune.surgery.headbias import select_heads, selected_heads
from blockprune.surgery.hidden import hidden_width, narrowed_width, resize_hidden
from blockprune.surgery.slicing import ShrinkError, slice_linear

RECORD_FORMAT = "blockprune-shapes"
RECORD_VERSION = 2
"""Version 2 added the optional ``"hidden"`` field (a narrowed residual width); records without it are still
written as version 1, so older readers keep reading every record that they can apply."""


@dataclass
class ShrinkResult:
    """What :func:`shrink` kept, as indices into the model it was given.

    Attributes:
        heads_kept: ``heads_kept[layer][group]`` lists the query-head indices kept in that attention group
            (layers numbered across stacks: encoder first, then decoder).
        neurons_kept: ``neurons_kept[layer]`` lists the FFN neuron indices kept.
        params_before: parameter count before shrinking.
        params_after: parameter count after shrinking.
        neurons_folded: neurons removed whose constant output was folded into the down bias.
        ffn_padding: ``ffn_padding[layer]`` zero neurons appended after the kept ones (``ffn_multiple``).
        units_folded: attention units (heads; GQA: key/value heads) removed whose constant output (zero V
            rows, non-zero V bias) was folded into O's bias.
    """

    heads_kept: list[list[list[int]]]
    neurons_kept: list[list[int]]
    params_before: int
    params_after: int
    neurons_folded: int = 0
    ffn_padding: list[int] = field(default_factory=list)
    units_folded: int = 0

    @property
    def heads_per_layer(self) -> list[list[int]]:
        """Number of heads kept, per layer and attention group."""
        return [[len(group) for group in layer] for layer in self.heads_kept]

    @property
    def ffn_per_layer(self) -> list[int]:
        """Number of FFN neurons kept, per layer (without the zero neurons of ``ffn_padding``)."""
        return [len(layer) for layer in self.neurons_kept]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for reports)."""
        return asdict(self)


def _total_params(model: nn.Module) -> int:
    """Number of distinct parameter elements (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- slicing


def _linear(block: nn.Module, path: str, layer: int) -> nn.Module:
    module = get_path(block, path)
    if not is_linear_like(module):
        raise ShrinkError(
            f"layer {layer}: '{path}' is a {type(module).__name__}, not an nn.Linear; bake the pruning masks "
            "into the weights (Pruner.finalize) before shrinking."
        )
    return module


def _index(values: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.long)


# --------------------------------------------------------------------------------------------- heads


@dataclass(frozen=True)
class _Geometry:
    """Head layout of one attention: ``units`` KV heads, each read by ``ratio`` query heads of size ``d``."""

    units: int
    ratio: int
    d: int

    def q_rows(self, keep: Sequence[int]) -> torch.Tensor:
        """Rows of Q (and columns of O) of the kept units."""
        width = self.ratio * self.d
        return _index([u * width + i for u in keep for i in range(width)])

    def kv_rows(self, keep: Sequence[int]) -> torch.Tensor:
        """Rows of K (and V) of the kept units."""
        return _index([u * self.d + i for u in keep for i in range(self.d)])

    def heads(self, keep: Sequence[int]) -> list[int]:
        """Query-head indices of the kept units."""
        return [u * self.ratio + j for u in keep for j in range(self.ratio)]


def _geometry(block: nn.Module, attn: AttentionSpec) -> _Geometry:
    units = num_units(block, attn)
    return _Geometry(units, num_heads(block, attn) // units if units else 1, head_dim(block, attn))


def _unit_plan(block: nn.Module, attn: AttentionSpec, layer: int) -> tuple[list[bool], dict[int, torch.Tensor]]:
    """Which units contribute nothing or a constant: (removable, ``{unit: its constant output through O}``).

    A unit goes when its O columns are zero, or when its V rows are zero: it then outputs its V bias ``b``
    at every position (softmax weights sum to 1), so ``O[:, unit] · b`` summed over its query heads is a
    constant, to be folded into O's bias. Without an O bias such a unit stays unless that constant is 0.
    """
    g = _geometry(block, attn)
    v, o = _linear(block, attn.v, layer), _linear(block, attn.o, layer)
    v_weight, v_bias = weight_out_in(v).detach(), None if v.bias is None else v.bias.detach()
    if attn.fused:  # rows [Q; K; V]
        v_weight = v_weight[2 * g.units * g.d:]
        v_bias = None if v_bias is None else v_bias[2 * g.units * g.d:]
    v_zero = (v_weight.reshape(g.units, g.d, -1) == 0).flatten(1).all(dim=1)
    o_weight = weight_out_in(o).detach()
    o_zero = (o_weight.reshape(o_weight.shape[0], g.units, -1) == 0).permute(1, 0, 2).flatten(1).all(dim=1)
    constants: dict[int, torch.Tensor] = {}
    if v_bias is not None:
        for unit in (v_zero & ~o_zero).nonzero().flatten().tolist():
            each_head = v_bias[unit * g.d:(unit + 1) * g.d].double().repeat(g.ratio)
            constant = o_weight[:, g.q_rows([unit])].double() @ each_head
            if not bool((constant != 0).any()):
                continue
            if o.bias is None:
                v_zero[unit] = False  # nowhere to put the constant: the unit stays
            else:
                constants[unit] = constant
    return (v_zero | o_zero).tolist(), constants


def _keep_units(block: nn.Module, attn: AttentionSpec, keep: Sequence[int], layer: int) -> None:
    """Slice the attention of ``block`` down to units ``keep`` (original order kept)."""
    g = _geometry(block, attn)
    if list(keep) == list(range(g.units)):
        return
    q_rows, kv_rows = g.q_rows(keep), g.kv_rows(keep)
    new_o = slice_linear(_linear(block, attn.o, layer), cols=q_rows)
    if not keep:
        _empty_attention(block, attn, g.d, new_o)
        return
    module = get_path(block, attn.module)
    if attn.shared_bias is not None:
        _select_bias_heads(module, attn, g.heads(keep))
    if attn.fused:
        rows = torch.cat([kv_rows + part * g.units * g.d for part in range(3)])
        set_path(block, attn.q, slice_linear(_linear(block, attn.q, layer), rows=rows))
    else:
        set_path(block, attn.q, slice_linear(_linear(block, attn.q, layer), rows=q_rows))
        for path in (attn.k, attn.v):
            set_path(block, path, slice_linear(_linear(block, path, layer), rows=kv_rows))
    for path in attn.extra_rows:
        if has_path(block, path):
            set_path(block, path, slice_linear(_linear(block, path, layer), rows=q_rows))
    set_path(block, attn.o, new_o)
    if attn.heads_attr is not None:
        setattr(module, attn.heads_attr, len(keep) * g.ratio)
    for name in attn.size_attrs:
        setattr(module, name, len(keep) * g.ratio * g.d)


def _select_bias_heads(module: nn.Module, attn: AttentionSpec, heads: list[int]) -> None:
    """Record the kept heads (as indices of the unpruned model) for the shared position bias."""
    previous = selected_heads(module)
    index = _index(heads)
    select_heads(module, index if previous is None else previous.cpu()[index], attn.shared_bias)


def must_keep_one(block: nn.Module, attn: AttentionSpec) -> bool:
    """Decoders (KV cache bookkeeping) and T5's bias producer never lose their last unit."""
    bias = attn.shared_bias
    producer = bias is not None and bias.producer is not None and \
        bool(getattr(get_path(block, attn.module), bias.producer, False))
    return attn.keep_one or producer


def _empty_attention(block: nn.Module, attn: AttentionSpec, d: int, new_o: nn.Module) -> None:
    """Replace the attention module by :class:`EmptyAttention`; O (0 input columns) keeps its key names."""
    prefix = attn.module + "."
    inner = attn.o[len(prefix):] if attn.o.startswith(prefix) else None
    if inner is not None and "." in inner:
        raise ShrinkError(
            f"cannot empty '{attn.module}': its O projection '{attn.o}' is nested more than one level inside it; "
            "EmptyAttention can only hold a direct child."
        )
    passthrough = attn.shared_bias.arg if attn.shared_bias is not None and attn.shared_bias.passed_on else None
    empty = EmptyAttention(attn.heads_attr, attn.head_dim_attr, d, out_name=inner, out=new_o if inner else None,
                           passthrough=passthrough)
    for name in attn.size_attrs:
        setattr(empty, name, 0)
    empty.train(get_path(block, attn.module).training)
    set_path(block, attn.module, empty)
    if inner is None:
        set_path(block, attn.o, new_o)


# --------------------------------------------------------------------------------------------- FFN


def _activation(block: nn.Module, ffn: FFNSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    act = get_path(block, ffn.act)
    if not callable(act):
        raise ShrinkError(f"'{ffn.act}' is not callable; the architecture table entry is wrong.")
    return act


def _bias_or_zeros(linear: nn.Module) -> torch.Tensor:
    if linear.bias is None:
        return linear.weight.new_zeros(features(linear)[0])
    return linear.bias.detach()


def _neuron_plan(block: nn.Module, ffn: FFNSpec, layer: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Return (neurons kept, neurons to fold, their constant outputs).

    A neuron goes when its down column is zero, or when its output ``act(up_j(x)) [* gate_j(x)]`` does
    not depend on ``x``; that constant is folded into down's bias (impossible without a bias unless 0).
    """
    up, down = _linear(block, ffn.up, layer), _linear(block, ffn.down, layer)
    up_zero = (weight_out_in(up).detach() == 0).all(dim=1)
    up_const = _activation(block, ffn)(_bias_or_zeros(up).unsqueeze(0)).squeeze(0)
    if ffn.gate is None:
        constant, value = up_zero, up_const
    else:
        gate = _linear(block, ffn.gate, layer)
        gate_zero = (weight_out_in(gate).detach() == 0).all(dim=1)
        gate_bias = _bias_or_zeros(gate)
        value = torch.where((gate_bias == 0) | (up_const == 0), torch.zeros_like(up_const), up_const * gate_bias)
        constant = (up_zero & gate_zero) | (up_zero & (up_const == 0)) | (gate_zero & (gate_bias == 0))
    value = torch.where(constant, value, torch.zeros_like(value))
    down_zero = (weight_out_in(down).detach() == 0).all(dim=0)
    if down.bias is None:
        constant &= value == 0
    removable = down_zero | constant
    fold = removable & ~down_zero & (value != 0)
    keep = (~removable).nonzero().flatten().tolist()
    fold_idx = fold.nonzero().flatten()
    return keep, fold_idx, value[fold_idx]


def _keep_neurons(block: nn.Module, ffn: FFNSpec, keep: Sequence[int], layer: int,
                  fold_idx: torch.Tensor | None = None, fold_values: torch.Tensor | None = None) -> None:
    """Fold constant neurons into down's bias, then slice the FFN down to neurons ``keep``."""
    up, down = _linear(block, ffn.up, layer), _linear(block, ffn.down, layer)
    if fold_idx is not None and fold_values is not None and fold_idx.numel():
        columns = weight_out_in(down).detach()[:, fold_idx].double()
        shift = columns @ fold_values.double()
        down.bias.data.copy_((down.bias.detach().double() + shift).to(down.bias.dtype))
    if list(keep) == list(range(features(up)[0])):
        return
    rows = _index(keep)
    for path in (ffn.up, ffn.gate):
        if path is not None:
            set_path(block, path, slice_linear(_linear(block, path, layer), rows=rows))
    set_path(block, ffn.down, slice_linear(down, cols=rows))


def _pad_neurons(block: nn.Module, ffn: FFNSpec, multiple: int, layer: int) -> int:
    """Append zero neurons until a non-empty FFN's width is a multiple of ``multiple``; return how many.

    A zero neuron (zero up/gate row and bias, zero down column) adds exactly nothing to the output, whatever
    the activation, and stays zero in further training (its gradients are zero too).
    """
    width = features(_linear(block, ffn.up, layer))[0]
    extra = -width % multiple if width else 0
    if extra:
        rows = _index([*range(width), *[0] * extra])  # copies of neuron 0, zeroed right below
        for path in (ffn.up, ffn.gate):
            if path is not None:
                grown = slice_linear(_linear(block, path, layer), rows=rows)
                weight_out_in(grown)[width:] = 0
                if grown.bias is not None:
                    grown.bias[width:] = 0
                set_path(block, path, grown)
        grown = slice_linear(_linear(block, ffn.down, layer), cols=rows)
        weight_out_in(grown)[:, width:] = 0
        set_path(block, ffn.down, grown)
    return extra


# --------------------------------------------------------------------------------------------- public


def check_ffn_multiple(value: object, name: str = "ffn_multiple=") -> None:
    """Raise :class:`ShrinkError` unless ``value`` is a whole number ≥ 1; ``name`` prefixes the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShrinkError(f"{name}{value!r} must be a whole number ≥ 1 (1 = no padding)")


def shrink(model: nn.Module, ffn_multiple: int = 1) -> ShrinkResult:
    """Remove every attention head and FFN neuron whose contribution is exactly zero or constant, in place.

    The model stays its stock class; only ``nn.Linear`` (or ``Conv1D``) modules are replaced by smaller ones
    (same type, dtype and device) and the head-count attributes of the attention modules are updated.
    Shrinking twice changes nothing the second time.

    Args:
        model: a supported Hugging Face model (see :data:`~blockprune.surgery.arch.ARCHITECTURES`) whose pruning
            masks are baked into its weights.
        ffn_multiple: pad each non-empty FFN with zero neurons to a multiple of this width (outputs stay
            exactly the same). Matrix kernels run faster on aligned widths: on the 2-core CPU of our
            benchmarks an FFN of 427 neurons padded to 432 made MiniLM's forward ~5% faster. 1: no padding.

    Returns:
        What was kept per layer, and the parameter counts before and after.

    Raises:
        ShrinkError: a projection is not an ``nn.Linear`` (masks not baked in yet).
        UnsupportedModelError: the model type is not in the architecture table.

    Example:
        >>> result = shrink(model)          # doctest: +SKIP
        >>> result.heads_per_layer          # doctest: +SKIP
        [[7], [12], [3], [0], [9], [5]]
    """
    check_ffn_multiple(ffn_multiple)
    before = _total_params(model)
    heads_kept: list[list[list[int]]] = []
    neurons_kept: list[list[int]] = []
    padding: list[int] = []
    folded = units_folded = 0
    with torch.no_grad():
        for layer, (stack, block) in enumerate(iter_blocks(model)):
            attentions = [_shrink_attention(block, attn, layer) for attn in stack.attention]
            heads_kept.append([heads for heads, _ in attentions])
            units_folded += sum(count for _, count in attentions)
            keep_n, fold_idx, fold_values = _neuron_plan(block, stack.ffn, layer)
            if not keep_n and stack.ffn.keep_one and features(_linear(block, stack.ffn.up, layer))[0]:
                keep_n, fold_idx, fold_values = [0], fold_idx[fold_idx != 0], fold_values[fold_idx != 0]
            _keep_neurons(block, stack.ffn, keep_n, layer, fold_idx, fold_values)
            neurons_kept.append(keep_n)
            padding.append(_pad_neurons(block, stack.ffn, ffn_multiple, layer))
            folded += int(fold_idx.numel())
    return ShrinkResult(heads_kept, neurons_kept, before, _total_params(model), folded, padding, units_folded)


def _shrink_attention(block: nn.Module, attn: AttentionSpec, layer: int) -> tuple[list[int], int]:
    """Remove the removable units of one attention; return the query-head indices kept, and units folded."""
    if num_heads(block, attn) == 0:
        return [], 0
    geometry = _geometry(block, attn)
    removable, constants = _unit_plan(block, attn, layer)
    keep = [u for u, gone in enumerate(removable) if not gone]
    if not keep and must_keep_one(block, attn):
        keep = [0]  # unchanged: its output is exactly zero (or its constant), but the module keeps running
    folded = [u for u in constants if u not in keep]
    if folded:
        o = _linear(block, attn.o, layer)
        o.bias.add_(sum(constants[u] for u in folded).to(o.bias.dtype))
    _keep_units(block, attn, keep, layer)
    return geometry.heads(keep), len(folded)


def current_shapes(model: nn.Module) -> list[dict[str, Any]]:
    """Per-layer widths of ``model`` now: ``[{"heads": [query heads per attention], "ffn": width}, ...]``."""
    layers = []
    for layer, (stack, block) in enumerate(iter_blocks(model)):
        heads = [num_heads(block, attn) for attn in stack.attention]
        layers.append({"heads": heads, "ffn": features(_linear(block, stack.ffn.up, layer))[0]})
    return layers


def shape_record(model: nn.Module, result: ShrinkResult | None = None) -> dict[str, Any]:
    """Describe the per-layer widths of ``model`` as JSON-able data (the ``pruned_shapes.json`` content).

    Args:
        model: a (shrunk or not) supported model.
        result: the :class:`ShrinkResult` that produced it; when given, each layer also lists the original
            indices kept (``kept_heads``, ``kept_neurons``), for reports. They must match the widths (with
            ``ffn_padding``).

    Example:
        >>> shape_record(model)["layers"][0]      # doctest: +SKIP
        {'heads': [3], 'ffn': 41}
    """
    layers = current_shapes(model)
    if result is not None:
        padding = result.ffn_padding or [0] * len(layers)
        widths = [kept + pad for kept, pad in zip(result.ffn_per_layer, padding, strict=False)]
        if result.heads_per_layer != [lay["heads"] for lay in layers] or widths != [lay["ffn"] for lay in layers]:
            raise ShrinkError("the ShrinkResult does not describe this model's current shapes; pass the result "
                              "returned by shrink() on this very model, or none.")
        for lay, heads, neurons in zip(layers, result.heads_kept, result.neurons_kept, strict=True):
            lay["kept_heads"] = [list(g) for g in heads]
            lay["kept_neurons"] = list(neurons)  # any zero neurons of ffn_multiple come after these
    record = {"format": RECORD_FORMAT, "version": 1, "model_type": model_type_of(model), "layers": layers}

    hidden = narrowed_width(model)
    if hidden is not None:
        record.update(version=RECORD_VERSION, hidden=hidden)
    return record


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_record(record: object, model: nn.Module) -> list[dict[str, Any]]:
    """Validate a shape record against ``model`` (which must be at least as wide) and return its layers.

    Raises:
        ShrinkError: wrong format, newer version, other model type, other layer count, malformed entries,
            or a width larger than the model's.
    """
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ShrinkError(f"not a blockprune shape record (expected \"format\": \"{RECORD_FORMAT}\").")
    version = record.get("version")
    if not _is_count(version) or version < 1:
        raise ShrinkError(f"shape record has an invalid version {version!r}; expected {RECORD_VERSION}.")
    if version > RECORD_VERSION:
        raise ShrinkError(f"shape record version {version} is newer than this blockprune reads "
                          f"({RECORD_VERSION}); upgrade blockprune.")
    if record.get("model_type") != model_type_of(model):
        raise ShrinkError(f"shape record is for model_type {record.get('model_type')!r}, but the config "
                          f"builds {model_type_of(model)!r}.")
    layers, have = record.get("layers"), current_shapes(model)
    if not isinstance(layers, list) or len(layers) != len(have):
        count = len(layers) if isinstance(layers, list) else "no"
        raise ShrinkError(f"shape record has {count} layers, but the config builds {len(have)}.")
    for i, (want, full) in enumerate(zip(layers, have, strict=True)):
        heads = want.get("heads") if isinstance(want, dict) else None
        ffn = want.get("ffn") if isinstance(want, dict) else None
        if not isinstance(heads, list) or len(heads) != len(full["heads"]) or not all(map(_is_count, heads)) \
                or not _is_count(ffn):
            raise ShrinkError(f"shape record layer {i} is malformed: {want!r}; expected "
                              f"{{\"heads\": [{len(full['heads'])} counts], \"ffn\": count}}.")
        if any(h > f for h, f in zip(heads, full["heads"], strict=True)) or ffn > full["ffn"]:
            raise ShrinkError(f"shape record layer {i} asks for {want['heads']} heads and {ffn} FFN neurons, "
                              f"more than the model has ({full['heads']}, {full['ffn']}).")
    if "hidden" in record:

        hidden, width = record["hidden"], hidden_width(model)
        if not _is_count(hidden) or not 1 <= hidden <= width:
            raise ShrinkError(f"shape record's hidden width {hidden!r} must be a whole number from 1 to {width}, "
                              "the model's residual width.")
    return layers


def apply_shapes(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Resize ``model`` (typically freshly built at full size) to the widths in ``record``, in place.

    The first ``n`` heads / neurons of each layer are kept: the values do not matter, as the saved weights
    are loaded right after. Applying the record of a model's own shapes changes nothing.

    Raises:
        ShrinkError: the record is malformed or does not fit the model (see :func:`check_record`).

    Example:
        >>> fresh = AutoModelForSequenceClassification.from_config(config)   # doctest: +SKIP
        >>> apply_shapes(fresh, json.loads(Path("pruned_shapes.json").read_text()))  # doctest: +SKIP
    """
    layers = check_record(record, model)
    with torch.no_grad():
        for layer, ((stack, block), want) in enumerate(zip(iter_blocks(model), layers, strict=True)):
            for attn, n in zip(stack.attention, want["heads"], strict=True):
                if num_heads(block, attn) > 0:
                    _apply_heads(block, attn, n, layer)
            _keep_neurons(block, stack.ffn, range(want["ffn"]), layer)
        if "hidden" in record:

            resize_hidden(model, record["hidden"])
    return model


def _apply_heads(block: nn.Module, attn: AttentionSpec, n: int, layer: int) -> None:
    """Keep the first ``n`` query heads (whole units); their shared-bias head indices are loaded with the weights."""
    geometry = _geometry(block, attn)
    if n % geometry.ratio:
        raise ShrinkError(f"shape record layer {layer} asks for {n} heads, but heads go in groups of "
                          f"{geometry.ratio} (query heads per key/value head).")
    _keep_units(block, attn, range(n // geometry.ratio), layer)
