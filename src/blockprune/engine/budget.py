"""A FLOPs budget shared by tile-pruned attention and the FFN (``ffn_budget="flops"``).

With tiles inside attention (``hybrid``), a head only costs nothing once shrink can remove it: all its V
rows or all its O columns masked. Under this budget the scheduled ``sparsity`` is the fraction of the pruned
layers' FLOPs (attention and FFN together) to remove, and the FFN keeps what the budget leaves after the
attention that is still there: :class:`FreedHeads` counts, at every step, the FLOPs per token of the heads the
current masks have emptied, and :meth:`FreedHeads.ffn_density` turns the rest of the budget into FFN density.
So the model lands on the planned FLOPs, emptying a head is worth its cost (it pays for FFN neurons), and a
target that the FFN alone cannot reach (3x on MiniLM, whose attention is 37% of the FLOPs at 128 tokens) is
reached by emptying heads.

Costs per token at ``seq_len`` tokens, for one unit (a head; GQA: a key/value head with its ``r`` query
heads of size ``d``) of a layer of width ``hidden``: ``2·hidden·(2·r·d + 2·d)`` for its Q, K, V rows and O
columns, plus ``4·seq_len·r·d`` for the two attention matmuls; one FFN neuron costs ``2·hidden`` per matrix
it has a row or column in (up, gate, down). With ``hidden_sparsity`` the residual is cut at the end, so every
linear term is scaled by the kept share of the width (``width_scale``); the attention matmuls are not.
Nothing here imports the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blockprune.engine.layers import MaskedLinear

MIN_FFN_DENSITY = 0.02
"""The least FFN density the budget gives (about 30 of MiniLM's 1,536 neurons per layer)."""


@dataclass
class _Site:
    """One tile-masked attention: where its units' V rows and O columns are, and what one unit costs."""

    v: MaskedLinear
    v_offset: int  # first V row (a fused [Q; K; V] projection puts V after Q and K)
    o: MaskedLinear
    units: int
    ratio: int  # query heads per unit
    d: int
    unit_flops: float

    @torch.no_grad()
    def emptied(self) -> int:
        """Units whose V rows or O columns are all masked now (shrink removes exactly these)."""
        v_rows = _alive(self.v, dim=1)[self.v_offset:self.v_offset + self.units * self.d]
        o_cols = _alive(self.o, dim=0)[:self.units * self.ratio * self.d]
        v_alive = v_rows.reshape(self.units, self.d).any(dim=1)
        o_alive = o_cols.reshape(self.units, self.ratio * self.d).any(dim=1)
        return int((~(v_alive & o_alive)).sum())


def _alive(layer: MaskedLinear, dim: int) -> torch.Tensor:
    """Per output row (``dim=1``) or input column (``dim=0``) of a grid-masked linear: any weight kept."""
    grid = layer.group.hard_mask() > 0
    rows, cols = layer.block
    return grid.any(dim=dim).repeat_interleave(rows if dim == 1 else cols)


class FreedHeads:
    """The FFN density that the heads emptied so far pay for (see the module docstring)."""

    def __init__(self, seq_len: int, width_scale: float = 1.0) -> None:
        self.seq_len = seq_len
        self.width_scale = width_scale
        self.sites: list[_Site] = []
        self.ffn_flops = 0.0

    def add_attention(self, v: MaskedLinear, v_offset: int, o: MaskedLinear, units: int, ratio: int,
                      d: int) -> None:
        """Register one tile-masked attention of ``units`` units (``ratio`` query heads of size ``d`` each)."""
        hidden = v.in_features * self.width_scale
        cost = 2 * hidden * (2 * ratio * d + 2 * d) + 4 * self.seq_len * ratio * d
        self.sites.append(_Site(v, v_offset, o, units, ratio, d, float(cost)))

    def add_ffn(self, hidden: int, width: int, matrices: int) -> None:
        """Register one neuron-masked FFN of ``width`` neurons, each with a row or column in ``matrices``."""
        self.ffn_flops += 2.0 * hidden * self.width_scale * matrices * width

    def freed_flops(self) -> float:
        """FLOPs per token of the units the current masks have emptied."""
        return sum(site.emptied() * site.unit_flops for site in self.sites)

    def attention_flops(self) -> float:
        """FLOPs per token of every registered unit, emptied or not."""
        return sum(site.units * site.unit_flops for site in self.sites)

    def ffn_bonus(self) -> float:
        """FFN density the freed FLOPs pay for (0 when nothing is emptied or no FFN is pruned)."""
        return self.freed_flops() / self.ffn_flops if self.ffn_flops else 0.0

    def _left(self, sparsity: float) -> float:
        """FFN density the budget leaves after the heads still there (unclamped: below 0 when they cost more)."""
        attention = self.attention_flops()
        return ((1.0 - sparsity) * (attention + self.ffn_flops) - (attention - self.freed_flops())) / self.ffn_flops

    def ffn_density(self, sparsity: float) -> float:
        """FFN density that leaves attention and FFN at ``1 - sparsity`` of their dense FLOPs, given the heads
        emptied now; at least :data:`MIN_FFN_DENSITY` (if the heads still there cost more than the budget, the
        model lands above it: see :meth:`shortfall`), at most 1."""
        if not self.ffn_flops:
            return 1.0 - sparsity
        return min(1.0, max(MIN_FFN_DENSITY, self._left(sparsity)))

    def shortfall(self, sparsity: float) -> str | None:
        """``None`` when the masks now meet ``sparsity``; else why not, and the reachable target, in one sentence.

        Early in training the clamp of :meth:`ffn_density` is expected (heads empty as the schedule goes on); at
        the end it means the model lands above the planned FLOPs. That is a warning, not an error: a target that
        needs emptied heads (3x on MiniLM) is planned with every head kept, so no check before training can tell
        whether training will empty enough of them, and refusing after training would throw the model away.
        """
        if not self.ffn_flops or self._left(sparsity) >= MIN_FFN_DENSITY:
            return None
        total = self.attention_flops() + self.ffn_flops
        kept = self.attention_flops() - self.freed_flops() + MIN_FFN_DENSITY * self.ffn_flops
        reachable = 1.0 - kept / total
        return (f"ffn_budget=flops: the attention heads training left cost more than the target's FLOPs budget, "
                f"so the FFN is held at its least ({MIN_FFN_DENSITY:.0%} of its neurons) and the pruned layers keep "
                f"{kept / total:.1%} of their FLOPs instead of {1.0 - sparsity:.1%}: with these heads the reachable "
                f"target is a FLOPs sparsity of {reachable:.3f} (about {1.0 / (1.0 - reachable):.2f}x on the pruned "
                f"layers, planned {1.0 / (1.0 - sparsity):.2f}x). Plan a lower --target-speedup, or let training "
                "empty more heads (more --epochs, or --set head_pressure=1 where the preset has less).")
