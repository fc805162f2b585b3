"""What a ``blockprune prune`` run is asked to do: :class:`RunOptions`, and the checks made before any work.

The options that shape the trained model are pinned in ``run_config.json`` by the pipeline; the benchmark
options (``bench_*``) are not, since they only say how latency is timed.

Example:
    >>> options = RunOptions(preset="struct", target_speedup=2.0, output_dir="runs/struct2x")   # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import transformers

from blockprune import atomic
from blockprune.deploy.devices import check_bench_settings
from blockprune.deploy.latency_model import Setting
from blockprune.deploy.plan import SPEED_MODELS, PlanError, measured_plan, planned_config
from blockprune.engine.config import FILL_PRESETS, PruningConfig
from blockprune.engine.layerwise import check_layer_distill


class RunError(ValueError):
    """A run cannot start as asked; the message names the option and the fix."""


TEACHER_MAX_EPOCHS = 2
"""The most epochs the teacher trains when ``teacher_epochs`` is not given (it stops earlier once dev stops
improving, see :mod:`blockprune.app.teacher`). The one place this default lives: the CLI reads it too.
2 keeps ``make demo`` under 15 minutes on 2 cores: with a cap of 3 the demo's run alone took 15:11 (teacher
3 epochs 477 s, dev 83.77 / 85.01 / 85.79, still rising; pruning 2 epochs 389 s). Raise it when time allows."""
TEACHER_PATIENCE = 1
"""Epochs without a better dev metric after which the teacher stops (the frontier's reference protocol)."""
PRUNING_BUDGET_EPOCHS = 2.0
"""Epochs of training after the teacher, as the frontier gives every compressed model (``benchmarks/frontier.py``
``--budget-epochs``): all pruning, or, for a run with a fill stage, half pruning and half fill."""


@dataclass
class RunOptions:
    """Everything a pipeline run depends on (the CLI maps its flags onto these fields)."""

    model: str | None = None
    task: str = "text-classification"
    dataset: str | None = None
    dataset_config: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None  # scored only for the report (teacher and final model), never for choices
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None  # like test_split, for local files: scored only for the report
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    preset: str = "struct"
    ffn_multiple: int = 16  # shrink pads FFN widths to a multiple of this with zero neurons (exact; faster kernels)
    target_speedup: float | None = None
    sparsity: float | None = None
    speed_model: str = "flops"  # "measured": target_speedup is spent on the bench device's latency table
    latency_cache: str | None = None  # folder of latency tables (None: the user cache dir); where, not what
    teacher: str | None = None
    epochs: float | None = None  # pruning epochs; None: the frontier's budget (see default_epochs)
    min_pruning_steps: int = 0  # the pruning stage takes at least this many optimizer steps (more epochs if needed)
    teacher_epochs: float | None = None  # None: epoch by epoch until dev stops improving (the two below)
    teacher_max_epochs: int = TEACHER_MAX_EPOCHS
    teacher_patience: int = TEACHER_PATIENCE
    fill_epochs: float = PRUNING_BUDGET_EPOCHS / 2
    fill: bool = False  # shrink, then fine-tune the shrunk model again with distillation (hybrid-filled sets it)
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 128
    batch_size: int = 32
    learning_rate: float = 5e-5
    teacher_learning_rate: float = 5e-5
    alpha: float = 0.9
    temperature: float = 2.0
    layer_distill: float = 0.0  # weight of the hidden-state distillation term (prune and fill stages); 0 = off
    seed: int = 42
    pruning: dict[str, Any] = field(default_factory=dict)
    training_args: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    output_dir: str = "runs/demo"
    bench_seq_len: int = 128
    bench_batch_sizes: tuple[int, ...] = (1, 32)
    bench_repeats: int = 10
    bench_device: str = "cpu"  # cpu, cuda, cuda:N
    bench_threads: int | None = None  # torch intra-op threads while timing (None: torch's choice)
    bench_dtype: str = "fp32"  # fp32, fp16, bf16
    quantize: str | None = None  # "int8": also evaluate and time the final model quantized (blockprune.deploy.quantize)
    progress: bool = True
    command: str = ""

    @property
    def fills(self) -> bool:
        """Whether the run has a fill stage: ``fill`` asked for, or a preset whose recipe has one."""
        return self.fill or self.preset in FILL_PRESETS

    def result_shaping(self) -> dict[str, Any]:
        """The options that change the result (what ``run_config.json`` pins); the bench options do not, nor do
        the teacher's training options when a ``teacher`` is given (:meth:`unused`)."""
        skip = {"output_dir", "progress", "command", "latency_cache", *BENCH_OPTIONS, *self.unused()}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def unused(self) -> tuple[str, ...]:
        """Options this run does not read: how to train a teacher, when one is given."""
        return TEACHER_TRAINING if self.teacher else ()

    def bench_settings(self) -> dict[str, Any]:
        """The bench options as ``bench/done.json`` records them (the stage is measured again when they change)."""
        return json.loads(json.dumps({k.removeprefix("bench_"): getattr(self, k) for k in BENCH_OPTIONS}))


BENCH_OPTIONS = ("bench_seq_len", "bench_batch_sizes", "bench_repeats", "bench_device", "bench_threads", "bench_dtype")
TEACHER_TRAINING = ("teacher_epochs", "teacher_max_epochs", "teacher_patience", "teacher_learning_rate")
"""How the teacher stage fine-tunes ``model``: unused (and not pinned) when ``teacher`` is given."""


# ------------------------------------------------------------------------------------------ targets
def default_target(options: RunOptions) -> None:
    """With neither a target speedup nor a sparsity, aim at a 2x theoretical speedup."""
    if options.target_speedup is None and options.sparsity is None:
        options.target_speedup = 2.0


def pruning_epochs(options: RunOptions) -> float:
    """``epochs``, or without it the frontier's budget (:data:`PRUNING_BUDGET_EPOCHS`): all of it, or half when the
    run has a fill stage (which then trains ``fill_epochs``, by default the other half), as the frontier ran it."""
    if options.epochs is not None:
        return options.epochs
    return PRUNING_BUDGET_EPOCHS / 2 if options.fills else PRUNING_BUDGET_EPOCHS


def default_epochs(options: RunOptions) -> None:
    """Set ``epochs`` to :func:`pruning_epochs` (so ``run_config.json`` pins the number the run trains)."""
    options.epochs = pruning_epochs(options)


def check_training_options(options: RunOptions) -> None:
    """Epoch counts and the layer-wise distillation weight are sound (checked before any work): one clear error
    naming the flag."""
    o = options
    for flag, value in (("--epochs", o.epochs), ("--fill-epochs", o.fill_epochs), ("--teacher-epochs", o.teacher_epochs)):
        if value is not None and not value > 0:
            raise RunError(f"{flag} {value} must be > 0")
    for flag, value, least in (("--teacher-max-epochs", o.teacher_max_epochs, 1),
                               ("--teacher-patience", o.teacher_patience, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise RunError(f"{flag} {value!r} must be a whole number >= {least}")
    try:
        check_layer_distill(o.layer_distill, "--layer-distill ")
    except ValueError as err:
        raise RunError(str(err)) from None


def pruning_config(options: RunOptions, model_path: str) -> PruningConfig:
    """The preset with the target sparsity and any user overrides (validated; see :func:`plan.planned_config`)."""
    try:
        return planned_config(options.preset, options.target_speedup, options.sparsity, options.pruning,
                              options.ffn_multiple, model_path, options.max_length, options.trust_remote_code)
    except PlanError as err:
        raise RunError(str(err)) from err


def latency_setting(options: RunOptions) -> Setting:
    """Where ``--speed-model measured`` prices shapes: the bench stage's device, dtype, threads and sequence length,
    at its largest batch (the speedup the report then measures beside the prediction)."""
    o = options
    return Setting(o.bench_device, o.bench_dtype, o.bench_threads, o.bench_seq_len, max(o.bench_batch_sizes))


MEASURED_PLAN = "measured_plan.json"
"""Where a ``--speed-model measured`` run keeps its plan: a resumed run trains to the shapes it was planned for,
even if the latency cache was cleared or the run moved to another machine."""


def measured_run_plan(options: RunOptions, model_path: str) -> tuple[PruningConfig, dict[str, Any]]:
    """The config and plan of a ``--speed-model measured`` run (:func:`blockprune.deploy.plan.measured_plan`; the
    latency table is measured once on this device and cached). A run folder that holds them for the same request
    (:func:`pin_measured_plan`) gives them back instead: a resumed run does not plan again."""
    o = options
    if o.speed_model not in SPEED_MODELS:
        raise RunError(f"--speed-model {o.speed_model!r} is unknown; choose one of {list(SPEED_MODELS)}")
    if o.target_speedup is None:
        raise RunError("--speed-model measured spends a --target-speedup, not a --sparsity; give --target-speedup X")
    pinned = Path(o.output_dir) / MEASURED_PLAN
    saved = json.loads(pinned.read_text()) if pinned.is_file() else None
    if saved is not None and saved["asked"] == _measured_request(o):
        return PruningConfig.from_dict(saved["config"]), saved["plan"]
    try:
        return measured_plan(model_path, o.preset, o.target_speedup, o.pruning, o.ffn_multiple, latency_setting(o),
                             latency_cache=o.latency_cache, trust_remote_code=o.trust_remote_code)
    except PlanError as err:
        raise RunError(str(err)) from err


def _measured_request(options: RunOptions) -> dict[str, Any]:
    o = options
    return json.loads(json.dumps({"preset": o.preset, "target_speedup": o.target_speedup, "pruning": o.pruning,
                                  "ffn_multiple": o.ffn_multiple, "setting": asdict(latency_setting(o))}))


def pin_measured_plan(options: RunOptions, config: PruningConfig, plan: dict[str, Any]) -> None:
    """Keep a measured run's plan in its folder (:data:`MEASURED_PLAN`), once the folder is known to be this run's;
    a plan already there is left as it is."""
    pinned = Path(options.output_dir) / MEASURED_PLAN
    if not pinned.is_file():
        atomic.write_text(pinned, json.dumps({"asked": _measured_request(options), "config": config.to_dict(),
                                              "plan": plan}, indent=1, sort_keys=True) + "\n")


def check_bench_options(options: RunOptions) -> None:
    """The ``--bench-*`` options are sound and this machine can time as asked (checked before any work)."""
    o = options
    sizes = o.bench_batch_sizes
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise RunError(f"--bench-batch-sizes {','.join(map(str, sizes))!r} must be whole numbers >= 1, e.g. 1,32")
    for flag, value in (("--bench-seq-len", o.bench_seq_len), ("--bench-repeats", o.bench_repeats)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RunError(f"{flag} {value!r} must be a whole number >= 1")
    try:
        check_bench_settings(o.bench_device, o.bench_dtype, o.bench_threads,
                             flags=("--bench-device", "--bench-dtype", "--bench-threads"))
    except ValueError as err:
        raise RunError(str(err)) from None


def check_bench_length(options: RunOptions, model_path: str) -> None:
    """``--bench-seq-len`` fits the model's position table (read from its config; no weights are loaded)."""
    config = transformers.AutoConfig.from_pretrained(model_path, trust_remote_code=options.trust_remote_code)
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and options.bench_seq_len > limit:
        raise RunError(f"--bench-seq-len {options.bench_seq_len} is longer than the model's {limit} positions "
                       f"(max_position_embeddings); use at most {limit}")
