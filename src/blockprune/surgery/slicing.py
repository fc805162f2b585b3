"""The one cut every surgery makes: a linear keeping some output rows and input columns, and the error of surgery.

Both :mod:`blockprune.surgery.shrink` (heads and neurons) and :mod:`blockprune.surgery.hidden` (the residual
width) slice linears this way, so it lives below both of them.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from blockprune.surgery.arch import weight_out_in


class ShrinkError(ValueError):
    """The model cannot be shrunk, or a shape record does not fit it."""


def slice_linear(linear: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Module:
    """Return a new linear keeping output ``rows`` and input ``cols`` (index tensors; ``None`` keeps all).

    Works on ``nn.Linear`` and transformers' ``Conv1D`` (the copy has the same type). The copy has the same
    dtype, device and ``requires_grad`` as the original.

    Example:
        >>> slice_linear(nn.Linear(4, 3), rows=torch.tensor([0, 2])).weight.shape
        torch.Size([2, 4])
    """
    weight = weight_out_in(linear).detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
        bias = None if bias is None else bias.index_select(0, rows.to(bias.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    out_features, in_features = weight.shape
    with warnings.catch_warnings():  # a 0-feature Linear warns that initializing it is a no-op: it is
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if isinstance(linear, Conv1D):
            with torch.device("meta"):
                new = Conv1D(out_features, in_features)
            weight = weight.t()
        else:
            new = nn.Linear(in_features, out_features, bias=bias is not None, device="meta", dtype=weight.dtype)
    new.weight = nn.Parameter(weight.contiguous().clone(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.contiguous().clone(), requires_grad=linear.bias.requires_grad)
    new.train(linear.training)
    return new
