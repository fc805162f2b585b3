"""Layer-wise (hidden-state) distillation: student layer outputs matched to teacher layer outputs by MSE.

Logit distillation tells the student *what* to answer; far from the teacher (high compression) it also helps to
say *how*: the output of each student layer is pulled toward the output of a teacher layer (TinyBERT, CoFi).
This module holds the pieces :class:`~blockprune.engine.objective.PruningObjective` adds on top of its logit
term when its ``layer_distill`` weight is positive:

* :func:`layer_map` — which teacher layer each student layer learns from. Equal depths: layer ``i`` from layer
  ``i``. A shallower student (layers dropped): evenly spaced teacher layers ending at the last one
  (TinyBERT's uniform mapping), e.g. 3 from 6 is ``1<-2, 2<-4, 3<-6``. A learned mapping (CoFi) is not built.
* :func:`hidden_state_loss` — the MSE itself, a mean over tokens (padding left out) *and* dimensions, averaged
  over the mapped layers, so its scale depends on neither the width, the depth nor the sequence length.
* :class:`LayerDistiller` — what a narrower student compares:

  - a student patched with a :class:`~blockprune.engine.hidden.HiddenMask` is exactly zero in its removed
    residual dimensions; both sides are compared in the *kept* dimensions only (:func:`active_hidden_mask`),
    so the removed ones (zero in the student, anything in the teacher) never enter the loss;
  - a student whose residual was cut (:func:`~blockprune.surgery.hidden.shrink_hidden`) is narrower than the
    teacher: given the kept index (``kept``, indices into the teacher's width, as ``HiddenResult.kept``
    records them), the teacher's states are restricted to those dimensions; without it, a learned linear
    projection from the student's width to the teacher's is trained with the student (TinyBERT's ``W_h``).

The embeddings' output (``hidden_states[0]``) is *not* matched. Nothing prunable sits before it: under head and
neuron pruning the student's embeddings output equals the teacher's except for the student's dropout, so that
term would only penalise dropout noise (which pulls the embedding LayerNorm's weights toward zero); every layer
output after it already carries whatever the embeddings contribute. CoFi leaves it out for the same reason.

Example:
    >>> layer_map(3, 6)   # a 3-layer student of a 6-layer teacher: (student layer, teacher layer)
    [(1, 2), (2, 4), (3, 6)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from blockprune.engine.hidden import HIDDEN_MARK  # the attribute a HiddenMask sets on the model it patches
from blockprune.surgery.arch import UnsupportedModelError
from blockprune.surgery.hidden import hidden_dims_supported, hidden_width
from blockprune.surgery.shrink import ShrinkError


class LayerDistillError(ValueError):
    """Layer-wise distillation cannot compare these models as asked; the message says why and what to do."""


def check_layer_distill(weight: float, flag: str = "layer_distill=") -> None:
    """``weight`` is a finite number >= 0 (0 turns layer-wise distillation off).

    Raises:
        ValueError: naming ``flag`` and the value.
    """
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"{flag}{weight!r} must be a finite number >= 0 (0 turns layer-wise distillation off)")


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Pairs ``(student, teacher)`` of layer numbers (1-based: ``hidden_states[n]`` is layer ``n``'s output).

    Student layer ``m`` learns from teacher layer ``round(m * teacher_layers / student_layers)`` (halves
    rounded up), so equal depths map layer to layer and a shallower student takes evenly spaced teacher
    layers ending at the teacher's last.

    Raises:
        LayerDistillError: a depth below 1, or a student deeper than its teacher.
    """
    if student_layers < 1 or teacher_layers < 1:
        raise LayerDistillError(f"layer-wise distillation needs at least one layer on each side; got a student of "
                                f"{student_layers} and a teacher of {teacher_layers}.")
    if student_layers > teacher_layers:
        raise LayerDistillError(f"the student has {student_layers} layers, more than the teacher's {teacher_layers}; "
                                "layer-wise distillation maps each student layer to a distinct teacher layer.")
    return [(m, (2 * m * teacher_layers + student_layers) // (2 * student_layers))
            for m in range(1, student_layers + 1)]


def hidden_state_loss(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
                      pairs: Sequence[tuple[int, int]], valid: torch.Tensor | None = None,
                      teacher_dims: torch.Tensor | None = None, student_dims: torch.Tensor | None = None,
                      projection: nn.Module | None = None) -> torch.Tensor:
    """Mean squared error between mapped student and teacher hidden states, averaged over the ``pairs``.

    For each pair the squared difference is averaged over the compared dimensions, then over the tokens
    where ``valid`` (``(batch, tokens)``, e.g. the attention mask) is true (all tokens without it).

    Args:
        student_states, teacher_states: ``hidden_states`` of the two models (``(batch, tokens, width)`` each).
        pairs: ``(student, teacher)`` indices into them (:func:`layer_map`).
        valid: which tokens count; ignored unless its shape is ``(batch, tokens)`` of the states.
        teacher_dims: the teacher's dimensions the student's width stands for (a cut student), applied first.
        student_dims: dimensions of the student's width to compare on both sides (a masked student).
        projection: maps the student's states to the teacher's width (a cut student without ``teacher_dims``);
            the comparison is then over the teacher's full width.

    Raises:
        LayerDistillError: the compared states differ in shape.
    """
    losses = []
    for s_index, t_index in pairs:
        student, teacher = student_states[s_index].float(), teacher_states[t_index].float()
        if projection is not None:
            student = projection(student)
        else:
            if teacher_dims is not None:
                teacher = teacher.index_select(-1, teacher_dims.to(teacher.device))
            if student_dims is not None:
                dims = student_dims.to(student.device)
                student, teacher = student.index_select(-1, dims), teacher.index_select(-1, dims)
        if student.shape != teacher.shape:
            raise LayerDistillError(
                f"student layer {s_index} has shape {tuple(student.shape)} where teacher layer {t_index} has "
                f"{tuple(teacher.shape)}; a student cut narrower needs its kept dimensions (or a projection).")
        per_token = (student - teacher).pow(2).mean(dim=-1)
        if valid is not None and valid.shape == per_token.shape:
            weight = valid.to(device=per_token.device, dtype=per_token.dtype)
            losses.append((per_token * weight).sum() / weight.sum().clamp_min(1.0))
        else:
            losses.append(per_token.mean())
    return torch.stack(losses).mean()


def active_hidden_mask(model: nn.Module) -> torch.Tensor | None:
    """The current {0, 1} mask of a :class:`~blockprune.engine.hidden.HiddenMask` patched on ``model`` (or on its
    ``base_model``), without gradient; ``None`` when there is none."""
    for module in (model, getattr(model, "base_model", None)):
        hidden = getattr(module, HIDDEN_MARK, None) if module is not None else None
        if hidden is not None:
            return hidden.hard_mask()
    return None


def residual_width(model: nn.Module) -> int | None:
    """The residual width of ``model`` read from its modules, or ``None`` for a model the hidden-dimension table
    does not cover (such a model cannot have been cut narrower)."""
    try:
        return hidden_width(model) if hidden_dims_supported(model) else None
    except (UnsupportedModelError, ShrinkError):
        return None


def states_of(outputs: Any, who: str) -> tuple[torch.Tensor, ...]:
    """``outputs.hidden_states``, refused with one clear error when the model gave none."""
    states = getattr(outputs, "hidden_states", None)
    if not states:
        raise LayerDistillError(
            f"layer-wise distillation needs the {who}'s hidden states (output_hidden_states=True), and its output "
            f"{type(outputs).__name__} has none (encoder-decoder models are not supported); use --layer-distill 0.")
    return tuple(states)


class LayerDistiller(nn.Module):
    """The hidden-state term of the objective for one student and its teacher (see the module docstring).

    Args:
        student: the model being trained (full width, masked, or cut narrower).
        teacher: the frozen teacher.
        kept: for a student cut narrower, the teacher's dimensions it kept (ascending indices, one per student
            dimension). Without it, a student narrower than its teacher gets a learned projection
            (:attr:`projection`, a bias-free linear started at zero — so the student is not pulled toward a
            random target while it learns — and trained with the student: give the optimizer
            ``parameters()`` of this module).

    Raises:
        LayerDistillError: ``kept`` is not a list of distinct indices, one per student dimension, inside the
            teacher's width.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module,
                 kept: Sequence[int] | torch.Tensor | None = None) -> None:
        super().__init__()
        student_width, teacher_width = residual_width(student), residual_width(teacher)
        self.kept: torch.Tensor | None = None  # a plain attribute: not a buffer, so checkpoints do not change
        self.projection: nn.Linear | None = None
        if kept is not None:
            self.kept = self._check_kept(kept, student_width, teacher_width)
        elif student_width is not None and teacher_width is not None and student_width != teacher_width:
            self.projection = nn.Linear(student_width, teacher_width, bias=False)
            nn.init.zeros_(self.projection.weight)

    @staticmethod
    def _check_kept(kept: Sequence[int] | torch.Tensor, student_width: int | None,
                    teacher_width: int | None) -> torch.Tensor:
        index = kept.detach().cpu() if isinstance(kept, torch.Tensor) else torch.as_tensor(list(kept))
        if index.dim() != 1 or index.numel() == 0 or index.is_floating_point() or index.dtype == torch.bool:
            raise LayerDistillError("kept must be a non-empty 1-D list of the teacher's dimension indices.")
        index = index.long()
        if index.unique().numel() != index.numel() or int(index.min()) < 0:
            raise LayerDistillError("kept must hold distinct, non-negative dimension indices.")
        if teacher_width is not None and int(index.max()) >= teacher_width:
            raise LayerDistillError(f"kept holds indices outside the teacher's width {teacher_width}.")
        if student_width is not None and index.numel() != student_width:
            raise LayerDistillError(f"kept names {index.numel()} dimensions, but the student's residual is "
                                    f"{student_width} wide; give the index its cut recorded.")
        return index

    def forward(self, student_outputs: Any, teacher_outputs: Any, valid: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The loss for one batch: outputs of both models (with ``hidden_states``), the valid tokens, and the
        student's current hidden mask (``None`` when its residual is not masked)."""
        student_states, teacher_states = states_of(student_outputs, "student"), states_of(teacher_outputs, "teacher")
        pairs = layer_map(len(student_states) - 1, len(teacher_states) - 1)
        dims = None if mask is None else mask.nonzero().flatten()
        return hidden_state_loss(student_states, teacher_states, pairs, valid, teacher_dims=self.kept,
                                 student_dims=dims, projection=self.projection)
