"""The training objective and its Trainer hooks: distillation loss, PruningObjective, PruningCallback, optimizer.

Nothing here subclasses or overrides the Hugging Face ``Trainer``:

* :class:`PruningCallback` only calls ``pruner.step`` at the start of each optimizer step and logs the
  pruning numbers, so a custom loop calls ``pruner.step`` directly and gets the same behaviour;
* :class:`PruningObjective` wraps the student so that its ``loss`` already contains the distillation term
  and the pruning regularization — the Trainer (or a plain loop) just minimizes ``outputs.loss``;
* :func:`make_optimizer` builds AdamW from :meth:`Pruner.param_groups` (scores: own lr, no decay);
* :class:`DistillLogCallback` adds the objective's own numbers (``distill/hidden_loss``) to the Trainer's logs.

With ``layer_distill > 0`` the objective also matches the student's layer outputs to the teacher's
(:mod:`blockprune.engine.layerwise`); at 0 (the default) it computes exactly what it computed before that term
existed: no hidden states are requested and the loss is built by the same operations.

Example:
    >>> objective = PruningObjective(student, pruner, teacher=teacher, alpha=0.9, temperature=2.0)  # doctest: +SKIP
    >>> trainer = Trainer(model=objective, args=args, train_dataset=ds, data_collator=collate,      # doctest: +SKIP
    ...                   optimizers=(make_optimizer(pruner, args), None), callbacks=[PruningCallback(pruner)])
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from blockprune.engine.layerwise import LayerDistiller, active_hidden_mask, check_layer_distill
from blockprune.engine.pruner import Pruner

MASKED_LOGIT = -1e4
"""Logit given to padded positions before the softmax: exp(-1e4 / T) is exactly 0 in float32."""
_HIDDEN = {"output_hidden_states": True}
"""Asked of both models only while the layer-wise term is on."""


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened logits, times ``T²`` (Hinton et al. 2015).

    Logits are compared along the last dimension; leading dimensions are averaged. ``valid`` (same shape as
    the logits, e.g. the attention mask for question answering's per-token start/end logits) leaves the
    positions where it is false out of both softmaxes.
    """
    t = temperature
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if valid is not None:
        student_logits = student_logits.masked_fill(~valid, MASKED_LOGIT)
        teacher_logits = teacher_logits.masked_fill(~valid, MASKED_LOGIT)
    s_log = F.log_softmax(student_logits / t, dim=-1)
    t_log = F.log_softmax(teacher_logits / t, dim=-1)
    kl = F.kl_div(s_log.reshape(-1, s_log.shape[-1]), t_log.reshape(-1, t_log.shape[-1]), log_target=True,
                  reduction="batchmean")
    return kl * t * t


def logit_fields(outputs: Any) -> list[str]:
    """Names of the logits in a model output (``logits``, or ``start_logits``/``end_logits`` for QA)."""
    if getattr(outputs, "start_logits", None) is not None:
        return ["start_logits", "end_logits"]
    return ["logits"]


def _token_mask(inputs: dict[str, Any], fields: list[str], outputs: Any) -> torch.Tensor | None:
    """For per-token logits (question answering), the attention mask: padded tokens are no answer positions."""
    mask = inputs.get("attention_mask")
    if fields != ["start_logits", "end_logits"] or mask is None or mask.shape != outputs.start_logits.shape:
        return None
    return mask.bool()


