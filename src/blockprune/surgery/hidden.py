"""Hidden-dimension surgery: remove residual (model-width) dimensions from a supported encoder, exactly.

The residual stream has one width shared by every layer, so one set of kept dimensions applies everywhere.
:func:`shrink_hidden` cuts the dimensions not kept out of

* the embedding tables (columns) and the embeddings' LayerNorm, or, where narrower embeddings are projected
  into the residual (ELECTRA's ``embeddings_project``), that projection's output rows;
* every Q/K/V and FFN-up input column (they read the residual), every attention-output and FFN-down output
  row and bias (they write it), and every block LayerNorm's weight and bias;
* the pooler's and the task head's input columns (the pooler's output feeds the classifier outside the
  residual, so it keeps its width).

Q/K/V *output* widths are untouched, so head sizes stay as they are. Which modules those are is data on the
architecture table (:class:`~blockprune.surgery.arch.HiddenSpec`); types without it, and task classes whose
head the table does not list (masked-LM heads, whose decoder is tied to the embeddings), are refused with one
:class:`~blockprune.surgery.arch.UnsupportedModelError` naming the type or class.

Cutting is *exact* only for a model whose removed dimensions carry nothing: a LayerNorm's mean and variance
over the full width include them. :class:`blockprune.engine.hidden.HiddenMask` makes a model compute its
LayerNorm statistics over the kept dimensions and zero the others; that masked model and its cut equal each
other to float rounding (:func:`check_exact` measures it). On an ordinary model, cutting is an approximation.

``config.hidden_size`` is left as it is: BERT, RoBERTa, ELECTRA, MPNet and DistilBERT compute the head size
as ``hidden_size / num_attention_heads`` when they are built, so a narrower value would rebuild the model with
smaller heads. As with heads and neurons, the config describes the full-size model and the shape record
(:func:`blockprune.surgery.shrink.shape_record`, field ``"hidden"``) the real width; forward passes of these
models never read ``config.hidden_size``.

Example:
    >>> result = shrink_hidden(model, keep=list(range(0, 768, 2)))   # doctest: +SKIP
    >>> result.width_after                                            # doctest: +SKIP
    384
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from blockprune.surgery.arch import (
    ARCHITECTURES,
    HiddenSpec,
    UnsupportedModelError,
    features,
    get_arch,
    get_path,
    has_path,
    is_linear_like,
    iter_blocks,
    model_type_of,
    set_path,
)
from blockprune.surgery.slicing import ShrinkError, slice_linear

Part = tuple[nn.Module, str]
"""A module given by its owner and a dotted path under it (so that it can be replaced)."""


def _hidden_types() -> str:
    return ", ".join(sorted(name for name, spec in ARCHITECTURES.items() if spec.hidden is not None))


def hidden_spec(model: nn.Module) -> HiddenSpec:
    """The :class:`HiddenSpec` of ``model``'s type.

    Raises:
        UnsupportedModelError: the model type has none (the message names it and lists those that have one).
    """
    model_type = model_type_of(model)
    spec = ARCHITECTURES.get(model_type)
    if spec is None or spec.hidden is None:
        raise UnsupportedModelError(
            f"hidden-dimension pruning does not support model_type {model_type!r}; supported: {_hidden_types()}. "
            "Heads and FFN neurons can still be pruned."
        )
    return get_arch(model).hidden or spec.hidden


def _head_readers(model: nn.Module, spec: HiddenSpec) -> tuple[str, ...]:
    """The task head's linears reading the residual (none for a base model)."""
    if getattr(model, "base_model", model) is model:
        return ()
    name = type(model).__name__
    for suffix, paths in spec.heads:
        if name.endswith(suffix):
            return paths
    known = ", ".join(suffix for suffix, _ in spec.heads)
    raise UnsupportedModelError(
        f"hidden-dimension pruning does not support {name} (model_type {model_type_of(model)!r}): its task head is "
        f"not in the architecture table; supported: the base model and the classes ending in {known}."
    )


