"""The whole run, stage by stage: teacher → prune → shrink → fill → evaluate → bench → report.

Each stage writes its output under the run directory and, last, a ``done.json`` with its results; a
re-run of the same command skips the stages that have one and resumes an interrupted training stage
from its last checkpoint. ``run_config.json`` records the options that shape the result, so a run
directory made with other options is never overwritten silently.

Layout of a run directory ``D``::

    D/run_config.json        options of the run (checked on every re-run)
    D/teacher/model/         fine-tuned dense model (unless --teacher was given)
    D/prune/model/           pruned model at full shapes, masks baked in (zeros)
    D/shrink/model/          the shrunk model (save_pruned format)
    D/fill/model/            the shrunk model fine-tuned again (``-filled`` presets)
    D/model/                 the final model: load it with ``blockprune.load_pruned``
    D/report.{json,md,html}  and D/plots/*.png

Example:
    >>> report = run(RunOptions(preset="struct", target_speedup=2.0, output_dir="runs/struct2x"))  # doctest: +SKIP
    >>> report["speedup"]["measured"], report["final"]["metric"]                                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from . import __version__, atomic
from .compact import size_report
from .config import HEAD, NEURON, PRESETS, PruningConfig
from .measure import count_params, ffn_per_layer, flops_per_token, heads_per_layer, speedup
from .pruner import Pruner
from .saving import load_pruned, save_pruned
from .shrink import ShrinkError, check_ffn_multiple, shrink
from .tasks import Task, embedded_model_path, load_task
from .training import TrainSettings, check_overrides, train

MAX_SPARSITY = 0.95
FILLED_SUFFIX = "-filled"


class RunError(ValueError):
    """A run cannot start as asked; the message names the option and the fix."""


@dataclass
class RunOptions:
    """Everything a pipeline run depends on (the CLI maps its flags onto these fields)."""

    model: str | None = None
    task: str = "text-classification"
    dataset: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    preset: str = "struct"
    ffn_multiple: int = 16  # shrink pads FFN widths to a multiple of this with zero neurons (exact; faster kernels)
    target_speedup: float | None = None
    sparsity: float | None = None
    teacher: str | None = None
    epochs: float = 1.0
    teacher_epochs: float = 1.0
    fill_epochs: float = 1.0
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    max_length: int = 128
    batch_size: int = 32
    learning_rate: float = 5e-5
    teacher_learning_rate: float = 5e-5
    alpha: float = 0.9
    temperature: float = 2.0
    seed: int = 42
    pruning: dict[str, Any] = field(default_factory=dict)
    training_args: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False
    output_dir: str = "runs/demo"
    bench_seq_len: int = 128
    bench_batch_sizes: tuple[int, ...] = (1, 32)
    bench_repeats: int = 10
    progress: bool = True
    command: str = ""

    def result_shaping(self) -> dict[str, Any]:
        """The options that change the result (what ``run_config.json`` pins)."""
        skip = {"output_dir", "progress", "command", "bench_repeats"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


# ------------------------------------------------------------------------------------------ targets
def default_target(options: RunOptions) -> None:
    """With neither a target speedup nor a sparsity, aim at a 2x theoretical speedup."""
    if options.target_speedup is None and options.sparsity is None:
        options.target_speedup = 2.0


def flops_split(model_path: str, seq_len: int, trust_remote_code: bool = False) -> tuple[int, int]:
    """FLOPs per token of the attention part (Q/K/V/O + matmuls) and of the FFN part of a dense model.

    The model is built on the ``meta`` device from its config: no weights are read.
    """
    config = transformers.AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    flops = flops_per_token(model, seq_len)
    return flops["total"] - flops["ffn_linear"], flops["ffn_linear"]


def sparsities_for_speedup(target: float, attention_flops: int, ffn_flops: int, head_pruning: bool) -> dict[str, float]:
    """Sparsities that give a theoretical ``target`` speedup of the transformer layers.

    With whole heads and neurons (``struct``), every pruned FLOP goes away after shrink, so both keep
    ``1 / target``. Tiles inside attention only pay off when a head empties completely, which cannot be
    planned; so for tile presets the FFN alone is sized to reach the target (attention heads all kept),
    and attention is pruned at ``1 - 1/target``: every head it empties is extra speed, reported as achieved.
    """
    if target <= 1.0:
        raise RunError(f"--target-speedup {target} must be greater than 1 (1 = the dense model)")
    dense_keep = 1.0 / target
    if head_pruning:
        ffn_keep = dense_keep
    else:
        ffn_keep = ((attention_flops + ffn_flops) / target - attention_flops) / ffn_flops
    if 1.0 - dense_keep > MAX_SPARSITY or 1.0 - ffn_keep > MAX_SPARSITY:
        hint = "" if head_pruning else " with tiles in attention (try --preset struct, which removes whole heads)"
        raise RunError(
            f"--target-speedup {target} cannot be reached{hint}: it needs more than {MAX_SPARSITY:.0%} of the "
            "prunable weights removed. Ask for less."
        )
    return {"sparsity": round(1.0 - ffn_keep, 4), "attention_sparsity": round(1.0 - dense_keep, 4)}


def pruning_config(options: RunOptions, model_path: str) -> PruningConfig:
    """The preset with the target sparsity and any user overrides (validated)."""
    if options.preset not in PRESETS:
        raise RunError(f"--preset {options.preset!r} is unknown; choose one of {sorted(PRESETS)}")
    if options.target_speedup is not None and options.sparsity is not None:
        raise RunError("give either --target-speedup or --sparsity, not both")
    try:
        check_ffn_multiple(options.ffn_multiple, "--ffn-multiple ")
    except ShrinkError as err:
        raise RunError(str(err)) from err
    unknown = sorted(set(options.pruning) - {f.name for f in fields(PruningConfig)})
    if unknown:
        raise RunError(f"--set {', '.join(unknown)}: not a PruningConfig field; "
                       f"choose among {sorted(f.name for f in fields(PruningConfig))}")
    preset = PruningConfig.preset(options.preset, **options.pruning)
    if options.target_speedup is None:
        return preset.replace(sparsity=options.sparsity)
    split = flops_split(model_path, options.max_length, options.trust_remote_code)
    return preset.replace(**sparsities_for_speedup(options.target_speedup, *split, preset.attention_block == HEAD))


# ------------------------------------------------------------------------------------------ helpers
def is_main_process() -> bool:
    """Rank 0 (or not distributed): the process that writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every rank when running under ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def read_done(stage_dir: Path) -> dict[str, Any] | None:
    """The results of a completed stage, or ``None``."""
    done = stage_dir / "done.json"
    return json.loads(done.read_text()) if done.is_file() else None


