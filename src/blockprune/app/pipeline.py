"""The whole run, stage by stage: teacher → prune → shrink → fill → evaluate → bench → (quantize) → report.

Each stage writes its output under the run directory and, last, a ``done.json`` with its results; a
re-run of the same command skips the stages that have one and resumes an interrupted training stage
from its last checkpoint. ``run_config.json`` records the options that shape the result, so a run
directory made with other options is never overwritten silently. The benchmark options (``bench_*``: where,
in which precision and how latency is timed) do not shape the trained model, so they are not pinned: they
are recorded in ``bench/done.json`` instead, and the bench stage alone is measured again when they change.

Layout of a run directory ``D``::

    D/run_config.json        options of the run (checked on every re-run)
    D/teacher/model/         fine-tuned dense model (unless --teacher was given): without --teacher-epochs, the
                             best of D/teacher/epoch-K/ (one per epoch, until dev stops improving: app/teacher.py)
    D/prune/model/           pruned model at full shapes, masks baked in (zeros); with hidden_sparsity its residual
                             is cut already (save_pruned format: a stock config cannot describe it)
    D/shrink/model/          the shrunk model (save_pruned format)
    D/fill/model/            the shrunk model fine-tuned again (--fill, or a preset in FILL_PRESETS)
    D/model/                 the final model: load it with ``blockprune.load_pruned``
    D/quantize/done.json     with ``quantize="int8"``: the int8 final model's metrics, speedup and size
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from blockprune import __version__, atomic
from blockprune.app.finetune import TrainSettings, check_overrides, train
from blockprune.app.options import (
    BENCH_OPTIONS,
    RunError,
    RunOptions,
    check_bench_length,
    check_bench_options,
    check_training_options,
    default_epochs,
    default_target,
    measured_run_plan,
    pin_measured_plan,
    pruning_config,
    pruning_epochs,
)
from blockprune.app.progress import StageClock
from blockprune.app.stagefiles import barrier, is_main_process, read_done, save_hf_model, write_done
from blockprune.app.teacher import train_until_dev_stops
from blockprune.deploy.counts import count_params, ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.devices import machine
from blockprune.deploy.measure import speedup
from blockprune.deploy.plan import make_plan
from blockprune.deploy.quantize import QuantizeError, check_scheme, quantized_linears, size_bytes
from blockprune.engine.config import HEAD, NEURON
from blockprune.engine.pruner import Pruner
from blockprune.store.saving import SHAPES_FILE, load_pruned, save_pruned
from blockprune.store.size import size_report
from blockprune.surgery.shrink import shrink
from blockprune.tasks import Task, embedded_model_path, load_task


@dataclass(frozen=True)
class StageSpec:
    """One stage of a run: its name (= its folder), whether a run executes it, and its expected cost.

    ``cost(options, num_train, num_eval)`` is in training-example steps (one forward + backward of one
    example, taken as 3 forward passes); only the ratios between stages matter: they turn the time the
    finished stages took into the "about ... left" of the progress lines (:mod:`blockprune.run_progress`).
    """

    name: str
    cost: Callable[[RunOptions, int, int], float]
    when: Callable[[RunOptions], bool] = lambda options: True


def _bench_cost(o: RunOptions, num_train: int, num_eval: int) -> float:
    """Both models, 3 warm-up + ``bench_repeats`` forward passes per batch size, at ``bench_seq_len`` tokens."""
    return 2 * (3 + o.bench_repeats) * sum(o.bench_batch_sizes) * o.bench_seq_len / o.max_length / 3


STAGES: tuple[StageSpec, ...] = (
    # fine-tune (unless --teacher), then evaluate the teacher
    # (without --teacher-epochs: up to the cap, each epoch with its dev evaluation)
    StageSpec("teacher", lambda o, n, e: (0 if o.teacher else o.teacher_epochs * n if o.teacher_epochs
                                          else o.teacher_max_epochs * (n + e / 3)) + e / 3),
    # student step + teacher forward (1/3) + scores and masks: about 1.5 training steps
    StageSpec("prune", lambda o, n, e: 1.5 * pruning_epochs(o) * n),
    StageSpec("shrink", lambda o, n, e: 2 * 8 / 3),  # two forward passes on 8 examples (+ loading: not modelled)
    StageSpec("fill", lambda o, n, e: (1 + 1 / 3) * o.fill_epochs * n,  # student step + teacher forward
              when=lambda o: o.fills),
    StageSpec("evaluate", lambda o, n, e: e / 3),
    StageSpec("bench", _bench_cost),
    # evaluate and time the int8 model (dynamic int8 runs on CPU)
    StageSpec("quantize", lambda o, n, e: e / 3 + _bench_cost(o, n, e), when=lambda o: o.quantize is not None),
)
"""Every stage a run can execute, in order: the one list the progress lines count (add new stages here)."""


"""How latency is timed: recorded with the bench stage, not pinned in ``run_config.json``."""


# ------------------------------------------------------------------------------------------ helpers
def versions() -> dict[str, str]:
    """Versions that matter for reproducing a number."""
    return {
        "blockprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------ the run
class Run:
    """One pipeline run in ``options.output_dir``; :meth:`execute` runs the stages not done yet."""

    def __init__(self, options: RunOptions) -> None:
        default_target(options)
        default_epochs(options)
        check_training_options(options)
        self.options = options
        check_bench_options(options)  # e.g. --bench-device cuda without CUDA: fail now, not after training
        self.dir = Path(options.output_dir)
        self.model_path = self._model_path()
        check_bench_length(options, self.model_path)
        if options.speed_model == "flops":
            self.config = pruning_config(options, self.model_path)
            self.plan = self._plan()
        else:  # the target spent on this device's measured latency table (measured once, cached)
            self.config, self.plan = measured_run_plan(options, self.model_path)
        self.task = self._load_task()
        # a tokenizer, or an image processor for image tasks: the task decides (Task.load_processor)
        self.tokenizer = self.task.load_processor(self.teacher_source(), trust_remote_code=options.trust_remote_code)
        self.settings = TrainSettings(
            epochs=options.epochs, learning_rate=options.learning_rate, batch_size=options.batch_size,
            max_length=options.max_length, seed=options.seed, alpha=options.alpha, temperature=options.temperature,
            progress=options.progress, overrides=dict(options.training_args),
            layer_distill=options.layer_distill,  # issue 35 item 3: the prune and fill stages' hidden-state term
        )
        check_overrides(self.settings.overrides)
        if options.min_pruning_steps < 0:
            raise RunError(f"--min-pruning-steps {options.min_pruning_steps} must be >= 0")
        self.check_teacher_labels()
        self.clock = StageClock(self.stage_plan(), enabled=options.progress and is_main_process())
        if options.quantize is not None:
            try:
                check_scheme(options.quantize, "--quantize ")
            except QuantizeError as err:
                raise RunError(str(err)) from err

    # -- checks before any long work
    def _model_path(self) -> str:
        model = self.options.model
        if model is None:
            return str(embedded_model_path())
        if os.path.sep in model or model.startswith("."):
            if not Path(model).is_dir():
                raise RunError(f"--model {model} does not exist; give a local model folder or a hub name")
        return model

    def _plan(self) -> dict[str, Any]:
        """The shapes and theoretical speedup the target implies, from the config alone (``plan`` in report.json)."""
        o = self.options
        kind = "speedup" if o.target_speedup is not None else "sparsity"
        try:
            return make_plan(self.model_path, self.config, preset=o.preset,
                             target={"kind": kind, "value": o.target_speedup or o.sparsity}, seq_len=o.max_length,
                             ffn_multiple=o.ffn_multiple, trust_remote_code=o.trust_remote_code)
        except ValueError as err:  # a preview only: a model the planner cannot build must not stop the run
            return {"error": str(err)}

    def teacher_source(self) -> str:
        teacher = self.options.teacher
        if teacher is not None and not Path(teacher).is_dir():
            raise RunError(f"--teacher {teacher} is not a folder; give a fine-tuned model saved with save_pretrained")
        return teacher or self.model_path

    def _load_task(self) -> Task:
        o = self.options
        return load_task(
            o.task, dataset=o.dataset, dataset_config=o.dataset_config, train_split=o.train_split,
            validation_split=o.validation_split, test_split=o.test_split, train_file=o.train_file,
            validation_file=o.validation_file, test_file=o.test_file,
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
            ignored = {*BENCH_OPTIONS, *self.options.unused()}  # older files pinned some bench options
            changed = sorted(k for k in set(previous) | set(current)
                             if k not in ignored and previous.get(k, defaults.get(k)) != current.get(k))
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
    def stage_plan(self) -> list[tuple[str, float]]:
        """The stages this run executes, in order, with their expected relative costs (see :data:`STAGES`)."""
        o, task = self.options, self.task
        return [(spec.name, spec.cost(o, task.num_train, task.num_eval)) for spec in STAGES if spec.when(o)]

    def stage(self, name: str, work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        """Run ``work(stage_dir)`` unless the stage is done; record its results and wall time in done.json.

        With ``options.progress``, rank 0 prints ``stage k/n NAME ...`` lines to stderr (see :mod:`run_progress`).
        """
        stage_dir = self.dir / name
        done = read_done(stage_dir)
        if done is None:
            self.clock.start(name)
            start = time.perf_counter()
            results = work(stage_dir)
            seconds = time.perf_counter() - start
            done = write_done(stage_dir, results | {"seconds": seconds})
            self.clock.done(name, seconds)
        else:
            self.clock.skipped(name)
        return done

    def stage_teacher(self) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            if self.options.teacher:
                model = self.load_hf(self.options.teacher)
                source = self.options.teacher
            elif self.options.teacher_epochs is None:  # epoch by epoch until dev stops improving
                return train_until_dev_stops(self, stage)
            else:
                model = self.load_hf(self.model_path)
                settings = TrainSettings(**{**asdict(self.settings), "epochs": self.options.teacher_epochs,
                                            "learning_rate": self.options.teacher_learning_rate})
                train(model, self.task, self.tokenizer, stage, settings)
                save_hf_model(model, stage / "model", self.tokenizer)
                source = str(stage / "model")
                return {"model": source, **self.scores(model),
                        "training": {"epochs_trained": self.options.teacher_epochs, "stopped": "--teacher-epochs"}}
            return {"model": source, **self.scores(model)}

        return self.stage("teacher", work)

    def stage_prune(self, teacher_path: str) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            student = self.load_hf(teacher_path)
            pruner = Pruner(student, self.config)
            settings = TrainSettings(**{**asdict(self.settings), "min_steps": self.options.min_pruning_steps})
            trained = train(student, self.task, self.tokenizer, stage, settings, pruner=pruner,
                            teacher=self.load_hf(teacher_path))
            stats = pruner.stats()
            if pruner.hidden is None:
                pruner.finalize()
                save_hf_model(student, stage / "model", self.tokenizer)
                hidden = {}
            else:  # finalize cuts the residual (checked exact on a batch): only save_pruned describes that model
                # the dense model's FLOPs, for the shrink stage's speedup (the saved model is narrower already)
                hidden = {"flops_dense": flops_per_token(student, self.options.max_length)["total"]}
                pruner.finalize(inputs=self.check_inputs())
                if is_main_process():
                    save_pruned(student, stage / "model", self.tokenizer, compact=self.compact_save())
                hidden["hidden"] = pruner.hidden_result.to_dict() if pruner.hidden_result is not None else None
            return {"config": self.config.to_dict(), "density": stats, "steps": trained["steps"],
                    "epochs": trained["epochs"], **hidden}

        return self.stage("prune", work)

    def check_inputs(self) -> dict[str, torch.Tensor]:
        """Up to 8 validation examples, without labels: the batch every cut (hidden, shrink) is checked exact on."""
        features = self.task.eval_dataset(self.tokenizer, self.options.max_length)
        batch = self.task.collate(self.tokenizer)([features[i] for i in range(min(8, len(features)))])
        return {k: v for k, v in batch.items() if k != "labels"}

    def stage_shrink(self) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            pruned = self.dir / "prune" / "model"
            narrowed = (pruned / SHAPES_FILE).is_file()  # the prune stage cut the residual (hidden_sparsity)
            model = (load_pruned(pruned, model_class=self.task.model_class()) if narrowed
                     else self.load_hf(pruned)).eval()
            inputs = self.check_inputs()
            with torch.inference_mode():
                before = model(**inputs)
            length = self.options.max_length  # the length the target was solved at (the bench may time another)
            pruning = read_done(self.dir / "prune") or {}
            flops_dense = pruning["flops_dense"] if narrowed else flops_per_token(model, length)["total"]
            result = shrink(model, self.options.ffn_multiple)  # outside inference mode: new weights stay trainable
            with torch.inference_mode():
                after = model(**inputs)
            fields = [f for f in ("logits", "start_logits", "end_logits") if getattr(before, f, None) is not None]
            diff = max(float((getattr(before, f) - getattr(after, f)).abs().max()) for f in fields)
            if diff > 1e-4:
                raise RuntimeError(f"shrink changed the outputs by {diff:.2e} (> 1e-4); please report this as a bug")
            save_pruned(model, stage / "model", self.tokenizer, result=result, compact=self.compact_save())
            cut = pruning.get("hidden") if narrowed else None
            hidden = {"hidden": {"before": cut["width_before"], "after": cut["width_after"],
                                 "max_abs_diff": cut.get("max_abs_diff")}} if cut else {}
            return hidden | {"theoretical": flops_dense / flops_per_token(model, length)["total"], "seq_len": length,
                    "heads_kept": result.heads_per_layer, "ffn_width": result.ffn_per_layer,
                    "ffn_padding": result.ffn_padding, "params_before": result.params_before, "params_after": result.params_after, "max_abs_diff": diff}

        return self.stage("shrink", work)

    def stage_fill(self, teacher_path: str) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            student = load_pruned(self.dir / "shrink" / "model", model_class=self.task.model_class()).train()
            settings = TrainSettings(**{**asdict(self.settings), "epochs": self.options.fill_epochs})
            cut = (read_done(self.dir / "prune") or {}).get("hidden")  # the teacher dims a narrowed student kept
            train(student, self.task, self.tokenizer, stage, settings, teacher=self.load_hf(teacher_path),
                  hidden_kept=cut["kept"] if cut else None)
            if is_main_process():
                save_pruned(student, stage / "model", self.tokenizer)
            return {}

        return self.stage("fill", work)

    def compact_save(self) -> bool | str:
        """Sparse presets (zeros left inside the matrices after shrink) save compactly; others when it pays."""
        structured = self.config.attention_block == HEAD and self.config.ffn_block == NEURON
        return "auto" if structured else True

    def final_model_dir(self) -> Path:
        return self.dir / ("fill" if self.options.fills else "shrink") / "model"

    def load_final(self) -> nn.Module:
        return load_pruned(self.final_model_dir(), model_class=self.task.model_class())

    def scores(self, model: nn.Module) -> dict[str, Any]:
        """``metrics`` on the validation split, and ``test_metrics`` when the task has a test split (report only)."""
        o = self.options
        out = {"metrics": self.task.evaluate(model, self.tokenizer, batch_size=o.batch_size, progress=o.progress)}
        return out | self.test_scores(model)

    def test_scores(self, model: nn.Module) -> dict[str, Any]:
        """``{"test_metrics": ...}`` when the task has a test split (--test-split, --test-file), else ``{}``."""
        if not self.task.test_examples:
            return {}
        o = self.options
        return {"test_metrics": self.task.test_task().evaluate(model, self.tokenizer, batch_size=o.batch_size,
                                                               progress=o.progress)}

    def stage_evaluate(self) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            return self.scores(self.load_final())

        return self.stage("evaluate", work)

    def stage_bench(self, teacher_path: str) -> dict[str, Any]:
        def work(stage: Path) -> dict[str, Any]:
            o = self.options
            reference, model = self.load_hf(teacher_path).eval(), self.load_final()
            result = speedup(reference, model, seq_len=o.bench_seq_len, batch_sizes=o.bench_batch_sizes,
                             repeats=o.bench_repeats, progress=o.progress, device=o.bench_device,
                             dtype=o.bench_dtype, threads=o.bench_threads)
            return result | {
                "settings": o.bench_settings(),
                "heads_before": heads_per_layer(reference), "ffn_before": ffn_per_layer(reference),
                "params_before": count_params(reference), "params_after": count_params(model),
                "flops_before": flops_per_token(reference, o.bench_seq_len),
                "flops_after": flops_per_token(model, o.bench_seq_len),
            }

        stale = read_done(self.dir / "bench")
        # measured with other bench options (or written before they, or the dense totals, were recorded): again
        outdated = stale is not None and stale.get("settings") != self.options.bench_settings()
        if stale is not None and ("heads_before" not in stale or outdated):
            (self.dir / "bench" / "done.json").unlink()
        return self.stage("bench", work)

    def stage_quantize(self, teacher_path: str) -> dict[str, Any]:
        """The final model quantized at load, as ``load_pruned(D/model, quantize=...)`` gives it.

        Records its metrics, its measured speedup over the dense fp32 teacher (timed alternately, like the bench
        stage) and its size (:func:`blockprune.deploy.quantize.size_bytes`).
        """

        def work(stage: Path) -> dict[str, Any]:
            o = self.options
            model = load_pruned(self.final_model_dir(), model_class=self.task.model_class(), quantize=o.quantize)
            metrics = self.task.evaluate(model, self.tokenizer, batch_size=o.batch_size, progress=o.progress)
            result = speedup(self.load_hf(teacher_path).eval(), model, seq_len=o.bench_seq_len,
                             batch_sizes=o.bench_batch_sizes, repeats=o.bench_repeats, threads=o.bench_threads,
                             progress=o.progress)  # on the CPU: dynamic int8 kernels are CPU kernels
            return {"scheme": o.quantize, "metrics": metrics, "batches": result["batches"],
                    "threads": result["threads"], "quantized_linears": len(quantized_linears(model)),
                    "size_bytes": size_bytes(model), "size_bytes_fp32": size_bytes(self.load_final())}

        return self.stage("quantize", work)

    def execute(self) -> dict[str, Any]:
        """Run every stage not done yet; write the final model and the report; return the report dict.

        Under ``torchrun`` every rank trains (teacher, prune, fill); rank 0 alone shrinks, evaluates,
        benchmarks (so the timings are not disturbed by the other ranks) and writes the files.
        """
        self.check_run_dir()
        if self.plan.get("speed_model") == "measured" and is_main_process():  # the folder is this run's: keep its plan
            pin_measured_plan(self.options, self.config, self.plan)
        teacher = self.stage_teacher()
        barrier()
        prune = self.stage_prune(teacher["model"])
        barrier()
        if is_main_process():
            self.stage_shrink()
        barrier()
        stages = {"teacher": teacher, "prune": prune, "shrink": read_done(self.dir / "shrink")}
        if self.options.fills:
            stages["fill"] = self.stage_fill(teacher["model"])
            barrier()
        if not is_main_process():
            barrier()  # wait for rank 0 to evaluate, benchmark and report
            return json.loads((self.dir / "report.json").read_text())
        stages["evaluate"] = self.stage_evaluate()
        stages["bench"] = self.stage_bench(teacher["model"])
        if self.options.quantize is not None:
            stages["quantize"] = self.stage_quantize(teacher["model"])
        report = self.build_report(stages)
        final = self.dir / "model"
        with atomic.atomic_dir(final) as tmp:
            shutil.copytree(self.final_model_dir(), tmp, dirs_exist_ok=True)
        atomic.write_text(self.dir / "report.json", json.dumps(report, indent=1, sort_keys=True) + "\n")
        from blockprune.report.render import render_report

        render_report(self.dir)
        from blockprune.report.card import write_run_card

        write_run_card(self.dir, report)  # D/model/README.md, with the plots just drawn
        barrier()
        return report

    def measured_target(self, by_batch: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """A ``--speed-model measured`` target: the speedup the latency table predicted, the one the fit timed before
        training (random weights at the planned shapes) and the one measured at the table's batch size after it,
        side by side (``achieved`` is the last); nothing for a FLOPs target."""
        if self.plan.get("speed_model") != "measured":
            return {}
        table = self.plan["latency_table"]
        timed = by_batch.get(str(table["batch_size"]), {})
        fit = self.plan.get("latency_fit") or {}
        return {"speed_model": "measured", "predicted": self.plan["predicted_speedup"],
                "fitted": fit.get("measured_speedup"), "fit_met": fit.get("met"),
                "achieved": timed.get("measured"), "batch_size": table["batch_size"], "seq_len": table["seq_len"],
                "latency_table": table}

    def build_report(self, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Assemble ``report.json`` from the stages' results."""
        o, task = self.options, self.task
        bench = stages["bench"]
        by_batch = {str(b["batch_size"]): b for b in bench.get("batches", [])}
        main_batch = str(max(o.bench_batch_sizes))
        target_kind = "speedup" if o.target_speedup is not None else "sparsity"
        shrunk = stages["shrink"]
        # the target was solved at --max-length; the bench's theoretical speedup is at --bench-seq-len (both reported)
        solved = shrunk.get("theoretical", bench["theoretical"])
        achieved = solved if target_kind == "speedup" else 1.0 - stages["prune"]["density"]["overall"]
        heads = [sum(layer) for layer in shrunk["heads_kept"]]
        quantized = {"quantized": quantized_report(stages["quantize"], task.metric_name, main_batch, o.bench_seq_len)
                     } if "quantize" in stages else {}
        return quantized | {
            "format": "blockprune-report",
            "version": 1,
            "task": task.name,
            "metric_name": task.metric_name,
            "higher_is_better": task.higher_is_better,
            "data": task.describe(),
            "model": self.model_path if o.model is None else o.model,
            "preset": o.preset,
            "target": {"kind": target_kind, "value": o.target_speedup or o.sparsity, "achieved": achieved,
                       "seq_len": shrunk.get("seq_len", o.bench_seq_len)} | self.measured_target(by_batch),
            "pruning": {"config": stages["prune"]["config"], "density": stages["prune"]["density"],
                        "steps": stages["prune"].get("steps"), "epochs": stages["prune"].get("epochs")},
            "teacher": {"metric": stages["teacher"]["metrics"][task.metric_name],
                        "metrics": stages["teacher"]["metrics"],
                        **_test_metrics(stages["teacher"]),
                        **({"training": stages["teacher"]["training"]} if "training" in stages["teacher"] else {}),
                        "latency_ms": {k: v["reference_ms"] for k, v in by_batch.items()}},
            "final": {"metric": stages["evaluate"]["metrics"][task.metric_name],
                      "metrics": stages["evaluate"]["metrics"],
                      **_test_metrics(stages["evaluate"]),
                      "latency_ms": {k: v["model_ms"] for k, v in by_batch.items()}},
            "speedup": {"measured": by_batch[main_batch]["measured"] if main_batch in by_batch else None,
                        "measured_by_batch": {k: v["measured"] for k, v in by_batch.items()},
                        "measured_iqr_by_batch": {k: v["measured_iqr"] for k, v in by_batch.items()
                                                  if "measured_iqr" in v},
                        "theoretical": bench["theoretical"], "seq_len": o.bench_seq_len,
                        "threads": bench.get("threads"), "device": bench.get("device"),
                        "device_name": bench.get("device_name"), "dtype": bench.get("dtype")},
            "params": {key: {"before": bench["params_before"][key], "after": bench["params_after"][key]}
                       for key in ("linear", "total", "non_embedding")},
            "flops_per_token": {"before": bench["flops_before"]["total"], "after": bench["flops_after"]["total"]},
            "heads_kept": heads,
            "heads_total": bench["heads_before"],
            "ffn_width": shrunk["ffn_width"],
            "ffn_total": bench["ffn_before"],
            **({"hidden": shrunk["hidden"]} if "hidden" in shrunk else {}),
            "plan": self.plan,
            "size": size_report(self.final_model_dir(), self.load_final()),
            "stages": {name: {"seconds": round(s.get("seconds", 0.0), 1)} for name, s in stages.items()},
            "command": o.command or "blockprune.run(RunOptions(...)) from Python",
            "versions": versions(),
            "machine": machine(),
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def _test_metrics(stage: dict[str, Any]) -> dict[str, Any]:
    """``{"test_metrics": ...}`` of a stage that scored a test split, else nothing."""
    return {"test_metrics": stage["test_metrics"]} if "test_metrics" in stage else {}
def quantized_report(done: dict[str, Any], metric_name: str, main_batch: str, seq_len: int) -> dict[str, Any]:
    """``report.json["quantized"]`` from the quantize stage: speedups are over the dense fp32 teacher.

    ``size_bytes`` is the int8 final model as it would be stored (int8 linear weights with their fp32 row scales
    and biases, everything else at its dtype; see :func:`blockprune.deploy.quantize.size_bytes`), ``size_bytes_fp32``
    the fp32 final model by the same count.
    """
    by_batch = {str(b["batch_size"]): b for b in done["batches"]}
    return {
        "scheme": done["scheme"],
        "metric": done["metrics"][metric_name],
        "metrics": done["metrics"],
        "latency_ms": {k: v["model_ms"] for k, v in by_batch.items()},
        "speedup": {"measured": by_batch[main_batch]["measured"] if main_batch in by_batch else None,
                    "measured_by_batch": {k: v["measured"] for k, v in by_batch.items()},
                    "reference": "dense fp32 teacher", "seq_len": seq_len, "threads": done["threads"]},
        "size_bytes": done["size_bytes"]["total"],
        "size_bytes_fp32": done["size_bytes_fp32"]["total"],
        "quantized_linears": done["quantized_linears"],
    }


def run(options: RunOptions) -> dict[str, Any]:
    """Validate ``options`` (before any long work) and run the pipeline; return the report dict."""
    return Run(options).execute()