@dataclass
class ResidualParts:
    """Every module that reads or writes the residual stream of one model.

    Attributes:
        readers: linears whose input columns are residual dimensions.
        writers: linears whose output rows (and bias) are residual dimensions.
        norms: LayerNorms over the residual.
        tables: embedding tables whose columns are residual dimensions.
        entry: the module whose output starts the residual (the embeddings, or ELECTRA's projection).
    """

    readers: list[Part] = field(default_factory=list)
    writers: list[Part] = field(default_factory=list)
    norms: list[Part] = field(default_factory=list)
    tables: list[Part] = field(default_factory=list)
    entry: Part | None = None

    def width(self) -> int:
        """The residual width, checked to be the same in every part.

        Raises:
            ShrinkError: two parts disagree (the architecture table entry is wrong, or a cut was partial).
        """
        widths: dict[str, int] = {}
        for root, path in self.readers:
            widths[path] = features(get_path(root, path))[1]
        for root, path in self.writers:
            widths[path] = features(get_path(root, path))[0]
        for root, path in self.norms:
            widths[path] = int(get_path(root, path).normalized_shape[-1])
        for root, path in self.tables:
            widths[path] = int(get_path(root, path).embedding_dim)
        if len(set(widths.values())) != 1:
            raise ShrinkError(f"the residual width differs between modules: {widths}; the architecture table's "
                              "HiddenSpec does not describe this model.")
        return next(iter(widths.values()))


def residual_parts(model: nn.Module) -> ResidualParts:
    """Find every module on the residual stream of ``model``, from the architecture table.

    Raises:
        UnsupportedModelError: the model type or its task head is not supported (see :func:`hidden_spec`).
        ShrinkError: a module the table names is missing.
    """
    spec = hidden_spec(model)
    heads = _head_readers(model, spec)
    base = getattr(model, "base_model", model)
    parts = ResidualParts()

    def need(root: nn.Module, path: str) -> Part:
        if not has_path(root, path):
            raise ShrinkError(f"{type(root).__name__} has no module '{path}' that the architecture table names "
                              f"for {model_type_of(model)!r}; the HiddenSpec does not match this model.")
        return root, path

    if spec.project is not None and has_path(base, spec.project):
        parts.writers.append(need(base, spec.project))
        parts.entry = (base, spec.project)
    else:
        parts.tables += [need(base, path) for path in spec.embeddings]
        parts.norms.append(need(base, spec.embed_norm))
        parts.entry = need(base, spec.entry)
    for stack, block in iter_blocks(model, get_arch(model)):
        for attn in stack.attention:
            parts.readers += [(block, p) for p in dict.fromkeys((attn.q, attn.k, attn.v)) if has_path(block, p)]
            parts.writers.append(need(block, attn.o))
        ffn = stack.ffn
        parts.readers += [need(block, p) for p in (ffn.up, ffn.gate) if p is not None]
        parts.writers.append(need(block, ffn.down))
        parts.norms += [need(block, path) for path in spec.norms]
    if spec.pooler is not None and has_path(base, spec.pooler):
        parts.readers.append((base, spec.pooler))
    parts.readers += [need(model, path) for path in heads]
    return parts


def hidden_dims_supported(model: nn.Module) -> bool:
    """Whether :func:`shrink_hidden` (and the hidden mask) can cut ``model``'s residual width."""
    try:
        residual_parts(model)
    except (UnsupportedModelError, ShrinkError):
        return False
    return True


def hidden_width(model: nn.Module) -> int:
    """The residual width ``model`` has now (read from its modules)."""
    return residual_parts(model).width()


def narrowed_width(model: nn.Module) -> int | None:
    """The residual width when it is narrower than ``config.hidden_size``, else ``None`` (for the shape record).

    Reads only the first block's FFN down projection, so it never fails on models the table does not cover.
    """
    arch = ARCHITECTURES.get(model_type_of(model))
    full = getattr(getattr(model, "config", None), "hidden_size", None)
    if arch is None or arch.hidden is None or not isinstance(full, int):
        return None
    stack, block = iter_blocks(model, get_arch(model))[0]
    width = features(get_path(block, stack.ffn.down))[0]
    return width if width < full else None