def write_done(stage_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Mark a stage complete (atomically); only rank 0 writes."""
    if is_main_process():
        atomic.write_text(stage_dir / "done.json", json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
    return results


def save_hf_model(model: nn.Module, path: Path, tokenizer: Any) -> None:
    """``save_pretrained`` of model and tokenizer into ``path``, atomically (rank 0 only)."""
    if is_main_process():
        with atomic.atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)


def versions() -> dict[str, str]:
    """Versions that matter for reproducing a number."""
    return {
        "blockprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def machine() -> dict[str, Any]:
    """The machine the numbers came from."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# ------------------------------------------------------------------------------------------ the run
class Run:
    """One pipeline run in ``options.output_dir``; :meth:`execute` runs the stages not done yet."""

    def __init__(self, options: RunOptions) -> None:
        default_target(options)
        self.options = options
        self.dir = Path(options.output_dir)
        self.model_path = self._model_path()
        self.config = pruning_config(options, self.model_path)
        self.task = self._load_task()
        # a tokenizer, or an image processor for image tasks: the task decides (Task.load_processor)
        self.tokenizer = self.task.load_processor(self.teacher_source(), trust_remote_code=options.trust_remote_code)
        self.settings = TrainSettings(
            epochs=options.epochs, learning_rate=options.learning_rate, batch_size=options.batch_size,
            max_length=options.max_length, seed=options.seed, alpha=options.alpha, temperature=options.temperature,
            progress=options.progress, overrides=dict(options.training_args),
        )
        check_overrides(self.settings.overrides)
        self.check_teacher_labels()

    # -- checks before any long work
    def _model_path(self) -> str:
        model = self.options.model
        if model is None:
            return str(embedded_model_path())
        if os.path.sep in model or model.startswith("."):
            if not Path(model).is_dir():
                raise RunError(f"--model {model} does not exist; give a local model folder or a hub name")
        return model

    def teacher_source(self) -> str:
        teacher = self.options.teacher
        if teacher is not None and not Path(teacher).is_dir():
            raise RunError(f"--teacher {teacher} is not a folder; give a fine-tuned model saved with save_pretrained")
        return teacher or self.model_path

    def _load_task(self) -> Task:
        o = self.options
        return load_task(
            o.task, dataset=o.dataset, train_file=o.train_file, validation_file=o.validation_file,
            text_column=o.text_column, text_pair_column=o.text_pair_column, label_column=o.label_column, seed=o.seed,
            max_train_samples=o.max_train_samples, max_eval_samples=o.max_eval_samples, max_length=o.max_length,
        )

    def check_run_dir(self) -> None:
        """Refuse to reuse a run directory made with other result-shaping options."""
        pinned = self.dir / "run_config.json"
        current = json.loads(json.dumps(self.options.result_shaping(), default=str))
        if pinned.is_file():
            previous = json.loads(pinned.read_text())
            defaults = RunOptions().result_shaping()  # an option newer than the pinned file, at its default, is no change
            changed = sorted(k for k in set(previous) | set(current)
                             if previous.get(k, defaults.get(k)) != current.get(k))
            if changed:
                raise RunError(
                    f"{self.dir} holds a run with other options ({', '.join(changed)} differ); "
                    "use another --output-dir, or delete that folder to start over"
                )
        elif is_main_process():
            atomic.write_text(pinned, json.dumps(current, indent=1, sort_keys=True) + "\n")

    # -- models
    def load_hf(self, path: str | Path) -> nn.Module:
        return self.task.model_class().from_pretrained(
            str(path), trust_remote_code=self.options.trust_remote_code, **self.task.model_kwargs()
        )

    def check_teacher_labels(self) -> None:
        """A ``--teacher`` must predict the task's label set (checked from its config, before any work)."""
        names = getattr(self.task, "label_names", None)
        if self.options.teacher is None or names is None:
            return
        config = transformers.AutoConfig.from_pretrained(self.options.teacher,
                                                         trust_remote_code=self.options.trust_remote_code)
        got = [str(config.id2label[i]) for i in range(config.num_labels)]
        generic = all(g.startswith("LABEL_") for g in got)
        if len(got) != len(names) or not (generic or got == [str(n) for n in names]):
            raise RunError(
                f"--teacher {self.options.teacher} predicts labels {got}, the data has {list(names)}; "
                "use a teacher fine-tuned on this label set, or leave --teacher out to fine-tune one"
            )

    # -- stages
    def stage(self, name: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work(stage_dir)`` unless the stage is done; record its results and wall time in done.json."""
        stage_dir = self.dir / name
        done = read_done(stage_dir)
        if done is None:
            start = time.perf_counter()
            results = work(stage_dir)
            done = write_done(stage_dir, results | {"seconds": time.perf_counter() - start})
        return done

    def stage_teacher(self) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            if self.options.teacher:
                model = self.load_hf(self.options.teacher)
                source = self.options.teacher
            else:
                model = self.load_hf(self.model_path)
                settings = TrainSettings(**{**asdict(self.settings), "epochs": self.options.teacher_epochs,
                                            "learning_rate": self.options.teacher_learning_rate})
                train(model, self.task, self.tokenizer, stage, settings)
                save_hf_model(model, stage / "model", self.tokenizer)
                source = str(stage / "model")
            metrics = self.task.evaluate(model, self.tokenizer, batch_size=self.options.batch_size,
                                         progress=self.options.progress)
            return {"model": source, "metrics": metrics}

        return self.stage("teacher", work)

    def stage_prune(self, teacher_path: str) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            student = self.load_hf(teacher_path)
            pruner = Pruner(student, self.config)
            train(student, self.task, self.tokenizer, stage, self.settings, pruner=pruner,
                  teacher=self.load_hf(teacher_path))
            stats = pruner.stats()
            pruner.finalize()
            save_hf_model(student, stage / "model", self.tokenizer)
            return {"config": self.config.to_dict(), "density": stats}

        return self.stage("prune", work)

    def stage_shrink(self) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            model = self.load_hf(self.dir / "prune" / "model").eval()
            features = self.task.eval_dataset(self.tokenizer, self.options.max_length)
            batch = self.task.collate(self.tokenizer)([features[i] for i in range(min(8, len(features)))])
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.inference_mode():
                before = model(**inputs)
            result = shrink(model, self.options.ffn_multiple)  # outside inference mode: new weights stay trainable
            with torch.inference_mode():
                after = model(**inputs)
            fields = [f for f in ("logits", "start_logits", "end_logits") if getattr(before, f, None) is not None]
            diff = max(float((getattr(before, f) - getattr(after, f)).abs().max()) for f in fields)
            if diff > 1e-4:
                raise RuntimeError(f"shrink changed the outputs by {diff:.2e} (> 1e-4); please report this as a bug")
            save_pruned(model, stage / "model", self.tokenizer, result=result, compact=self.compact_save())
            return {"heads_kept": result.heads_per_layer, "ffn_width": result.ffn_per_layer,
                    "ffn_padding": result.ffn_padding, "params_before": result.params_before, "params_after": result.params_after, "max_abs_diff": diff}

        return self.stage("shrink", work)

    def stage_fill(self, teacher_path: str) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            student = load_pruned(self.dir / "shrink" / "model", model_class=self.task.model_class()).train()
            settings = TrainSettings(**{**asdict(self.settings), "epochs": self.options.fill_epochs})
            train(student, self.task, self.tokenizer, stage, settings, teacher=self.load_hf(teacher_path))
            if is_main_process():
                save_pruned(student, stage / "model", self.tokenizer)
            return {}

        return self.stage("fill", work)

    def compact_save(self) -> bool | str:
        """Sparse presets (zeros left inside the matrices after shrink) save compactly; others when it pays."""
        structured = self.config.attention_block == HEAD and self.config.ffn_block == NEURON
        return "auto" if structured else True

    def final_model_dir(self) -> Path:
        filled = self.options.preset.endswith(FILLED_SUFFIX)
        return self.dir / ("fill" if filled else "shrink") / "model"

    def load_final(self) -> nn.Module:
        return load_pruned(self.final_model_dir(), model_class=self.task.model_class())

    def stage_evaluate(self) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            return {"metrics": self.task.evaluate(self.load_final(), self.tokenizer, batch_size=self.options.batch_size,
                                                  progress=self.options.progress)}

        return self.stage("evaluate", work)

    def stage_bench(self, teacher_path: str) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            o = self.options
            reference, model = self.load_hf(teacher_path).eval(), self.load_final()
            result = speedup(reference, model, seq_len=o.bench_seq_len, batch_sizes=o.bench_batch_sizes,
                             repeats=o.bench_repeats, progress=o.progress)
            return result | {
                "heads_before": heads_per_layer(reference), "ffn_before": ffn_per_layer(reference),
                "params_before": count_params(reference), "params_after": count_params(model),
                "flops_before": flops_per_token(reference, o.bench_seq_len),
                "flops_after": flops_per_token(model, o.bench_seq_len),
            }

        stale = read_done(self.dir / "bench")
        if stale is not None and "heads_before" not in stale:  # written before the dense totals were recorded
            (self.dir / "bench" / "done.json").unlink()
        return self.stage("bench", work)

    def execute(self) -> dict[str, Any]:
        """Run every stage not done yet; write the final model and the report; return the report dict.

        Under ``torchrun`` every rank trains (teacher, prune, fill); rank 0 alone shrinks, evaluates,
        benchmarks (so the timings are not disturbed by the other ranks) and writes the files.
        """
        self.check_run_dir()
        teacher = self.stage_teacher()
        barrier()
        prune = self.stage_prune(teacher["model"])
        barrier()
        if is_main_process():
            self.stage_shrink()
        barrier()
        stages = {"teacher": teacher, "prune": prune, "shrink": read_done(self.dir / "shrink")}
        if self.options.preset.endswith(FILLED_SUFFIX):
            stages["fill"] = self.stage_fill(teacher["model"])
            barrier()
        if not is_main_process():
            barrier()  # wait for rank 0 to evaluate, benchmark and report
            return json.loads((self.dir / "report.json").read_text())
        stages["evaluate"] = self.stage_evaluate()
        stages["bench"] = self.stage_bench(teacher["model"])
        report = self.build_report(stages)
        final = self.dir / "model"
        with atomic.atomic_dir(final) as tmp:
            shutil.copytree(self.final_model_dir(), tmp, dirs_exist_ok=True)
        atomic.write_text(self.dir / "report.json", json.dumps(report, indent=1, sort_keys=True) + "\n")
        from .report import render_report

        render_report(self.dir)
        barrier()
        return report

    def build_report(self, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Assemble ``report.json`` from the stages' results."""
        o, task = self.options, self.task
        bench = stages["bench"]
        by_batch = {str(b["batch_size"]): b for b in bench.get("batches", [])}
        main_batch = str(max(o.bench_batch_sizes))
        target_kind = "speedup" if o.target_speedup is not None else "sparsity"
        achieved = bench["theoretical"] if target_kind == "speedup" else 1.0 - stages["prune"]["density"]["overall"]
        shrunk = stages["shrink"]
        heads = [sum(layer) for layer in shrunk["heads_kept"]]
        return {
            "format": "blockprune-report",
            "version": 1,
            "task": task.name,
            "metric_name": task.metric_name,
            "higher_is_better": task.higher_is_better,
            "data": task.describe(),
            "model": self.model_path if o.model is None else o.model,
            "preset": o.preset,
            "target": {"kind": target_kind, "value": o.target_speedup or o.sparsity, "achieved": achieved},
            "pruning": {"config": stages["prune"]["config"], "density": stages["prune"]["density"]},
            "teacher": {"metric": stages["teacher"]["metrics"][task.metric_name],
                        "metrics": stages["teacher"]["metrics"],
                        "latency_ms": {k: v["reference_ms"] for k, v in by_batch.items()}},
            "final": {"metric": stages["evaluate"]["metrics"][task.metric_name],
                      "metrics": stages["evaluate"]["metrics"],
                      "latency_ms": {k: v["model_ms"] for k, v in by_batch.items()}},
            "speedup": {"measured": by_batch[main_batch]["measured"] if main_batch in by_batch else None,
                        "measured_by_batch": {k: v["measured"] for k, v in by_batch.items()},
                        "theoretical": bench["theoretical"], "seq_len": o.bench_seq_len,
                        "threads": bench.get("threads"), "device": bench.get("device")},
            "params": {key: {"before": bench["params_before"][key], "after": bench["params_after"][key]}
                       for key in ("linear", "total", "non_embedding")},
            "flops_per_token": {"before": bench["flops_before"]["total"], "after": bench["flops_after"]["total"]},
            "heads_kept": heads,
            "heads_total": bench["heads_before"],
            "ffn_width": shrunk["ffn_width"],
            "ffn_total": bench["ffn_before"],
            "size": size_report(self.final_model_dir(), self.load_final()),
            "stages": {name: {"seconds": round(s.get("seconds", 0.0), 1)} for name, s in stages.items()},
            "command": o.command or "blockprune.run(RunOptions(...)) from Python",
            "versions": versions(),
            "machine": machine(),
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def run(options: RunOptions) -> dict[str, Any]:
    """Validate ``options`` (before any long work) and run the pipeline; return the report dict."""
    return Run(options).execute()
