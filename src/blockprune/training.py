"""One training routine for the three training stages (teacher, prune, fill), on the Hugging Face Trainer.

Every stage is the same loop with different parts plugged in: a pruner or not, a teacher or not. The
Trainer checkpoints into ``<stage>/checkpoints`` and a re-run resumes from the last checkpoint (model,
scores, optimizer, scheduler, schedule position and RNG all come back). Nothing overrides Trainer
internals: the pruning state rides in the model, the loss in :class:`~blockprune.trainer.PruningObjective`,
the schedule in :class:`~blockprune.trainer.PruningCallback`.

Example:
    >>> train(model, task, tokenizer, "run/prune", TrainSettings(epochs=1), pruner=pruner, teacher=teacher)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers.trainer_utils import get_last_checkpoint

from .pruner import Pruner
from .tasks import Task
from .trainer import PruningCallback, PruningObjective, make_optimizer


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


@dataclass
class TrainSettings:
    """What the three training stages share. ``overrides`` go to ``TrainingArguments`` as they are."""

    epochs: float = 1.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_length: int | None = None
    seed: int = 42
    save_steps: int = 200
    logging_steps: int = 50
    alpha: float = 0.9
    temperature: float = 2.0
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)


class StopOnNonFinite(transformers.TrainerCallback):
    """Stops training at the first non-finite logged loss, naming the step."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss} at step {state.global_step}; lower the learning rate. "
                f"The last good checkpoint in {args.output_dir} is kept."
            )


def training_arguments(out_dir: Path, settings: TrainSettings, steps_per_epoch: int) -> transformers.TrainingArguments:
    """TrainingArguments of a stage: checkpoints every ``save_steps``, only the last one kept."""
    values: dict[str, Any] = dict(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        weight_decay=settings.weight_decay,
        warmup_steps=int(settings.warmup_ratio * settings.epochs * steps_per_epoch),
        lr_scheduler_type="linear",
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=1,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=not settings.progress,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    values.update(settings.overrides)
    return transformers.TrainingArguments(**values)


def train(
    model: nn.Module,
    task: Task,
    tokenizer: Any,
    out_dir: str | Path,
    settings: TrainSettings,
    pruner: Pruner | None = None,
    teacher: nn.Module | None = None,
    score_lr: float | None = None,
) -> float:
    """Train ``model`` in place on ``task`` (resuming from ``out_dir/checkpoints``); return the seconds spent.

    With a ``pruner``, the masks follow its schedule over the run's optimizer steps and the scores get
    their own learning rate; with a ``teacher``, the loss distills from it.
    """
    out_dir = Path(out_dir)
    dataset = task.train_dataset(tokenizer, settings.max_length)
    steps_per_epoch = max(1, math.ceil(len(dataset) / settings.batch_size))
    args = training_arguments(out_dir, settings, steps_per_epoch)
    objective = PruningObjective(model, pruner, teacher, settings.alpha, settings.temperature)
    callbacks: list[transformers.TrainerCallback] = [StopOnNonFinite()]
    optimizer = None
    if pruner is not None:
        callbacks.insert(0, PruningCallback(pruner))
        optimizer = make_optimizer(pruner, settings.learning_rate, settings.weight_decay, score_lr)
    trainer = transformers.Trainer(
        model=objective,
        args=args,
        train_dataset=dataset,
        data_collator=task.collate(tokenizer),
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    # our callbacks first, so the pruning numbers are in the logs before the progress bar prints them
    trainer.callback_handler.callbacks.sort(key=lambda cb: not isinstance(cb, PruningCallback | StopOnNonFinite))
    last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=last)
    model.eval()
    return time.perf_counter() - start


def pick_device(model: nn.Module) -> torch.device:
    """The device the model's parameters are on."""
    return next(model.parameters()).device
