"""One training routine for the three training stages (teacher, prune, fill), on the Hugging Face Trainer.

Every stage is the same loop with different parts plugged in: a pruner or not, a teacher or not. The
Trainer checkpoints into ``<stage>/checkpoints`` and a re-run resumes from the last *complete* checkpoint
(model, scores, λ controller, optimizer, scheduler, schedule position and RNG all come back, so the result
equals that of an uninterrupted run); a checkpoint cut short by a crash is skipped. A NaN or infinite loss
stops training before it updates any weight (:class:`StopOnNonFinite`). Nothing overrides Trainer
internals: the pruning state rides in the model, the loss in :class:`~blockprune.engine.objective.PruningObjective`,
the schedule in :class:`~blockprune.engine.objective.PruningCallback`.

Example:
    >>> train(model, task, tokenizer, "run/prune", TrainSettings(epochs=1), pruner=pruner, teacher=teacher)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from blockprune.engine.objective import DistillLogCallback, PruningCallback, PruningObjective, make_optimizer
from blockprune.engine.pruner import Pruner
from blockprune.engine.taylor import TAYLOR_BATCHES, init_scores_taylor
from blockprune.tasks import Task

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class TrainingArgumentError(ValueError):
    """A ``--training-arg`` / ``TrainSettings.overrides`` key is not a ``TrainingArguments`` field."""


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
    min_steps: int = 0  # at least this many optimizer steps: more epochs over small data (0 = epochs decide)
    save_steps: int = 200
    logging_steps: int = 50
    alpha: float = 0.9
    temperature: float = 2.0
    layer_distill: float = 0.0  # weight of the hidden-state (layer-wise) distillation term; 0 = off
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)


def _is_complete(checkpoint: Path, step: int) -> bool:
    """Whether the Trainer finished writing ``checkpoint`` (it writes ``trainer_state.json`` last)."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(state, dict) and state.get("global_step") == step


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that the Trainer finished writing, or ``None``.

    The Trainer writes a checkpoint in place and ``trainer_state.json`` last, so a run killed while saving
    leaves a folder that cannot be resumed from. Such folders newer than the chosen checkpoint are removed
    (by the main process), and the run resumes from the previous complete one.

    Example:
        >>> last_complete_checkpoint("runs/demo/prune/checkpoints")   # doctest: +SKIP
        'runs/demo/prune/checkpoints/checkpoint-400'
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), path) for path in folder.iterdir()
             if (m := CHECKPOINT_PATTERN.fullmatch(path.name)) and path.is_dir()]
    for step, path in sorted(found, key=lambda item: item[0], reverse=True):
        if _is_complete(path, step):
            return str(path)
        logger.warning("checkpoint %s was not completely written (interrupted save); removing it", path)
        if int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(path, ignore_errors=True)
    return None


class StopOnNonFinite(transformers.TrainerCallback):
    """Stops training at the first optimizer step whose loss is NaN or infinite, before it changes any weight.

    A forward hook on the trained module adds up the loss of every training forward (micro-batches
    included); :meth:`on_pre_optimizer_step` checks that sum once per optimizer step. The logged loss cannot
    serve: it is averaged over ``logging_steps``, and the Trainer leaves non-finite step losses out of it.
    As no weight is updated from a non-finite loss, every checkpoint on disk holds good weights.

    Args:
        model: the module the Trainer trains (its output must carry ``loss``).
    """

    def __init__(self, model: nn.Module) -> None:
        self._loss: torch.Tensor | None = None
        self.handle = model.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: Any, output: Any) -> None:
        loss = getattr(output, "loss", None)
        if module.training and isinstance(loss, torch.Tensor):
            loss = loss.detach().float().sum()
            self._loss = loss if self._loss is None else self._loss + loss

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        loss, self._loss = self._loss, None
        if loss is None:
            return
        bad = (~torch.isfinite(loss)).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # every rank stops together
        if not bool(bad):
            return
        step = state.global_step + 1
        last = last_complete_checkpoint(args.output_dir)
        kept = (f"the last good checkpoint, {last}, is kept" if last is not None
                else f"no checkpoint had been saved yet (one every {args.save_steps} steps)")
        value = float(loss) if not bool(torch.isfinite(loss)) else "non-finite in another process"
        raise NonFiniteLossError(
            f"the training loss became {value} at optimizer step {step} of {state.max_steps}; training "
            f"stopped before that step changed any weight, and {kept}. Lower the learning rate (or look for "
            "extreme values in the data)."
        )


