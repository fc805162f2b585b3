"""Shrink: cut the attention heads and FFN neurons that pruning emptied out of a model, exactly.

After pruning, the masks are baked into the weights, so a pruned model is a full-size model with zeros in
it. This module finds the heads and neurons whose contribution is provably zero (or a constant) and slices
them out of the ``nn.Linear`` modules, giving a smaller *dense* model of the same stock class whose outputs
equal the unshrunk model's up to float rounding. It reads only the architecture table (:mod:`.arch`) and
never imports the training side, so it works on any model with zeros in its weights.

Exact removal rules (``d`` is the head size):

* head ``h`` (rows ``h*d:(h+1)*d`` of Q/K/V, columns of O) goes iff its V rows and V bias are all zero,
  or its O columns are all zero. A head with only zero Q or K rows is kept: it still outputs mean(V)·O.
* FFN neuron ``j`` goes iff down's column ``j`` is zero, or its output is a constant ``c`` (up row zero,
  plus gate row zero for gated MLPs). ``c · down[:, j]`` is folded into down's bias first; if down has
  no bias and ``c != 0`` the neuron stays.
* a layer may lose every head (its attention becomes :class:`~blockprune.arch.EmptyAttention`, and O adds
  only its bias) or every neuron (up has 0 rows; down outputs its bias).

Per-layer widths do not fit a stock ``config.json``, so :func:`shape_record` describes them as JSON and
:func:`apply_shapes` resizes a freshly built full-size model to them (used when loading a saved model).

Example:
    >>> result = shrink(model)                     # doctest: +SKIP
    >>> result.params_after / result.params_before  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .arch import (
    AttentionSpec,
    EmptyAttention,
    FFNSpec,
    find_blocks,
    get_arch,
    get_path,
    head_dim,
    model_type_of,
    num_heads,
    set_path,
)

RECORD_FORMAT = "blockprune-shapes"
RECORD_VERSION = 1


class ShrinkError(ValueError):
    """The model cannot be shrunk, or a shape record does not fit it."""


@dataclass
class ShrinkResult:
    """What :func:`shrink` kept, as indices into the model it was given.

    Attributes:
        heads_kept: ``heads_kept[layer][group]`` lists the head indices kept in that attention group.
        neurons_kept: ``neurons_kept[layer]`` lists the FFN neuron indices kept.
        params_before: parameter count before shrinking.
        params_after: parameter count after shrinking.
        neurons_folded: neurons removed whose constant output was folded into the down bias.
    """

    heads_kept: list[list[list[int]]]
    neurons_kept: list[list[int]]
    params_before: int
    params_after: int
    neurons_folded: int = 0

    @property
    def heads_per_layer(self) -> list[list[int]]:
        """Number of heads kept, per layer and attention group."""
        return [[len(group) for group in layer] for layer in self.heads_kept]

    @property
    def ffn_per_layer(self) -> list[int]:
        """Number of FFN neurons kept, per layer."""
        return [len(layer) for layer in self.neurons_kept]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for reports)."""
        return asdict(self)


