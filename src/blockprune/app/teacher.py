"""The teacher stage without ``--teacher-epochs``: fine-tune one epoch at a time until dev stops improving.

This is the protocol of the frontier's reference (``benchmarks/frontier_methods.py``, ``reference``), the teacher
every measured recipe distilled from: each epoch is one training run of one epoch (warm-up and linear decay
within it, seed ``seed + epoch - 1``), scored on the validation split after it. Training stops once ``patience``
epochs in a row have not beaten the best dev metric (a tie is no gain), or at ``max_epochs``, and the best
epoch's weights become ``teacher/model`` (a tie keeps the earlier epoch). The test split is never looked at here:
it is scored once, on the chosen model, for the report.

Resumable like every stage: epoch ``k`` trains in ``teacher/epoch-k/`` (its checkpoints while it runs; then its
``model/`` and a ``done.json`` with its dev metrics). A re-run reads the finished epochs' ``done.json``, so it
takes the same decisions, trains the next epoch from the latest finished epoch's model, and resumes an interrupted
epoch from its checkpoints. To spare the disk, a finished epoch's checkpoints are removed, and only the best and
the latest epoch's models are kept while training (the two a resumed run can need).

Example:
    >>> should_stop([0.80, 0.83, 0.82], patience=1, max_epochs=3, higher_is_better=True)
    True
    >>> best_epoch([0.80, 0.83, 0.82], higher_is_better=True)   # 0-based: the second epoch
    1
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from blockprune import atomic
from blockprune.app.finetune import train
from blockprune.app.stagefiles import barrier, is_main_process, read_done, save_hf_model, write_done

EPOCH_DIR = "epoch-{}"


def _better(value: float, than: float, higher_is_better: bool) -> bool:
    """Strictly better (a tie, or a NaN, is no gain)."""
    return value > than if higher_is_better else value < than


def best_epoch(values: list[float], higher_is_better: bool) -> int:
    """Index of the best dev metric in ``values`` (one per epoch, in order); the first of equals."""
    best = 0
    for index, value in enumerate(values):
        if _better(value, values[best], higher_is_better):
            best = index
    return best


def should_stop(values: list[float], patience: int, max_epochs: int, higher_is_better: bool) -> bool:
    """After the epochs scored so far (``values``): stop at ``max_epochs``, or once the last ``patience`` epochs
    have not beaten the best epoch before them."""
    return len(values) >= max_epochs or len(values) - 1 - best_epoch(values, higher_is_better) >= patience


def _drop_models(stage: Path, keep: set[int], upto: int) -> None:
    """Remove the saved models of epochs 1..``upto`` not in ``keep`` (rank 0; their ``done.json`` stays)."""
    if not is_main_process():
        return
    for epoch in range(1, upto + 1):
        if epoch not in keep:
            shutil.rmtree(stage / EPOCH_DIR.format(epoch) / "model", ignore_errors=True)


def train_until_dev_stops(run: Any, stage: Path) -> dict[str, Any]:
    """Fine-tune ``run.model_path`` on ``run.task`` epoch by epoch into ``stage`` (see the module docstring).

    ``run`` is the :class:`~blockprune.app.pipeline.Run` (its options, task, tokenizer, training settings,
    ``load_hf`` and ``test_scores``). Returns the teacher stage's results: ``model``, ``metrics`` (dev, of the
    chosen epoch), ``test_metrics`` when the task has a test split, and ``training``: ``chosen_epoch``,
    ``epochs_trained``, ``max_epochs``, ``patience``, ``stopped`` (why) and ``history`` (dev metrics per epoch).
    """
    o, task, tokenizer = run.options, run.task, run.tokenizer
    metric, higher = task.metric_name, task.higher_is_better
    history: list[dict[str, Any]] = []
    model = None  # the model in memory, at the end of the last epoch trained in this process
    for epoch in range(1, o.teacher_max_epochs + 1):
        folder = stage / EPOCH_DIR.format(epoch)
        done = read_done(folder)
        if done is None:
            if model is None:  # start from the base model, or from the latest finished epoch on disk
                model = run.load_hf(stage / EPOCH_DIR.format(epoch - 1) / "model" if epoch > 1 else run.model_path)
            settings = dataclasses.replace(run.settings, epochs=1.0, learning_rate=o.teacher_learning_rate,
                                           seed=o.seed + epoch - 1, min_steps=0)
            train(model, task, tokenizer, folder, settings)
            save_hf_model(model, folder / "model", tokenizer)
            scored = task.evaluate(model, tokenizer, batch_size=o.batch_size, progress=o.progress)
            done = write_done(folder, {"epoch": epoch, "metrics": scored})
            barrier()
            if is_main_process():
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the epoch's model and done.json suffice
        history.append(done)
        values = [float(h["metrics"][metric]) for h in history]
        if model is not None:  # an epoch trained just now is the latest: keep it and the best
            _drop_models(stage, {best_epoch(values, higher) + 1, epoch}, epoch)
        if should_stop(values, o.teacher_patience, o.teacher_max_epochs, higher):
            break
    chosen = best_epoch(values, higher) + 1
    final = stage / "model"
    source = stage / EPOCH_DIR.format(chosen) / "model"
    if is_main_process() and source.is_dir():  # not there: a run stopped after this copy, which stands
        with atomic.atomic_dir(final) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        _drop_models(stage, set(), len(history))
    barrier()
    capped = len(values) >= o.teacher_max_epochs and len(values) - chosen < o.teacher_patience
    training = {
        "chosen_epoch": chosen, "epochs_trained": len(history), "max_epochs": o.teacher_max_epochs,
        "patience": o.teacher_patience, "metric": metric,
        "stopped": "epoch cap" if capped else "dev stopped improving",
        "history": [{"epoch": h["epoch"], metric: h["metrics"][metric]} for h in history],
    }
    best = run.load_hf(final).eval() if task.test_examples else None
    test = run.test_scores(best) if best is not None else {}
    return {"model": str(final), "metrics": history[chosen - 1]["metrics"], **test, "training": training}
