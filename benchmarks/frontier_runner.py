"""Training the frontier's points (resumable) and turning each finished run into a record with its provenance.

Why a module of its own: training is the part that loads the machine for hours and must resume after any stop;
timing (frontier_timing.py) and the report (frontier_report.py) read what it leaves on disk. Every run lives in
``<runs>/<name>-s<seed>/``; ``frontier-result/done.json`` marks it finished and holds its scores and the
``config`` it ran with: for a ``blockprune prune`` run the CLI's own ``run_config.json`` and the resolved pruning
config of its ``report.json``; for the in-process methods the training settings and pruning config they used.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import frontier_plans
from frontier_spec import Point, resolved_config

ROOT = Path(__file__).resolve().parent.parent


def run_dir(runs: Path, point: Point, seed: int) -> Path:
    return runs / f"{point.name}-s{seed}"


def seeds_on_disk(runs: Path, point: Point) -> set[int]:
    """Seeds of ``point`` that have a run folder under ``runs`` (finished or not)."""
    prefix = f"{point.name}-s"
    return {int(d.name[len(prefix):]) for d in runs.glob(f"{prefix}*")
            if d.is_dir() and d.name[len(prefix):].isdigit()}


def blockprune_command(point: Point, out: Path, teacher: Path, epochs: float, seed: int, common: list[str],
                       data_flags: list[str] | None = None, planned: dict[str, Any] | None = None) -> list[str]:
    """The ``blockprune prune`` command of a point: its preset, target and every pinned setting as ``--set``;
    a measured point's target is its pinned plan's sparsities (``planned``: frontier_plans.py)."""
    target = ["--sparsity", str(planned["sparsity"]), "--set", f"attention_sparsity={planned['attention_sparsity']}"] \
        if planned else ["--sparsity" if point.kind == "sparsity" else "--target-speedup", str(point.target)]
    flags = ["--preset", point.preset, *target, *point.set_flags(), "--epochs", str(epochs / 2 if point.fill else epochs),
             "--seed", str(seed), "--teacher", str(teacher), *(data_flags or [])]
    if point.fill:
        flags += ["--fill-epochs", str(epochs / 2)]
    if point.layer_distill:
        flags += ["--layer-distill", str(point.layer_distill)]
    return ["blockprune", "prune", *flags, *common, "--output-dir", str(out)]


def cli_config(out: Path) -> dict[str, Any]:
    """What a ``blockprune prune`` run ran with, as the CLI wrote it: its options and its resolved pruning config."""
    options = json.loads((out / "run_config.json").read_text())
    report = json.loads((out / "report.json").read_text())
    return {"run": options, "pruning": (report.get("pruning") or {}).get("config")}


def in_process_config(point: Point, epochs: float, seed: int, max_length: int,
                      planned: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an in-process method runs with: the distillation settings and, where it prunes, the resolved config."""
    from blockprune.app.finetune import TrainSettings

    training = asdict(TrainSettings(epochs=epochs, seed=seed, progress=False))
    training.pop("progress")
    pruning = resolved_config(point, max_length, planned).to_dict() if point.settings else None
    return {"run": {"method": point.method, "layers": point.layers, "source": point.source, "training": training},
            "pruning": pruning}


