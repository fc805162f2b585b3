"""Blocks and the methods that turn block scores into binary masks.

A block shape ``(rows, cols)`` tiles a weight matrix ``[out, in]``; ``-1`` means the full extent, so
``(1, 1)`` is unstructured, ``(32, 32)`` tiles, ``(1, -1)`` whole rows and ``(-1, 1)`` whole columns.
Scores live at block resolution (one per block); :func:`expand_blocks` turns a block mask into a weight
mask only when it is applied.

A *method* maps scores to a {0, 1} mask of the same shape. Masks are binary in the forward pass; the
learned methods pass gradients straight through to the scores (the straight-through estimator of
Bengio et al. 2013, as used by movement pruning, Sanh et al. 2020) — through a *surrogate* of the
scores (the scores themselves, or their sigmoid). A method is its hard part, ``hard(values, density,
threshold)`` on detached values, plus that surrogate, so the hard mask can be computed once and reused
by every linear that shares it. A new method is one registered function:

Example:
    >>> @register_method("random_half", learned=False)   # doctest: +SKIP
    ... def random_half(scores, density, threshold):
    ...     return (torch.rand_like(scores) < 0.5).to(scores.dtype)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Block = tuple[int, int]
MaskFn = Callable[[torch.Tensor, float, float], torch.Tensor]


class BlockShapeError(ValueError):
    """A block shape does not tile a matrix."""


def resolve_block(shape: tuple[int, int], block: Block, name: str = "matrix") -> Block:
    """Replace ``-1`` by the full extent and check that ``block`` divides ``shape``.

    Raises:
        BlockShapeError: a block side does not divide the matrix side; the message names ``name``.
    """
    rows = shape[0] if block[0] == -1 else block[0]
    cols = shape[1] if block[1] == -1 else block[1]
    if rows <= 0 or cols <= 0 or shape[0] % rows or shape[1] % cols:
        raise BlockShapeError(
            f"block {tuple(block)} does not tile {name} of shape {tuple(shape)} (out x in): each block side "
            "must divide the matrix side (use -1 for the full extent)"
        )
    return rows, cols


def grid_shape(shape: tuple[int, int], block: Block, name: str = "matrix") -> tuple[int, int]:
    """Number of blocks along each side: ``(out // rows, in // cols)``."""
    rows, cols = resolve_block(shape, block, name)
    return shape[0] // rows, shape[1] // cols


def reduce_blocks(weight: torch.Tensor, block: Block) -> torch.Tensor:
    """Sum ``weight`` within each block, giving a tensor at block resolution."""
    rows, cols = resolve_block(tuple(weight.shape), block)
    n_r, n_c = weight.shape[0] // rows, weight.shape[1] // cols
    return weight.reshape(n_r, rows, n_c, cols).sum(dim=(1, 3))


def expand_blocks(block_mask: torch.Tensor, block: Block, shape: tuple[int, int]) -> torch.Tensor:
    """Expand a block-resolution mask to the full ``shape`` (inverse of the block layout)."""
    rows, cols = resolve_block(shape, block)
    n_r, n_c = block_mask.shape
    return block_mask[:, None, :, None].expand(n_r, rows, n_c, cols).reshape(shape)


def straight_through(hard: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Value of ``hard`` in the forward pass, gradient of ``soft`` in the backward pass."""
    return hard + (soft - soft.detach())


def topk_hard(values: torch.Tensor, k: int) -> torch.Tensor:
    """A {0, 1} tensor marking the ``k`` largest entries of ``values`` (ties broken by position)."""
    mask = torch.zeros_like(values)
    if k >= values.numel():
        return mask.fill_(1.0)
    if k > 0:
        mask.view(-1)[torch.topk(values.detach().reshape(-1), k, sorted=False).indices] = 1.0
    return mask


def kept_count(n: int, density: float) -> int:
    """How many of ``n`` blocks a density keeps (rounded, at least 0, at most ``n``)."""
    return max(0, min(n, round(density * n)))


def _identity(scores: torch.Tensor) -> torch.Tensor:
    return scores


@dataclass(frozen=True)
class Method:
    """A registered masking method.

    Attributes:
        name: registry key.
        hard: ``hard(values, density, threshold) -> mask`` on detached values (same shape, values in {0, 1}).
        learned: scores are trainable parameters (movement); otherwise they are recomputed from weights.
        regularized: an L1 penalty on ``sigmoid(scores)`` drives the sparsity (soft movement).
        surrogate: what the straight-through gradient flows into (learned methods): ``scores -> tensor``.
    """

    name: str
    hard: MaskFn
    learned: bool
    regularized: bool = False
    surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None

    def fn(self, scores: torch.Tensor, density: float, threshold: float) -> torch.Tensor:
        """The mask: the hard part in the forward pass, the surrogate's gradient in the backward pass."""
        return self.apply(self.hard(scores.detach(), density, threshold), scores)

    def apply(self, hard: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Attach the straight-through gradient of ``scores`` to an already computed ``hard`` mask."""
        return hard if self.surrogate is None else straight_through(hard, self.surrogate(scores))


METHODS: dict[str, Method] = {}


def register_method(name: str, *, learned: bool, regularized: bool = False,
                    surrogate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Callable[[MaskFn], MaskFn]:
    """Decorator adding a hard masking function to :data:`METHODS` under ``name``.

    A learned method without a ``surrogate`` passes its gradient straight to the scores.
    """

    def wrap(fn: MaskFn) -> MaskFn:
        METHODS[name] = Method(name, fn, learned, regularized, (surrogate or _identity) if learned else None)
        return fn

    return wrap


def get_method(name: str) -> Method:
    """Return the registered method ``name``.

    Raises:
        ValueError: unknown name; the message lists the registered ones.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown pruning method {name!r}; registered: {', '.join(sorted(METHODS))}") from None


@register_method("topk", learned=True)
def topk_mask(scores: torch.Tensor, density: float, threshold: float) -> torch.Tensor:
    """Hard movement pruning: keep the ``density`` fraction of blocks with the highest scores."""
    return topk_hard(scores, kept_count(scores.numel(), density))


@register_method("sigmoid_threshold", learned=True, regularized=True, surrogate=torch.sigmoid)
def sigmoid_threshold_mask(scores: torch.Tensor, density: float, threshold: float) -> torch.Tensor:
    """Soft movement pruning: keep blocks whose ``sigmoid(score)`` exceeds ``threshold``.

    ``density`` caps how many blocks survive: the :class:`~blockprune.engine.pruner.Pruner` allocates it
    across all soft groups of a kind from one global ranking of the scores, so the scheduled sparsity
    is met globally while each matrix ends up with the density its scores earned. The gradient flows
    through the sigmoid (``sigmoid'(s)`` scales it, so saturated scores learn slowly); see
    ``sigmoid_threshold_straight`` for the original method's straight-through gradient.
    """
    probs = torch.sigmoid(scores)
    return topk_hard(probs, kept_count(scores.numel(), density)) * (probs > threshold)


register_method("sigmoid_threshold_straight", learned=True, regularized=True)(sigmoid_threshold_mask)
"""``sigmoid_threshold`` with the gradient passed straight to the scores, as in the original movement pruning:
the same forward mask, but the backward pass skips ``sigmoid'``, so a score far from the threshold keeps learning
at full speed (the L1 penalty still acts on ``sigmoid(scores)``)."""


@register_method("magnitude", learned=False)
def magnitude_mask(scores: torch.Tensor, density: float, threshold: float) -> torch.Tensor:
    """Baseline: ``scores`` hold block magnitudes; keep the largest ``density`` fraction (no gradient)."""
    return topk_hard(scores, kept_count(scores.numel(), density))
