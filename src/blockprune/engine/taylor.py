"""The Taylor starting point of learned scores (``score_init_from="taylor"``).

A student that starts from a converged teacher has near-zero gradients, so movement scores that start at
one constant rank blocks by little more than noise for the first part of a short schedule. The first-order
Taylor estimate of what removing a block costs, ``sum |W * dL/dW|`` over the block with the gradients of the
task loss summed over a few labelled training batches, is the ranking structural pruners start from; here
it is the scores' starting point (normalised per matrix, see :meth:`Pruner.init_scores`), and movement
refines it while the run trains.

Example:
    >>> batches = itertools.islice(loader, TAYLOR_BATCHES)             # doctest: +SKIP
    >>> init_scores_taylor(pruner, model, batches)                     # doctest: +SKIP
    16
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from blockprune.engine.pruner import Pruner

TAYLOR_BATCHES = 16
"""Labelled training batches whose task-loss gradients are summed (the frontier's torch-pruning peer ranks on
as many)."""


class TaylorInitError(ValueError):
    """The model gave no task loss on a training batch, so there is no gradient to rank blocks by."""


def init_scores_taylor(pruner: Pruner, model: nn.Module, batches: Iterable[Mapping[str, Any]]) -> int:
    """Sum the task loss's gradients over ``batches`` (labelled) and add the Taylor importance to the scores.

    Runs in eval mode (no dropout) at the masks' current density (dense before pruning starts); every
    gradient is cleared afterwards, so training starts as it would have. Returns the number of batches used.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    model.zero_grad(set_to_none=True)
    used = 0
    try:
        with torch.enable_grad():
            for batch in batches:
                inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                loss = getattr(model(**inputs), "loss", None)
                if loss is None:
                    raise TaylorInitError(
                        "score_init_from=taylor needs the model's task loss, but a training batch gave none "
                        f"(batch keys: {sorted(batch)}); give the batches labels, or use score_init_from=magnitude")
                loss.backward()
                used += 1
        if not used:
            raise TaylorInitError("score_init_from=taylor got no training batch; the training set is empty")
        pruner.init_scores("taylor")
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return used