def train_point(point: Point, seed: int, runs: Path, ref: dict[str, Any], ctx: dict[str, Any],
                common: list[str]) -> dict[str, Any] | None:
    """Produce (or resume) one run; return its record's inputs (dev, test, config), or None if it failed.

    ``ctx``: ``dev``, ``test``, ``tokenizer``, ``epochs``, ``data_flags`` (the task's CLI flags), ``max_length``
    and, for ``small-pretrained``, ``small_model`` (a callable returning the pre-distilled model's folder).
    """
    import frontier_methods as fm

    out = run_dir(runs, point, seed)
    teacher = Path(ref["model"])
    epochs, dev, test = ctx["epochs"], ctx["dev"], ctx["test"]
    planned = None
    if point.speed_model == "measured":
        planned = frontier_plans.pinned_plan(runs, point, teacher, ctx.get("max_length", 128))
        if "error" in planned:
            print(f"[frontier] {out.name}: unreachable, not run ({planned['error']})", flush=True)
            return None
    start = time.perf_counter()
    if point.method in ("blockprune", "magnitude-gradual"):
        args = blockprune_command(point, out, teacher, epochs, seed, common, ctx.get("data_flags"), planned)
        command = shlex.join(args)
        if not (out / "report.json").is_file():
            log = out.parent / f"{out.name}.log"
            print(f"[frontier] {out.name}: {command}  (log: {log})", flush=True)
            with open(log, "a") as handle:
                code = subprocess.call([sys.executable, "-m", "blockprune.cli", *args[1:]], stdout=handle,
                                       stderr=subprocess.STDOUT, cwd=ROOT)
            if code != 0:
                print(f"[frontier] {out.name} failed (exit {code}); see {log}", flush=True)
                return None
        result = fm.evaluate_folder(out, dev, test) | {"model": str(out / "model")}
        report = json.loads((out / "report.json").read_text())
        result["steps"] = (report.get("pruning") or {}).get("steps")
        config = cli_config(out)
    else:
        print(f"[frontier] {out.name}: {point.method} (in process)", flush=True)
        result = in_process(point, seed, out, runs, teacher, ctx, planned)
        if result is None:
            return None
        config = in_process_config(point, epochs, seed, ctx.get("max_length", 128), planned)
        command = (f"python benchmarks/frontier.py --task {point.task} --only {point.name} --seeds {seed} "
                   f"(in process: {point.method})")
    print(f"[frontier] {out.name}: test {result['test']:.4f} dev {result['dev']:.4f} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    return result | {"command": command, "config": config}


def in_process(point: Point, seed: int, out: Path, runs: Path, teacher: Path,
               ctx: dict[str, Any], planned: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The methods that run inside this process (frontier_methods.py, frontier_tp.py); ``planned``: a measured
    point's pinned plan, whose sparsities replace its target."""
    import frontier_methods as fm

    epochs, dev, test, tokenizer = ctx["epochs"], ctx["dev"], ctx["test"], ctx["tokenizer"]
    settings = point.settings | frontier_plans.sparsities(planned)
    sparsity = planned["sparsity"] if planned else None
    if point.method == "dense-control":
        return fm.control(out, teacher, tokenizer, dev, test, epochs, seed)
    if point.method == "int8-dense":
        return fm.int8(out, teacher, tokenizer, dev, test)
    if point.method == "blockprune-int8":
        source = fm.read_done(runs / f"{point.source}-s{seed}" / "frontier-result")
        if source is None:
            print(f"[frontier] {out.name}: {point.source}-s{seed} is not finished yet", flush=True)
            return None
        return fm.int8(out, Path(source["model"]), tokenizer, dev, test)
    if point.method == "torch-pruning":
        import frontier_tp

        return frontier_tp.torch_pruning_baseline(out, teacher, tokenizer, dev, test, point.target, epochs, seed,
                                                  settings, sparsity)
    if point.method == "layer-drop":
        return fm.layer_drop(out, teacher, tokenizer, dev, test, int(point.layers or 0), epochs, seed)
    if point.method == "small-pretrained":
        return fm.small_pretrained(out, Path(ctx["small_model"]()), teacher, tokenizer, dev, test, epochs, seed,
                                   ctx.get("reference_epochs", fm.MAX_REFERENCE_EPOCHS))
    if point.method == "magnitude-oneshot":
        return fm.magnitude_oneshot(out, teacher, tokenizer, dev, test, point.target, epochs, seed, settings,
                                    sparsity)
    raise ValueError(f"{point.name}: no producer for method {point.method!r}")


def record(point: Point, seed: int, result: dict[str, Any], ref: dict[str, Any], control: float | None,
           timing: dict[str, Any] | None, epochs: float, timing_run: str | None = None,
           host_cpu: str | None = None) -> dict[str, Any]:
    """One record of frontier.json: the v2 keys, and the provenance v3 adds (task, host_cpu, config, timing_run).

    ``host_cpu``: the CPU the speedups were measured on (the timing pass's); the machine of this process where the
    record was not timed. ``config``: what the run ran with (see the module docstring).
    """
    from frontier_timing import timing_fields

    from blockprune.app.pipeline import versions
    from blockprune.deploy.devices import machine

    here = machine()
    return {
        "name": point.name, "task": point.task, "label": point.label, "method": point.method,
        "baseline": point.baseline, "preset": point.preset, "target": point.target, "target_kind": point.kind,
        "seed": seed, "split": "test", "epochs": epochs, "budget_epochs": epochs,
        "metric_name": "accuracy", "metric": result["test"], "dev_metric": result["dev"],
        "teacher_metric": ref["test"], "reference_metric": ref["test"], "control_metric": control,
        "reference_sha256": ref.get("pinned"),
        "drop_points": round((ref["test"] - result["test"]) * 100, 2),
        **timing_fields(timing), "steps": result.get("steps"),
        "timing_run": timing_run if timing else None, "host_cpu": host_cpu if timing and host_cpu else here["cpu"],
        "config": result.get("config"),
        "command": result.get("command", ""), "versions": versions(), "machine": here,
        "test_correct": result.get("test_correct"),
    }