def check_overrides(overrides: dict[str, Any]) -> None:
    """Refuse override keys that ``transformers.TrainingArguments`` does not have (before any long work).

    Raises:
        TrainingArgumentError: naming the unknown keys.
    """
    known = {f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TrainingArgumentError(
            f"--training-arg {', '.join(unknown)}: not a field of transformers.TrainingArguments "
            f"{transformers.__version__}; check the spelling (e.g. save_steps, bf16, gradient_accumulation_steps)"
        )


def optimizer_steps(num_examples: int, settings: TrainSettings) -> int:
    """Optimizer steps the stage will take: ``epochs`` over the data, or ``min_steps`` when that is more.

    Counted as the Trainer counts them: per process (``WORLD_SIZE`` under torchrun), per accumulated step.
    """
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    accumulation = max(1, int(settings.overrides.get("gradient_accumulation_steps", 1)))
    per_epoch = max(1, math.ceil(math.ceil(num_examples / world) / settings.batch_size) // accumulation)
    return max(math.ceil(settings.epochs * per_epoch), settings.min_steps)


def training_arguments(out_dir: Path, settings: TrainSettings, group_by_length: bool = False,
                       max_steps: int = -1) -> transformers.TrainingArguments:
    """TrainingArguments of a stage: checkpoints every ``save_steps``, only the last one kept.

    ``max_steps > 0`` replaces the epochs (see :func:`optimizer_steps`); warm-up is a fraction of the real
    optimizer steps either way.

    ``group_by_length`` batches token sequences of similar length together (in shuffled mega-batches), so
    padding to the longest in the batch wastes little: on short, varied texts this cuts the FLOPs of an epoch.
    """
    check_overrides(settings.overrides)
    values: dict[str, Any] = dict(
        output_dir=str(out_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=max_steps,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        weight_decay=settings.weight_decay,
        # a float in [0, 1) is a fraction of the Trainer's real optimizer steps (accumulation and processes included)
        warmup_steps=float(settings.warmup_ratio) if 0 < settings.warmup_ratio < 1 else int(settings.warmup_ratio),
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
        use_cpu=not torch.cuda.is_available(),  # also makes torchrun on CPU use DDP over gloo
        train_sampling_strategy="group_by_length" if group_by_length else "random",
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
    hidden_kept: list[int] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``task`` (resuming from ``out_dir/checkpoints``).

    Returns:
        ``seconds`` spent, optimizer ``steps`` of the whole stage and the ``epochs`` they make over the data
        (more than ``settings.epochs`` when ``settings.min_steps`` extended a short schedule).

    With a ``pruner``, the masks follow its schedule over the run's optimizer steps and the scores get
    their own learning rate; with a ``teacher``, the loss distills from it (layer by layer too when
    ``settings.layer_distill > 0``; ``hidden_kept`` then names the teacher's residual dimensions a student cut
    narrower kept, see :class:`~blockprune.engine.layerwise.LayerDistiller`).
    """
    out_dir = Path(out_dir)
    dataset = task.train_dataset(tokenizer, settings.max_length)
    tokens = len(dataset) > 0 and isinstance(dataset[0], dict) and "input_ids" in dataset[0]
    steps = optimizer_steps(len(dataset), settings)
    extended = settings.min_steps > 0 and steps == settings.min_steps
    args = training_arguments(out_dir, settings, group_by_length=tokens, max_steps=steps if extended else -1)
    objective = PruningObjective(model, pruner, teacher, settings.alpha, settings.temperature,
                                 layer_distill=settings.layer_distill, hidden_kept=hidden_kept)
    watch = StopOnNonFinite(objective)
    callbacks: list[transformers.TrainerCallback] = [watch]
    if objective.layer_distiller is not None:
        callbacks.insert(0, DistillLogCallback(objective))
    optimizer = None  # without a pruner the Trainer builds one over the objective (a projection included)
    if pruner is not None:
        callbacks.insert(0, PruningCallback(pruner))
        optimizer = make_optimizer(pruner, settings.learning_rate, settings.weight_decay, score_lr,
                                   extra=objective.own_parameters())
    trainer = transformers.Trainer(
        model=objective,
        args=args,
        train_dataset=dataset,
        data_collator=task.collate(tokenizer),
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    # our callbacks first, so the pruning numbers are in the logs before the progress bar prints them
    ours = PruningCallback | DistillLogCallback | StopOnNonFinite
    trainer.callback_handler.callbacks.sort(key=lambda cb: not isinstance(cb, ours))
    last = last_complete_checkpoint(args.output_dir)
    start = time.perf_counter()
    if pruner is not None and pruner.config.score_init_from == "taylor" and last is None:
        # a resumed run has its scores in the checkpoint; a fresh one ranks by the task loss's gradients first
        loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True,
                                             collate_fn=task.collate(tokenizer),
                                             generator=torch.Generator().manual_seed(settings.seed))
        used = init_scores_taylor(pruner, model, itertools.islice(loader, TAYLOR_BATCHES))
        logger.info("scores start from Taylor importance on %d training batches", used)
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:
        watch.handle.remove()
    model.eval()
    per_epoch = optimizer_steps(len(dataset), dataclasses.replace(settings, epochs=1.0, min_steps=0))
    return {"seconds": time.perf_counter() - start, "steps": int(trainer.state.max_steps),
            "epochs": round(trainer.state.max_steps / per_epoch, 3)}
