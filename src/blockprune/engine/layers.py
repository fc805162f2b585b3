"""Masked linears and the score groups that drive them.

A :class:`ScoreGroup` owns one tensor of block scores and turns it into a block mask with its method.
A :class:`MaskedLinear` *wraps* an ``nn.Linear`` (``base_layer``) and multiplies its weight by the
expansion of its group's mask. Several linears may share a group, which is how a head (Q/K/V rows and
O columns) or an FFN neuron (up row and down column) is kept or dropped as one unit:

* layout ``"grid"``: the group scores are the ``(out/r, in/c)`` block grid of this one matrix;
* layout ``"rows"``: one score per run of ``r`` output rows (heads on Q/K/V, neurons on up/gate);
* layout ``"cols"``: one score per run of ``c`` input columns (heads on O, neurons on down).

A fused projection (GPT-2's ``c_attn``, rows ``[Q; K; V]``) is ``parts=3`` copies of the ``"rows"`` layout
stacked, all driven by the same scores. A transformers ``Conv1D`` (weight stored ``(in, out)``) is wrapped
like an ``nn.Linear`` through a transposed view of its weight, so finalize gives the ``Conv1D`` back.

Output rows that lose all their weights also lose their bias, so the masked model computes exactly
what the finalized (and then shrunk) model computes.

Example:
    >>> base = nn.Linear(8, 4)
    >>> group = ScoreGroup((2, 2), "topk", kind="ffn")
    >>> layer = MaskedLinear(base, group, "grid", (2, 4))
    >>> layer(torch.randn(3, 8)).shape
    torch.Size([3, 4])
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from blockprune.engine.masks import Block, expand_blocks, get_method, resolve_block
from blockprune.surgery.arch import as_out_in, features, weight_out_in

Layout = Literal["grid", "rows", "cols"]


class ScoreGroup(nn.Module):
    """Block scores shared by one or more :class:`MaskedLinear`.

    Args:
        shape: shape of the score tensor (block grid, or ``(n,)`` for coupled rows/columns).
        method: registered method name (see :mod:`blockprune.masks`).
        kind: ``"attention"`` or ``"ffn"``; selects which scheduled sparsity applies.
        threshold: sigmoid threshold for ``sigmoid_threshold``.
        init: initial score value for learned methods.
    """

    def __init__(
        self, shape: tuple[int, ...], method: str, kind: str, threshold: float = 0.5, init: float = 0.0
    ) -> None:
        super().__init__()
        self.method = get_method(method)
        self.kind = kind
        self.threshold = threshold
        self.density = 1.0
        if self.method.learned:
            self.scores = nn.Parameter(torch.full(shape, float(init)))
        else:
            self.register_buffer("scores", torch.zeros(shape), persistent=False)
        # the hard mask of the last training forward pass: finalize bakes in what the weights were trained with
        self.register_buffer("last_mask", torch.ones(shape))
        self.register_buffer("has_last_mask", torch.zeros((), dtype=torch.bool))
        self.members: list[MaskedLinear] = []
        self._cache: tuple[tuple, torch.Tensor] | None = None
        # head pressure (tiled attention): (axis of the grid along which heads lie, blocks per head, weight p)
        self.head_span: tuple[int, int, float] | None = None

    @property
    def weights_per_block(self) -> int:
        """How many weights one score covers, summed over the member linears."""
        return sum(m.weights_per_score for m in self.members)

    def importance(self, criterion: str = "magnitude") -> torch.Tensor:
        """Block importance summed over the members, at score resolution: ``magnitude`` ``sum |W|`` (what
        non-learned methods rank) or ``taylor`` ``sum |W * dL/dW|`` (needs the gradients of a backward pass)."""
        total = torch.zeros_like(self.scores)
        for member in self.members:
            total = total + (member.block_taylor() if criterion == "taylor" else member.block_magnitude())
        return total

    def ranking_values(self) -> torch.Tensor:
        """What the method ranks: the learned scores, or the block magnitudes (detached).

        With a ``head_span`` ``(axis, span, p)`` each block ranks by ``(1 - p)`` times its own value plus ``p``
        times the mean over its head (``span`` consecutive block rows, ``axis=0``, or columns, ``axis=1``).
        """
        values = self.scores.detach() if self.method.learned else self.importance()
        if self.head_span is None:
            return values
        axis, span, weight = self.head_span
        grid = values if axis == 0 else values.T
        rows, cols = grid.shape
        heads = grid.reshape(rows // span, span * cols).mean(dim=1, keepdim=True)
        heads = heads.expand(rows // span, span * cols).reshape(rows, cols)
        return (1.0 - weight) * values + weight * (heads if axis == 0 else heads.T)

    def set_head_span(self, axis: int, span: int, weight: float) -> None:
        """Rank blocks partly by their head's mean (see :meth:`ranking_values`); heads are ``span`` blocks wide."""
        if self.scores.dim() != 2 or span < 1 or self.scores.shape[axis] % span:
            raise ValueError(f"a head span of {span} blocks does not divide a block grid of shape "
                             f"{tuple(self.scores.shape)} along axis {axis}")
        self.head_span = (axis, span, float(weight))
        self._cache = None

    def _cache_key(self) -> tuple | None:
        """Changes whenever the hard mask could: density, threshold, and the values it is computed from."""
        sources = [self.scores] if self.method.learned else [m.base_layer.weight for m in self.members]
        try:
            versions = tuple((t._version, t.data_ptr()) for t in sources)
        except RuntimeError:  # inference tensors keep no version counter: do not cache
            return None
        return (self.density, self.threshold, *versions)

    def hard_mask(self) -> torch.Tensor:
        """The current {0, 1} block mask without gradient, computed once and shared by every member."""
        key = self._cache_key()
        if key is None or self._cache is None or self._cache[0] != key:
            hard = self.method.hard(self.ranking_values(), self.density, self.threshold)
            self._cache = None if key is None else (key, hard)
            return hard
        return self._cache[1]

    def mask(self) -> torch.Tensor:
        """The current {0, 1} block mask (with straight-through gradients for learned methods).

        In a training forward pass (training mode, gradients on) the hard mask is also recorded as the one
        :meth:`final_mask` returns, until the next :meth:`forget_last_mask`.
        """
        hard = self.hard_mask()
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.last_mask.copy_(hard)
                self.has_last_mask.fill_(True)
        return self.method.apply(hard, self.scores)

    @torch.no_grad()
    def final_mask(self) -> torch.Tensor:
        """The mask to bake in: that of the last training forward pass if one ran since the densities changed.

        Scores move once more after the last forward pass (the optimizer step that follows it), so
        recomputing the mask at the end could keep a block whose weights were frozen while it was masked.
        """
        return self.last_mask.clone() if bool(self.has_last_mask) else self.hard_mask()

    def forget_last_mask(self) -> None:
        """Drop the recorded training mask (the schedule changed the density since it was made)."""
        self.has_last_mask.fill_(False)

    def extra_repr(self) -> str:
        return f"method={self.method.name}, kind={self.kind}, shape={tuple(self.scores.shape)}"


