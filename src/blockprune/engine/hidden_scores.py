"""The learned hidden-dimension scores of a :class:`~blockprune.engine.pruner.Pruner` (``hidden_sparsity > 0``).

One score per residual dimension, shared by every layer, drives a :class:`~blockprune.engine.hidden.HiddenMask`:
the ``keep_count`` dimensions of highest score are kept, and the straight-through gradient reaches the scores as
it reaches the head and neuron scores. :class:`HiddenPruning` is the Pruner's handle on it:

* the scores live in the model as ``model.blockprune.hidden`` (:class:`HiddenScores`), so the optimizer of
  :func:`~blockprune.engine.objective.make_optimizer` gets them with the block scores (``Pruner.score_parameters``)
  and checkpoints carry them, with the mask of the last training forward pass;
* :meth:`HiddenPruning.schedule` is called by ``Pruner.step`` with the scheduled hidden sparsity (the same cubic
  schedule as heads and neurons), and the run ends at exactly :func:`hidden_keep` dimensions;
* the scores start from an importance ranking (:meth:`HiddenPruning.init`): ``taylor`` sums ``|W * dL/dW|`` over
  every weight the dimension touches (embedding columns, LayerNorm weights and biases, the input columns of
  Q/K/V, FFN-up, pooler and task head, the output rows and biases of attention-output and FFN-down: the
  first-order estimate of what removing the dimension costs); otherwise ``sum |W|`` over the same weights, each
  tensor divided by its mean first, so that embedding tables of 30k rows do not outvote the blocks. A constant
  start would rank nothing: every dimension would tie.
* :meth:`HiddenPruning.cut` (``Pruner.finalize``, once the block masks are baked in) takes the learned mask off,
  puts a fixed mask of the recorded dimensions on the now plain model, and cuts the residual
  (:meth:`HiddenMask.bake`): with inputs, it checks that the cut model computes what the masked model computed.
  There is no exact full-width form of a model whose LayerNorms ignore some dimensions, so the finalized model is
  narrower.

Example:
    >>> pruner = Pruner(model, PruningConfig.preset("struct", hidden_sparsity=0.25))   # doctest: +SKIP
    >>> pruner.step(total_steps, total_steps); pruner.hidden.keep_count                # doctest: +SKIP
    288
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockprune.engine.hidden import HiddenMask
from blockprune.engine.masks import kept_count
from blockprune.surgery.arch import UnsupportedModelError, as_out_in, get_path, weight_out_in
from blockprune.surgery.hidden import HiddenResult, ResidualParts, residual_parts


def hidden_keep(width: int, sparsity: float) -> int:
    """Residual dimensions kept of ``width`` at ``sparsity`` (rounded, at least 1): the planner's count too."""
    return max(1, kept_count(width, 1.0 - sparsity))


def check_hidden_supported(model: nn.Module, sparsity: float) -> None:
    """Raise one :class:`UnsupportedModelError` when ``sparsity > 0`` and ``model`` cannot lose residual dimensions.

    Called before anything is patched, so a refused model is left as it was.
    """
    if not sparsity:
        return
    try:
        residual_parts(model)
    except UnsupportedModelError as err:
        raise UnsupportedModelError(f"hidden_sparsity={sparsity}: {err} Set hidden_sparsity=0 to prune heads and "
                                    "neurons only.") from None


class HiddenScores(nn.Module):
    """Lives in the model as ``model.blockprune.hidden``: one score per residual dimension and the last training mask.

    ``last_mask`` is the mask of the last training forward pass (what finalize cuts: the optimizer step after it
    moves the scores once more); ``has_last_mask`` says whether one was recorded since the keep count changed.
    """

    def __init__(self, width: int, init: float = 0.0) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.full((width,), float(init)))
        self.register_buffer("last_mask", torch.ones(width))
        self.register_buffer("has_last_mask", torch.zeros((), dtype=torch.bool))

    def extra_repr(self) -> str:
        return f"width={self.scores.numel()}"