class PruningObjective(nn.Module):
    """The student with its full training loss: ``(1-α)·task + α·KD + W·hidden + pruner.regularization()``.

    The teacher is kept out of the module tree (it is not trained, not saved in checkpoints, and not
    moved by the Trainer): it follows the student's device on first use.

    Args:
        student: the (patched) model being pruned.
        pruner: its :class:`~blockprune.engine.pruner.Pruner`, or ``None`` (fill stage: no masks).
        teacher: a frozen model with the same outputs, or ``None`` for no distillation.
        alpha: weight of the distillation term.
        temperature: distillation temperature.
        layer_distill: weight ``W`` of the hidden-state (layer-wise) term; 0 turns it off. It needs a teacher
            (without one it stays off, as the logit term does).
        hidden_kept: for a student whose residual was cut narrower, the teacher's dimensions it kept (see
            :class:`~blockprune.engine.layerwise.LayerDistiller`; without it such a student gets a learned
            projection, in :meth:`own_parameters`).

    Raises:
        ValueError: ``alpha`` outside [0, 1], ``temperature`` not positive, ``layer_distill`` negative or not finite.
    """

    def __init__(self, student: nn.Module, pruner: Pruner | None = None, teacher: nn.Module | None = None,
                 alpha: float = 0.9, temperature: float = 2.0, layer_distill: float = 0.0,
                 hidden_kept: Sequence[int] | torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha={alpha} must be in [0, 1]")
        if temperature <= 0:
            raise ValueError(f"distillation temperature={temperature} must be positive")
        check_layer_distill(layer_distill)
        self.student = student
        self.alpha = alpha if teacher is not None else 0.0
        self.temperature = temperature
        self.layer_distill = float(layer_distill) if teacher is not None else 0.0
        object.__setattr__(self, "pruner", pruner)
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False) if teacher is not None else None)
        self.config = getattr(student, "config", None)
        # a submodule: a learned projection (if any) is trained, checkpointed and resumed with the student
        self.layer_distiller = LayerDistiller(student, teacher, hidden_kept) if self.layer_distill > 0 else None
        self._hidden_sum: torch.Tensor | None = None
        self._hidden_count = 0

    def own_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the objective that are not the student's (a learned projection, if any): an
        optimizer built from the student alone (:func:`make_optimizer`) must be given these too."""
        return [] if self.layer_distiller is None else list(self.layer_distiller.parameters())

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The student's state, with tied tensors (e.g. embeddings shared with an LM head) stored once.

        The Trainer saves a non-``PreTrainedModel`` with safetensors, which refuses shared memory; loading back
        is non-strict, and the first key of a tied tensor fills every module that shares it.
        """
        state = super().state_dict(*args, **kwargs)
        seen: set[tuple[int, int, tuple[int, ...], torch.dtype]] = set()
        for key in list(state):
            tensor = state[key]
            if not isinstance(tensor, torch.Tensor):
                continue
            identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
            if identity in seen:
                del state[key]
            else:
                seen.add(identity)
        return state

    def forward(self, **inputs: Any) -> Any:
        layered = self.layer_distiller is not None and self.training
        outputs = self.student(**{**inputs, **_HIDDEN}) if layered else self.student(**inputs)
        loss = outputs.loss
        if self.teacher is not None and self.training:
            device = next(self.student.parameters()).device
            if next(self.teacher.parameters()).device != device:
                self.teacher.to(device)
            teacher_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "start_positions", "end_positions")}
            if layered:
                teacher_inputs = {**teacher_inputs, **_HIDDEN}
            with torch.no_grad():
                teacher_out = self.teacher(**teacher_inputs)
            fields = logit_fields(outputs)
            valid = _token_mask(inputs, fields, outputs)
            kd = sum(distillation_loss(getattr(outputs, f), getattr(teacher_out, f), self.temperature, valid)
                     for f in fields)
            kd = kd / len(fields)
            loss = kd if loss is None else (1.0 - self.alpha) * loss + self.alpha * kd
            if layered:
                loss = loss + self.layer_distill * self.hidden_loss(outputs, teacher_out, inputs)
        if self.pruner is not None and self.training:
            loss = loss + self.pruner.regularization()
        outputs.loss = loss
        return outputs

    def hidden_loss(self, outputs: Any, teacher_outputs: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """The hidden-state term (unweighted) for one batch, recorded for :meth:`pop_log_values`.

        Both outputs need ``hidden_states``; padded tokens (``attention_mask``) are left out, and a student
        patched with a hidden mask is compared in its kept dimensions.
        """
        assert self.layer_distiller is not None, "hidden_loss needs layer_distill > 0 and a teacher"
        mask = inputs.get("attention_mask")
        value = self.layer_distiller(outputs, teacher_outputs, None if mask is None else mask.bool(),
                                     active_hidden_mask(self.student))
        recorded = value.detach()
        self._hidden_sum = recorded if self._hidden_sum is None else self._hidden_sum + recorded
        self._hidden_count += 1
        return value

    def pop_log_values(self) -> dict[str, float]:
        """Numbers to log since the last call: ``distill/hidden_loss``, the mean hidden-state term (when it ran)."""
        if self._hidden_sum is None or not self._hidden_count:
            return {}
        value = float(self._hidden_sum) / self._hidden_count
        self._hidden_sum, self._hidden_count = None, 0
        return {"distill/hidden_loss": value}


class DistillLogCallback(TrainerCallback):
    """Adds :meth:`PruningObjective.pop_log_values` (``distill/hidden_loss``) to each Trainer log."""

    def __init__(self, objective: PruningObjective) -> None:
        self.objective = objective

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        values = self.objective.pop_log_values()
        if values and state.log_history:
            state.log_history[-1].update(values)
        if values and logs is not None:
            logs.update(values)


class PruningCallback(TrainerCallback):
    """Calls ``pruner.step(global_step, max_steps)`` before each optimizer step; logs the pruning numbers."""

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner
        self.last: dict[str, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a run resumed at its very end keeps what its checkpoint holds: the masks of its last training forward
        # pass (what finalize bakes) and the controller state, as the uninterrupted run has them
        if state.max_steps and state.global_step >= state.max_steps and self.pruner.has_last_masks():
            self.last = self.pruner.log_values()
            return
        # the step about to run (or, at the very end without recorded masks, the last one again)
        self.last = self.pruner.step(min(state.global_step, max(state.max_steps - 1, 0)), state.max_steps)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = self.pruner.step(state.global_step, state.max_steps)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.log_history:
            state.log_history[-1].update(self.last)
        if logs is not None:
            logs.update(self.last)


def make_optimizer(pruner: Pruner, lr: float, weight_decay: float = 0.0, score_lr: float | None = None,
                   extra: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """AdamW over :meth:`Pruner.param_groups`: every trainable parameter of the patched model, and ``extra``
    (e.g. :meth:`PruningObjective.own_parameters`) at ``lr`` without weight decay."""
    groups = pruner.param_groups(lr, weight_decay, score_lr)
    extra = list(extra)
    if extra:
        groups.append({"params": extra, "lr": lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)