def count_params(model: nn.Module) -> int:
    """Number of distinct parameter elements (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------- slicing


def _linear(block: nn.Module, path: str, layer: int) -> nn.Linear:
    module = get_path(block, path)
    if not isinstance(module, nn.Linear):
        raise ShrinkError(
            f"layer {layer}: '{path}' is a {type(module).__name__}, not an nn.Linear; bake the pruning masks "
            "into the weights (Pruner.finalize) before shrinking."
        )
    return module


def slice_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """Return a new ``nn.Linear`` keeping output ``rows`` and input ``cols`` (index tensors; ``None`` keeps all).

    The copy has the same dtype, device and ``requires_grad`` as the original.

    Example:
        >>> slice_linear(nn.Linear(4, 3), rows=torch.tensor([0, 2])).weight.shape
        torch.Size([2, 4])
    """
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
        bias = None if bias is None else bias.index_select(0, rows.to(bias.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    with warnings.catch_warnings():  # a 0-feature Linear warns that initializing it is a no-op: it is
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    new.weight = nn.Parameter(weight.contiguous().clone(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous().clone(), requires_grad=linear.bias.requires_grad)
    new.train(linear.training)
    return new


def _index(values: Sequence[int]) -> torch.Tensor:
    return torch.as_tensor(list(values), dtype=torch.long)


# --------------------------------------------------------------------------------------------- heads


def _removable_heads(block: nn.Module, attn: AttentionSpec, layer: int) -> list[bool]:
    """Which heads contribute exactly nothing: V rows and V bias zero, or O columns zero."""
    n, d = num_heads(block, attn), head_dim(block, attn)
    v, o = _linear(block, attn.v, layer), _linear(block, attn.o, layer)
    v_rows = v.weight.detach().reshape(n, d, -1)
    v_zero = (v_rows == 0).flatten(1).all(dim=1)
    if v.bias is not None:
        v_zero &= (v.bias.detach().reshape(n, d) == 0).all(dim=1)
    o_zero = (o.weight.detach().reshape(o.out_features, n, d) == 0).permute(1, 0, 2).flatten(1).all(dim=1)
    return (v_zero | o_zero).tolist()


def _keep_heads(block: nn.Module, attn: AttentionSpec, keep: Sequence[int], layer: int) -> None:
    """Slice the attention group of ``block`` down to heads ``keep`` (original order kept)."""
    n, d = num_heads(block, attn), head_dim(block, attn)
    if list(keep) == list(range(n)):
        return
    rows = _index([h * d + i for h in keep for i in range(d)])
    new_o = slice_linear(_linear(block, attn.o, layer), cols=rows)
    module = get_path(block, attn.module)
    if not keep:
        _empty_attention(block, attn, d, new_o)
        return
    for path in (attn.q, attn.k, attn.v):
        set_path(block, path, slice_linear(_linear(block, path, layer), rows=rows))
    set_path(block, attn.o, new_o)
    setattr(module, attn.heads_attr, len(keep))
    for name in attn.size_attrs:
        setattr(module, name, len(keep) * d)


def _empty_attention(block: nn.Module, attn: AttentionSpec, d: int, new_o: nn.Linear) -> None:
    """Replace the attention module by :class:`EmptyAttention`; O (0 input columns) keeps its key names."""
    prefix = attn.module + "."
    inner = attn.o[len(prefix):] if attn.o.startswith(prefix) else None
    if inner is not None and "." in inner:
        raise ShrinkError(
            f"cannot empty '{attn.module}': its O projection '{attn.o}' is nested more than one level inside it; "
            "EmptyAttention can only hold a direct child."
        )
    empty = EmptyAttention(attn.heads_attr, attn.head_dim_attr, d, out_name=inner, out=new_o if inner else None)
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


def _bias_or_zeros(linear: nn.Linear) -> torch.Tensor:
    if linear.bias is None:
        return linear.weight.new_zeros(linear.out_features)
    return linear.bias.detach()


def _neuron_plan(block: nn.Module, ffn: FFNSpec, layer: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Return (neurons kept, neurons to fold, their constant outputs).

    A neuron goes when its down column is zero, or when its output ``act(up_j(x)) [* gate_j(x)]`` does
    not depend on ``x``; that constant is folded into down's bias (impossible without a bias unless 0).
    """
    up, down = _linear(block, ffn.up, layer), _linear(block, ffn.down, layer)
    up_zero = (up.weight.detach() == 0).all(dim=1)
    up_const = _activation(block, ffn)(_bias_or_zeros(up).unsqueeze(0)).squeeze(0)
    if ffn.gate is None:
        constant, value = up_zero, up_const
    else:
        gate = _linear(block, ffn.gate, layer)
        gate_zero = (gate.weight.detach() == 0).all(dim=1)
        gate_bias = _bias_or_zeros(gate)
        value = torch.where((gate_bias == 0) | (up_const == 0), torch.zeros_like(up_const), up_const * gate_bias)
        constant = (up_zero & gate_zero) | (up_zero & (up_const == 0)) | (gate_zero & (gate_bias == 0))
    value = torch.where(constant, value, torch.zeros_like(value))
    down_zero = (down.weight.detach() == 0).all(dim=0)
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
        columns = down.weight.detach()[:, fold_idx].double()
        shift = columns @ fold_values.double()
        down.bias.data.copy_((down.bias.detach().double() + shift).to(down.bias.dtype))
    if list(keep) == list(range(up.out_features)):
        return
    rows = _index(keep)
    for path in (ffn.up, ffn.gate):
        if path is not None:
            set_path(block, path, slice_linear(_linear(block, path, layer), rows=rows))
    set_path(block, ffn.down, slice_linear(down, cols=rows))