class HiddenPruning:
    """The learned hidden mask of one pruning run (see the module docstring).

    Args:
        model: the model being pruned; its block linears may already be masked wrappers (the Pruner patches them
            first, so the hidden mask's output hooks sit on the modules that really run).
        owner: the module the scores are registered in (the Pruner's state, ``model.blockprune``).
        sparsity: the final fraction of the residual dimensions removed.
        init: the constant the scores start from before the importance ranking is added.

    Raises:
        UnsupportedModelError: the model type or its task head cannot lose residual dimensions.
    """

    def __init__(self, model: nn.Module, owner: nn.Module, sparsity: float, init: float = 0.0) -> None:
        self.model = model
        self.parts: ResidualParts = residual_parts(model)
        self.width = self.parts.width()
        self.target = hidden_keep(self.width, sparsity)
        self.init_value = float(init)
        self.state = HiddenScores(self.width, init)
        owner.add_module("hidden", self.state)
        self.mask = HiddenMask.from_scores(model, self.state.scores, keep_count=self.width)
        self._hook = model.register_forward_pre_hook(self._record)

    # ---------------------------------------------------------------------------------------- schedule
    @property
    def keep_count(self) -> int:
        """Dimensions the mask keeps now."""
        return self.mask.keep_count

    def schedule(self, sparsity: float) -> None:
        """Keep :func:`hidden_keep` dimensions at the scheduled ``sparsity``; a new count forgets the recorded mask."""
        keep = hidden_keep(self.width, sparsity)
        if keep != self.mask.keep_count:
            self.mask.keep_count = keep
            self.state.has_last_mask.fill_(False)

    def _record(self, module: nn.Module, args: Any) -> None:
        """Record the mask of a training forward pass (training mode, gradients on), as the block scores do."""
        if module.training and torch.is_grad_enabled():
            with torch.no_grad():
                self.state.last_mask.copy_(self.mask.hard_mask())
                self.state.has_last_mask.fill_(True)

    @torch.no_grad()
    def final_mask(self) -> torch.Tensor:
        """The mask to cut by: that of the last training forward pass if one ran since the count changed."""
        return self.state.last_mask.clone() if bool(self.state.has_last_mask) else self.mask.hard_mask().clone()

    def density(self) -> float:
        """Fraction of the residual dimensions the final mask keeps."""
        return float(self.final_mask().sum()) / self.width

    # ---------------------------------------------------------------------------------------- start
    @torch.no_grad()
    def init(self, criterion: str = "magnitude") -> None:
        """Set the scores to ``init`` plus the dimensions' importance over its mean (``magnitude`` or ``taylor``).

        Replaces an earlier start (the Taylor ranking, computed once gradients exist, replaces the magnitude
        ranking given on construction).
        """
        values = self.importance(criterion)
        mean = values.mean()
        values = values / mean if float(mean) > 0 else values
        self.state.scores.copy_(values.to(self.state.scores) + self.init_value)

    @torch.no_grad()
    def importance(self, criterion: str = "magnitude") -> torch.Tensor:
        """Per residual dimension: ``sum |W * dL/dW|`` (``taylor``, from the gradients the weights hold) or the
        per-tensor normalised ``sum |W|`` (``magnitude``) over every weight the dimension touches."""
        if criterion not in ("magnitude", "taylor"):
            raise ValueError(f"unknown importance criterion {criterion!r}; use magnitude or taylor")
        total = torch.zeros(self.width, dtype=torch.float64)

        def add(tensor: torch.Tensor, grad: torch.Tensor | None, dim: int | None) -> None:
            if criterion == "taylor":
                if grad is None:
                    return  # a frozen tensor (no gradient) says nothing of the loss
                value = (tensor.detach() * grad).abs()
            else:
                value = tensor.detach().abs()
            per_dim = (value if dim is None else value.sum(dim=dim)).double().cpu()
            if criterion == "magnitude":
                mean = per_dim.mean()
                per_dim = per_dim / mean if float(mean) > 0 else per_dim
            total.add_(per_dim)

        for linear, dim in [*((self._linear(p), 0) for p in self.parts.readers),
                            *((self._linear(p), 1) for p in self.parts.writers)]:
            weight = weight_out_in(linear)
            grad = None if linear.weight.grad is None else as_out_in(linear, linear.weight.grad)
            add(weight, grad, dim)
            if dim == 1 and linear.bias is not None:
                add(linear.bias, linear.bias.grad, None)
        for root, path in self.parts.norms:
            norm = get_path(root, path)
            for param in (norm.weight, norm.bias):
                if param is not None:
                    add(param, param.grad, None)
        for root, path in self.parts.tables:
            table = get_path(root, path)
            add(table.weight, table.weight.grad, 0)
        return total.float()

    @staticmethod
    def _linear(part: tuple[nn.Module, str]) -> nn.Module:
        module = get_path(*part)
        return getattr(module, "base_layer", module)  # a masked wrapper: the plain linear inside

    # ---------------------------------------------------------------------------------------- finish
    def remove(self) -> None:
        """Take the learned mask and its recording hook off the model."""
        self._hook.remove()
        self.mask.remove()

    def cut(self, keep: torch.Tensor, inputs: dict[str, torch.Tensor] | None = None,
            atol: float = 1e-4) -> HiddenResult:
        """Cut the residual to the dimensions of ``keep`` (a 0/1 mask), after the block masks were baked in.

        A fixed :class:`HiddenMask` of ``keep`` goes on the plain model first; with ``inputs`` the masked model's
        output is compared with the cut model's, in eval mode (dropout off), and must agree within ``atol``
        (``ShrinkError`` otherwise; the difference is ``result.max_abs_diff``).
        """
        self.remove()
        fixed = HiddenMask(self.model, keep)
        was_training = self.model.training
        if inputs is not None:
            device = next(self.model.parameters()).device
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            self.model.eval()
        try:
            return fixed.bake(inputs, atol)
        finally:
            self.model.train(was_training)