class MaskedLinear(nn.Module):
    """An ``nn.Linear`` (or ``Conv1D``) whose weight is multiplied by a block mask from a :class:`ScoreGroup`.

    ``from_linear`` / ``to_linear`` go in and out; ``to_linear`` bakes the mask into the weights. ``parts``
    (``"rows"`` / ``"cols"`` layouts only) repeats the scored layout that many times along the axis.
    """

    def __init__(self, base_layer: nn.Module, group: ScoreGroup, layout: Layout, block: Block, parts: int = 1) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.layout = layout
        out_features, in_features = features(base_layer)
        if parts < 1 or (parts > 1 and layout == "grid") or (layout == "rows" and out_features % parts) \
                or (layout == "cols" and in_features % parts):
            raise ValueError(f"parts={parts} does not split a {out_features}x{in_features} matrix in layout {layout}")
        self.parts = parts
        shape = (out_features // parts, in_features) if layout == "rows" else (out_features, in_features // parts)
        self.block = resolve_block(shape, block)
        object.__setattr__(self, "group", group)  # shared, so not registered as a child module
        group.members.append(self)

    @classmethod
    def from_linear(cls, linear: nn.Module, group: ScoreGroup, layout: Layout, block: Block,
                    parts: int = 1) -> MaskedLinear:
        """Wrap ``linear`` (an ``nn.Linear`` or ``Conv1D``; its parameters are reused, not copied)."""
        return cls(linear, group, layout, block, parts)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``(out, in)`` (a transposed view for ``Conv1D``)."""
        return weight_out_in(self.base_layer)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return features(self.base_layer)[1]

    @property
    def out_features(self) -> int:
        return features(self.base_layer)[0]

    @property
    def weights_per_score(self) -> int:
        rows, cols = self.block
        if self.layout == "rows":
            return rows * self.in_features * self.parts
        if self.layout == "cols":
            return cols * self.out_features * self.parts
        return rows * cols

    def block_magnitude(self) -> torch.Tensor:
        """``sum |W|`` per score of this linear (detached)."""
        return self.block_sum(self.weight.detach().abs())

    def block_taylor(self) -> torch.Tensor:
        """``sum |W * dL/dW|`` per score of this linear, from the gradient the weight holds (first-order Taylor)."""
        weight = self.base_layer.weight
        if weight.grad is None:
            raise RuntimeError("block_taylor needs the weight's gradient: run a backward pass first")
        return self.block_sum(as_out_in(self.base_layer, (weight.detach() * weight.grad).abs()))

    def block_sum(self, w: torch.Tensor) -> torch.Tensor:
        """Sum an ``(out, in)`` tensor shaped like the weight per score of this linear."""
        rows, cols = self.block
        if self.layout == "rows":
            return w.sum(dim=1).reshape(self.parts, -1, rows).sum(dim=(0, 2))
        if self.layout == "cols":
            return w.sum(dim=0).reshape(self.parts, -1, cols).sum(dim=(0, 2))
        n_r, n_c = self.out_features // rows, self.in_features // cols
        return w.reshape(n_r, rows, n_c, cols).sum(dim=(1, 3))

    def masks(self, block_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight mask (broadcastable to the weight) and bias mask (``None`` = bias kept) for a block mask."""
        mask = self.group.mask() if block_mask is None else block_mask
        rows, cols = self.block
        if self.layout == "rows":
            row_mask = mask.repeat_interleave(rows).repeat(self.parts)
            return row_mask[:, None], row_mask
        if self.layout == "cols":
            return mask.repeat_interleave(cols).repeat(self.parts)[None, :], None
        weight_mask = expand_blocks(mask, self.block, (self.out_features, self.in_features))
        row_alive = mask.detach().amax(dim=1).repeat_interleave(rows)
        return weight_mask, row_alive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight_mask, bias_mask = self.masks()
        bias = self.bias
        if bias is not None and bias_mask is not None:
            bias = bias * bias_mask
        return F.linear(x, self.weight * weight_mask, bias)

    @torch.no_grad()
    def to_linear(self, block_mask: torch.Tensor | None = None) -> nn.Module:
        """Bake the mask (the group's current one unless given) into ``base_layer`` and return it."""
        weight_mask, bias_mask = self.masks(block_mask)
        self.weight.mul_(weight_mask.to(self.weight.dtype))  # in place through the view: Conv1D too
        # a negative weight times 0 is -0.0: store +0.0, the zero that compact saving leaves out (all bits zero)
        self.weight.masked_fill_(weight_mask == 0, 0.0)
        if self.bias is not None and bias_mask is not None:
            self.base_layer.bias.mul_(bias_mask.to(self.bias.dtype))
            self.base_layer.bias.masked_fill_(bias_mask == 0, 0.0)
        return self.base_layer

    def extra_repr(self) -> str:
        parts = f", parts={self.parts}" if self.parts > 1 else ""
        return f"layout={self.layout}, block={self.block}{parts}"