# --------------------------------------------------------------------------------------------- public


def shrink(model: nn.Module) -> ShrinkResult:
    """Remove every attention head and FFN neuron whose contribution is exactly zero or constant, in place.

    The model stays its stock class; only ``nn.Linear`` modules are replaced by smaller ones (same dtype and
    device) and the head-count attributes of the attention modules are updated. Shrinking twice changes
    nothing the second time.

    Args:
        model: a supported Hugging Face model (see :data:`~blockprune.arch.ARCHITECTURES`) whose pruning
            masks are baked into its weights.

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
    spec = get_arch(model)
    before = count_params(model)
    heads_kept: list[list[list[int]]] = []
    neurons_kept: list[list[int]] = []
    folded = 0
    with torch.no_grad():
        for layer, block in enumerate(find_blocks(model, spec)):
            groups = []
            for attn in spec.attention:
                if num_heads(block, attn) == 0:
                    groups.append([])
                    continue
                keep = [h for h, gone in enumerate(_removable_heads(block, attn, layer)) if not gone]
                _keep_heads(block, attn, keep, layer)
                groups.append(keep)
            heads_kept.append(groups)
            keep_n, fold_idx, fold_values = _neuron_plan(block, spec.ffn, layer)
            _keep_neurons(block, spec.ffn, keep_n, layer, fold_idx, fold_values)
            neurons_kept.append(keep_n)
            folded += int(fold_idx.numel())
    return ShrinkResult(heads_kept, neurons_kept, before, count_params(model), folded)


def current_shapes(model: nn.Module) -> list[dict[str, Any]]:
    """Per-layer widths of ``model`` now: ``[{"heads": [n per attention group], "ffn": width}, ...]``."""
    spec = get_arch(model)
    layers = []
    for layer, block in enumerate(find_blocks(model, spec)):
        heads = [num_heads(block, attn) for attn in spec.attention]
        layers.append({"heads": heads, "ffn": _linear(block, spec.ffn.up, layer).out_features})
    return layers


def shape_record(model: nn.Module, result: ShrinkResult | None = None) -> dict[str, Any]:
    """Describe the per-layer widths of ``model`` as JSON-able data (the ``pruned_shapes.json`` content).

    Args:
        model: a (shrunk or not) supported model.
        result: the :class:`ShrinkResult` that produced it; when given, each layer also lists the original
            indices kept (``kept_heads``, ``kept_neurons``), for reports. They must match the widths.

    Example:
        >>> shape_record(model)["layers"][0]      # doctest: +SKIP
        {'heads': [3], 'ffn': 41}
    """
    layers = current_shapes(model)
    if result is not None:
        if result.heads_per_layer != [lay["heads"] for lay in layers] or result.ffn_per_layer != [
            lay["ffn"] for lay in layers
        ]:
            raise ShrinkError("the ShrinkResult does not describe this model's current shapes; pass the result "
                              "returned by shrink() on this very model, or none.")
        for lay, heads, neurons in zip(layers, result.heads_kept, result.neurons_kept, strict=True):
            lay["kept_heads"] = [list(g) for g in heads]
            lay["kept_neurons"] = list(neurons)
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "model_type": model_type_of(model), "layers": layers}


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
    spec = get_arch(model)
    with torch.no_grad():
        for layer, (block, want) in enumerate(zip(find_blocks(model, spec), layers, strict=True)):
            for attn, n in zip(spec.attention, want["heads"], strict=True):
                if num_heads(block, attn) > 0:
                    _keep_heads(block, attn, range(n), layer)
            _keep_neurons(block, spec.ffn, range(want["ffn"]), layer)
    return model