# --------------------------------------------------------------------------------------------- cutting


@dataclass
class HiddenResult:
    """What :func:`shrink_hidden` kept.

    Attributes:
        kept: the residual dimensions kept, as indices into the model it was given (ascending).
        width_before: residual width before.
        params_before: parameter count before.
        params_after: parameter count after.
        max_abs_diff: the largest output difference between the masked and the cut model on the inputs the cut
            was checked on (:func:`check_exact`), or ``None`` when it was not checked.
    """

    kept: list[int]
    width_before: int
    params_before: int
    params_after: int
    max_abs_diff: float | None = None

    @property
    def width_after(self) -> int:
        """Residual width after."""
        return len(self.kept)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (for reports)."""
        return asdict(self) | {"width_after": self.width_after}


def keep_index(keep: torch.Tensor | Sequence[int], width: int) -> torch.Tensor:
    """``keep`` (indices, or a bool mask of length ``width``) as sorted unique long indices.

    Raises:
        ShrinkError: empty, out of range, repeated, a non-integer tensor, or a bool mask of another length.
    """
    index = keep.detach().cpu() if isinstance(keep, torch.Tensor) else torch.as_tensor(list(keep))
    if index.dtype == torch.bool:
        if index.shape != (width,):
            raise ShrinkError(f"a bool keep mask must have shape ({width},), the residual width; got "
                              f"{tuple(index.shape)}.")
        index = index.nonzero().flatten()
    if index.numel() == 0 and index.dtype != torch.long:
        index = index.long()
    if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ShrinkError(f"keep must be a 1-D list of dimension indices (or a bool mask); got a {index.dtype} tensor "
                          f"of shape {tuple(index.shape)}.")
    index = index.long()
    if index.numel() == 0:
        raise ShrinkError("keep is empty: a model needs at least one residual dimension.")
    if int(index.min()) < 0 or int(index.max()) >= width:
        raise ShrinkError(f"keep holds indices outside 0..{width - 1} (the residual width is {width}).")
    if index.unique().numel() != index.numel():
        raise ShrinkError("keep holds repeated indices.")
    return index.sort().values


def _linear(root: nn.Module, path: str) -> nn.Module:
    module = get_path(root, path)
    if not is_linear_like(module):
        raise ShrinkError(f"'{path}' is a {type(module).__name__}, not an nn.Linear; take the masks off (bake them "
                          "in) before cutting the hidden dimension.")
    return module


def _param(source: nn.Parameter, value: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(value.contiguous().clone(), requires_grad=source.requires_grad)


def slice_norm(norm: nn.Module, index: torch.Tensor) -> nn.LayerNorm:
    """A LayerNorm over the dimensions ``index`` of ``norm`` (same eps, dtype, device and mode)."""
    if not isinstance(norm, nn.LayerNorm) or len(norm.normalized_shape) != 1:
        raise ShrinkError(f"expected a LayerNorm over one dimension, found {type(norm).__name__}.")
    weight, bias = norm.weight, norm.bias
    dtype = None if weight is None else weight.dtype
    new = nn.LayerNorm(index.numel(), eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                       bias=bias is not None, device="meta", dtype=dtype)
    if weight is not None:
        new.weight = _param(weight, weight.detach().index_select(0, index.to(weight.device)))
    if bias is not None:
        new.bias = _param(bias, bias.detach().index_select(0, index.to(bias.device)))
    new.train(norm.training)
    return new


def slice_embedding(table: nn.Module, index: torch.Tensor) -> nn.Embedding:
    """An embedding table keeping the columns ``index`` of ``table`` (same rows, padding index and options)."""
    if not isinstance(table, nn.Embedding):
        raise ShrinkError(f"expected an nn.Embedding, found {type(table).__name__}.")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        new = nn.Embedding(table.num_embeddings, index.numel(), padding_idx=table.padding_idx, max_norm=table.max_norm,
                           norm_type=table.norm_type, scale_grad_by_freq=table.scale_grad_by_freq, sparse=table.sparse,
                           device="meta", dtype=table.weight.dtype)
    new.weight = _param(table.weight, table.weight.detach().index_select(1, index.to(table.weight.device)))
    new.train(table.training)
    return new


def _total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shrink_hidden(model: nn.Module, keep: torch.Tensor | Sequence[int]) -> HiddenResult:
    """Keep only the residual dimensions ``keep`` of ``model``, in place (see the module docstring for what is cut).

    Exact for a model whose removed dimensions carry nothing (trained or evaluated under
    :class:`blockprune.engine.hidden.HiddenMask` with the same kept dimensions); check with :func:`check_exact`.
    Works before or after :func:`blockprune.surgery.shrink.shrink` removed heads and neurons.

    Args:
        model: a supported model (:func:`hidden_dims_supported`) with plain linears (masks baked in).
        keep: the dimensions to keep: indices, or a bool mask over the residual width.

    Returns:
        The dimensions kept and the parameter counts before and after.

    Raises:
        UnsupportedModelError: the model type or task head is not supported.
        ShrinkError: bad ``keep``, or a module on the residual is still a masked wrapper.
    """
    parts = residual_parts(model)
    width = parts.width()
    index = keep_index(keep, width)
    before = _total_params(model)
    if index.numel() < width:
        with torch.no_grad():
            for root, path in parts.readers:
                set_path(root, path, slice_linear(_linear(root, path), cols=index))
            for root, path in parts.writers:
                set_path(root, path, slice_linear(_linear(root, path), rows=index))
            for root, path in parts.norms:
                set_path(root, path, slice_norm(get_path(root, path), index))
            for root, path in parts.tables:
                set_path(root, path, slice_embedding(get_path(root, path), index))
    return HiddenResult(index.tolist(), width, before, _total_params(model))


def resize_hidden(model: nn.Module, width: int) -> nn.Module:
    """Keep the first ``width`` residual dimensions (a freshly built model about to receive saved weights)."""
    current = hidden_width(model)
    if not 1 <= width <= current:
        raise ShrinkError(f"cannot resize the residual width from {current} to {width}.")
    shrink_hidden(model, range(width))
    return model


# --------------------------------------------------------------------------------------------- checking


def model_output(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The first tensor of ``model(**inputs)`` (logits, or the last hidden state), without gradient."""
    with torch.no_grad():
        out = model(**inputs)
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if hasattr(out, "values") else out
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
    raise ShrinkError(f"{type(model).__name__} returned no tensor to compare.")


