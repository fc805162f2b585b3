"""The hidden-dimension mask: one 0/1 mask over the residual width, shared by every layer, made exact to cut.

Pruning the residual (model) dimension needs more than masking weights. A LayerNorm's mean and variance over
the full width include the masked dimensions, so a model whose weights are merely zeroed there would change
its outputs once those dimensions are cut out. :class:`HiddenMask` patches a model so that

(a) the embeddings' output (or ELECTRA's ``embeddings_project`` output) is multiplied by the mask;
(b) every LayerNorm on the residual computes its mean and variance over the kept dimensions only, and outputs
    zeros in the others (:func:`masked_layer_norm`);
(c) every linear writing into the residual (attention output, FFN down) has its output multiplied by the mask.

The residual stream is then exactly zero in the removed dimensions, nothing reads them, and
:func:`blockprune.surgery.hidden.shrink_hidden` of the masked model computes the same outputs (up to float
rounding): :meth:`HiddenMask.bake` takes the patches off and cuts, checking that on given inputs.

The mask is fixed (``HiddenMask(model, mask)``) or learned (:meth:`HiddenMask.from_scores`: one score per
dimension, the top ``keep_count`` kept, with a straight-through gradient to the scores, as
:mod:`blockprune.engine.masks` does for heads and neurons). It is computed once per forward pass of the model.
Patches hold on to the modules they patch: cut heads or neurons (``shrink``) only after :meth:`HiddenMask.remove`
or :meth:`HiddenMask.bake`; the head/neuron masks of a :class:`~blockprune.engine.pruner.Pruner` may be on or off.

Example:
    >>> scores = nn.Parameter(torch.zeros(768))                        # doctest: +SKIP
    >>> hidden = HiddenMask.from_scores(model, scores, keep_count=512)  # doctest: +SKIP
    >>> loss = model(**batch).loss; loss.backward()                     # scores.grad is set  # doctest: +SKIP
    >>> result = hidden.bake(inputs=batch)                              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from blockprune.engine.masks import get_method
from blockprune.surgery.arch import get_path
from blockprune.surgery.hidden import HiddenResult, check_exact, model_output, residual_parts, shrink_hidden
from blockprune.surgery.shrink import ShrinkError

HIDDEN_MARK = "_blockprune_hidden_mask"


def masked_layer_norm(x: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                      eps: float) -> torch.Tensor:
    """LayerNorm over the last dimension with statistics over the dimensions where ``mask`` is 1; zeros elsewhere.

    Equals ``F.layer_norm`` of the kept dimensions alone, scattered back into a zero tensor. The kept count is
    taken from the mask's value (no gradient); the mask's straight-through gradient flows through ``x * mask``
    and the output's ``* mask``.
    """
    m = mask.to(dtype=x.dtype, device=x.device)
    count = m.detach().sum().clamp_min(1.0)
    mean = (x * m).sum(dim=-1, keepdim=True) / count
    centered = (x - mean) * m
    var = (centered * centered).sum(dim=-1, keepdim=True) / count
    y = centered * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y * m


def _norm_forward(norm: nn.LayerNorm, mask_fn: Callable[[], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return masked_layer_norm(x, mask_fn(), norm.weight, norm.bias, norm.eps)


class HiddenMask:
    """Patch ``model`` so that the residual dimensions where ``mask`` is 0 carry exactly nothing (module docstring).

    Args:
        model: a supported model (:func:`blockprune.surgery.hidden.hidden_dims_supported`); its head/neuron
            linears may be :class:`~blockprune.engine.layers.MaskedLinear` wrappers.
        mask: a fixed {0, 1} (or bool) tensor of the residual width; or ``None`` with ``scores`` (use
            :meth:`from_scores`).

    Raises:
        UnsupportedModelError: the model type or its task head is not supported.
        ShrinkError: the mask has the wrong shape, values other than 0/1, or keeps nothing; the model is already
            patched.
    """

    def __init__(self, model: nn.Module, mask: torch.Tensor | None = None, *, scores: torch.Tensor | None = None,
                 keep_count: int | None = None, method: str = "topk", threshold: float = 0.5) -> None:
        if getattr(model, HIDDEN_MARK, None) is not None:
            raise ShrinkError(f"{type(model).__name__} already has a HiddenMask; remove() it first.")
        if (mask is None) == (scores is None):
            raise ShrinkError("give a HiddenMask either a fixed mask or scores (with keep_count), not both or neither.")
        parts = residual_parts(model)
        self.model = model
        self.width = parts.width()
        self._method = get_method(method)
        self._threshold = float(threshold)
        self._fixed: torch.Tensor | None = None if mask is None else self._check_mask(mask)
        self._scores = scores
        self._keep = 0
        if scores is not None:
            if not self._method.learned:
                raise ShrinkError(f"method {method!r} is not learned; a hidden mask from scores needs a learned "
                                  "method (topk, sigmoid_threshold).")
            if tuple(scores.shape) != (self.width,):
                raise ShrinkError(f"scores must have shape ({self.width},), the residual width; got "
                                  f"{tuple(scores.shape)}.")
            self.keep_count = keep_count  # type: ignore[assignment]  (validated by the setter)
        self._current: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._norms: list[nn.Module] = []
        self._patch(parts)

    @classmethod
    def from_scores(cls, model: nn.Module, scores: torch.Tensor, keep_count: int, method: str = "topk",
                    threshold: float = 0.5) -> HiddenMask:
        """A learned mask: the ``keep_count`` dimensions of highest score, with a straight-through gradient.

        Args:
            model: as for :class:`HiddenMask`.
            scores: one score per residual dimension (register it with the optimizer, e.g. an ``nn.Parameter``).
            keep_count: how many dimensions to keep (at least 1); a schedule may change :attr:`keep_count`.
            method: a learned method of :mod:`blockprune.engine.masks` (``topk``, or ``sigmoid_threshold`` which
                also drops dimensions whose ``sigmoid(score)`` is under ``threshold``).
            threshold: for ``sigmoid_threshold``.
        """
        return cls(model, scores=scores, keep_count=keep_count, method=method, threshold=threshold)

    # ---------------------------------------------------------------------------------------- the mask

    @property
    def keep_count(self) -> int:
        """How many dimensions a learned mask keeps (a fixed mask: how many it keeps)."""
        return int(self._fixed.sum()) if self._fixed is not None else self._keep

    @keep_count.setter
    def keep_count(self, value: int) -> None:
        if self._fixed is not None:
            raise ShrinkError("a fixed hidden mask has no keep_count to set; build one with from_scores.")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= self.width:
            raise ShrinkError(f"keep_count={value!r} must be a whole number from 1 to {self.width}, the residual width.")
        self._keep = value

    def _check_mask(self, mask: torch.Tensor) -> torch.Tensor:
        mask = torch.as_tensor(mask).detach()
        if mask.shape != (self.width,):
            raise ShrinkError(f"the hidden mask must have shape ({self.width},), the residual width; got "
                              f"{tuple(mask.shape)}.")
        mask = mask.float()
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ShrinkError("the hidden mask must hold only 0 and 1.")
        if not bool(mask.any()):
            raise ShrinkError("the hidden mask keeps no dimension; keep at least one.")
        return mask

    def hard_mask(self) -> torch.Tensor:
        """The current {0, 1} mask, without gradient."""
        if self._fixed is not None:
            return self._fixed
        assert self._scores is not None
        hard = self._method.hard(self._scores.detach(), self._keep / self.width, self._threshold)
        if not bool(hard.any()):  # sigmoid_threshold with every score under the threshold: keep the best one
            hard = torch.zeros_like(hard)
            hard[int(self._scores.detach().argmax())] = 1.0
        return hard

    def mask(self) -> torch.Tensor:
        """The current mask; for learned scores its gradient passes straight through to them."""
        if self._fixed is not None:
            return self._fixed
        assert self._scores is not None
        return self._method.apply(self.hard_mask(), self._scores)

    def kept(self) -> torch.Tensor:
        """Indices of the dimensions the mask keeps now (ascending)."""
        return self.hard_mask().nonzero().flatten().cpu()

    def _now(self) -> torch.Tensor:
        """The mask of the running forward pass (computed once per pass of the whole model)."""
        return self._current if self._current is not None else self.mask()

    # ---------------------------------------------------------------------------------------- patching

    def _patch(self, parts: Any) -> None:
        object.__setattr__(self.model, HIDDEN_MARK, self)
        model = self.model
        self._handles.append(model.register_forward_pre_hook(self._start))
        self._handles.append(model.register_forward_hook(self._end))
        outputs = [parts.entry, *parts.writers]
        for root, path in dict.fromkeys(outputs):
            self._handles.append(get_path(root, path).register_forward_hook(self._mask_output))
        for root, path in parts.norms:
            norm = get_path(root, path)
            if not isinstance(norm, nn.LayerNorm):
                raise ShrinkError(f"'{path}' is a {type(norm).__name__}, not an nn.LayerNorm.")
            norm.forward = partial(_norm_forward, norm, self._now)  # instance attribute: del restores the class's
            self._norms.append(norm)

    def _start(self, module: nn.Module, args: Any) -> None:
        self._current = self.mask()

    def _end(self, module: nn.Module, args: Any, output: Any) -> None:
        self._current = None

    def _mask_output(self, module: nn.Module, args: Any, output: Any) -> Any:
        mask = self._now()
        if isinstance(output, torch.Tensor):
            return output * mask.to(dtype=output.dtype, device=output.device)
        return (output[0] * mask.to(dtype=output[0].dtype, device=output[0].device), *output[1:])

    def remove(self) -> None:
        """Take every patch off (the model computes full-width LayerNorms again)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for norm in self._norms:
            norm.__dict__.pop("forward", None)
        self._norms.clear()
        self._current = None
        if getattr(self.model, HIDDEN_MARK, None) is self:
            object.__delattr__(self.model, HIDDEN_MARK)

    def bake(self, inputs: dict[str, torch.Tensor] | None = None, atol: float = 1e-4) -> HiddenResult:
        """Take the patches off and cut the removed dimensions out of the model (there is no exact full-width form).

        With ``inputs``, the masked model's output on them is computed first and the cut model must match it
        within ``atol`` (:func:`blockprune.surgery.hidden.check_exact` raises :class:`ShrinkError` otherwise; the
        difference is the result's ``max_abs_diff``).
        The head/neuron masks of a :class:`~blockprune.engine.pruner.Pruner` must be baked in first
        (``Pruner.finalize``).
        """
        keep = self.kept()
        expected = model_output(self.model, inputs) if inputs is not None else None
        self.remove()
        result = shrink_hidden(self.model, keep)
        if expected is not None and inputs is not None:
            result.max_abs_diff = check_exact(expected, self.model, inputs, atol, kept=keep)
        return result


def masked_norm_reference(x: torch.Tensor, mask: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``F.layer_norm`` over the kept dimensions only, scattered back into zeros (for tests and checks)."""
    keep = mask.nonzero().flatten()
    out = torch.zeros_like(x)
    weight = None if norm.weight is None else norm.weight[keep]
    bias = None if norm.bias is None else norm.bias[keep]
    out[..., keep] = F.layer_norm(x[..., keep], (keep.numel(),), weight, bias, norm.eps)
    return out