def check_exact(expected: torch.Tensor | nn.Module, model: nn.Module, inputs: dict[str, torch.Tensor],
                atol: float = 1e-4, kept: torch.Tensor | Sequence[int] | None = None) -> float:
    """The largest absolute difference between ``expected`` (an output, or a model to run) and ``model``'s output.

    With ``kept`` (the residual dimensions a cut kept), an output that is the residual itself (a base model's
    last hidden state, full width before and narrower after) is compared on the kept dimensions.

    Raises:
        ShrinkError: the difference exceeds ``atol``, or the shapes differ.
    """
    if isinstance(expected, nn.Module):
        expected = model_output(expected, inputs)
    got = model_output(model, inputs)
    if kept is not None and expected.dim() and got.shape[-1] == len(kept) != expected.shape[-1]:
        index = kept if isinstance(kept, torch.Tensor) else torch.as_tensor(list(kept))
        expected = expected[..., index.to(dtype=torch.long, device=expected.device)]
    if got.shape != expected.shape:
        raise ShrinkError(f"outputs differ in shape: {tuple(got.shape)} instead of {tuple(expected.shape)}.")
    diff = float((got.double() - expected.double()).abs().max()) if got.numel() else 0.0
    if not diff <= atol:
        raise ShrinkError(f"the cut model is not exact: outputs differ by {diff:.3g} > {atol:g}.")
    return diff
