"""The ``blockprune`` command: ``prune | shrink | quantize | eval | bench | export | report | plan | push``.

``blockprune prune`` with no flags runs the embedded default offline (MiniLM-L6 on Rotten Tomatoes
snippets). Every error a user can fix ends the command with one line naming the fix (exit code 2).

Example:
    $ blockprune prune --preset hybrid-filled --target-speedup 2.5 --output-dir runs/h25
    $ blockprune bench runs/h25/model --reference runs/h25/teacher/model
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from blockprune.cli_parser import build_parser, int_list, key_values
from blockprune.store.folders import folder_processors, load_model

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def _quiet_transformers(quiet: bool) -> Iterator[None]:
    """Silence transformers' own progress bars ("Loading weights") too, and restore them afterwards."""
    was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    if quiet:
        transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers.utils.logging.enable_progress_bar()


def cmd_prune(args: argparse.Namespace) -> int:
    from blockprune.app.options import RunOptions
    from blockprune.app.pipeline import is_main_process, run

    options = RunOptions(
        model=args.model, task=args.task, dataset=args.dataset, dataset_config=args.dataset_config,
        train_split=args.train_split, validation_split=args.validation_split, test_split=args.test_split,
        train_file=args.train_file, test_file=args.test_file,
        validation_file=args.validation_file, text_column=args.text_column, text_pair_column=args.text_pair_column,
        label_column=args.label_column, preset=args.preset, ffn_multiple=args.ffn_multiple, target_speedup=args.target_speedup,
        sparsity=args.sparsity, speed_model=args.speed_model, latency_cache=args.latency_cache, teacher=args.teacher, epochs=args.epochs, min_pruning_steps=args.min_pruning_steps,
        teacher_epochs=args.teacher_epochs, teacher_max_epochs=args.teacher_max_epochs,
        teacher_patience=args.teacher_patience,
        fill=args.fill, fill_epochs=args.fill_epochs, max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples, max_length=args.max_length,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate, teacher_learning_rate=args.teacher_learning_rate, alpha=args.alpha,
        temperature=args.temperature, layer_distill=args.layer_distill, seed=args.seed,
        pruning=key_values(args.set, "--set"),
        training_args=key_values(args.training_arg, "--training-arg"), trust_remote_code=args.trust_remote_code,
        output_dir=args.output_dir, bench_repeats=args.bench_repeats, bench_device=args.bench_device,
        bench_threads=args.bench_threads, bench_seq_len=args.bench_seq_len,
        bench_batch_sizes=int_list(args.bench_batch_sizes, "--bench-batch-sizes"), bench_dtype=args.bench_dtype,
        quantize=args.quantize,
        progress=not args.no_progress,
        command="blockprune " + shlex.join(args.argv),
    )
    if args.push_to_hub and is_main_process():
        from blockprune.app.hub import check_hub

        check_hub(args.push_to_hub, args.hub_token)  # offline or not logged in: fail now, not after training
    with _quiet_transformers(args.no_progress):
        report = run(options)
    if not is_main_process():
        return 0
    if args.push_to_hub:
        from blockprune.app.hub import push

        print(f"pushed {push(options.output_dir, args.push_to_hub, private=args.hub_private, token=args.hub_token)}")
    print(closing_line(report, options.output_dir))
    return 0


def closing_line(report: dict[str, Any], output_dir: str) -> str:
    """What ``prune`` prints last: the metric's change (on test first, dev beside it), the speedup, where things are."""
    lower_better = not report.get("higher_is_better", True)

    def change(split: str, key: str) -> str | None:
        teacher, final = report["teacher"].get(key), report["final"].get(key)
        if key == "test_metrics":
            if not (isinstance(teacher, dict) and isinstance(final, dict)):
                return None
            teacher, final = teacher.get(report["metric_name"]), final.get(report["metric_name"])
        if teacher is None or final is None:
            return None
        delta = f"{final - teacher:+.4f}, lower is better" if lower_better else f"{(final - teacher) * 100:+.2f} points"
        return f"{split}: teacher {teacher:.4f} → final {final:.4f} ({delta})"

    parts = [text for text in (change("test", "test_metrics"), change("dev", "metric")) if text]
    speed, target = report["speedup"], report.get("target") or {}
    fitted = f", {target['fitted']:.2f}x timed before training" if target.get("fitted") else ""
    aimed = (f"target {target['value']:g}x, predicted {target['predicted']:.2f}x by the latency table{fitted}; "
             if target.get("speed_model") == "measured" else "")
    return (
        f"\n{report['metric_name']} on {'; on '.join(parts)}; {aimed}speedup measured {speed['measured']:.2f}x on "
        f"{speed['device']}, {speed['dtype']}, {speed['threads']} thread(s) (theoretical {speed['theoretical']:.2f}x)\n"
        f"model: {Path(output_dir) / 'model'}   report: {Path(output_dir) / 'report.html'}"
    )


def cmd_shrink(args: argparse.Namespace) -> int:
    from blockprune.deploy.measure import random_inputs
    from blockprune.store.saving import save_pruned
    from blockprune.surgery.shrink import check_ffn_multiple, shrink

    check_ffn_multiple(args.ffn_multiple, "--ffn-multiple ")  # before loading anything

    model = load_model(args.input).eval()
    processors = folder_processors(args.input)  # before shrinking, so a broken processor file fails fast
    inputs = random_inputs(model, 2, 16, torch.device("cpu"))
    with torch.inference_mode():
        before = model(**inputs)
    result = shrink(model, args.ffn_multiple)
    with torch.inference_mode():
        after = model(**inputs)
    diff = max(float((b - a).abs().max()) for b, a in zip(before.values(), after.values(), strict=True)
               if isinstance(b, torch.Tensor))
    save_pruned(model, args.output, processors, result=result)
    from blockprune.report.card import write_shrink_card

    write_shrink_card(args.output, result, source=args.input, ffn_multiple=args.ffn_multiple)
    padding = f" (+ zero neurons to multiples of {args.ffn_multiple}: {result.ffn_padding})" if any(
        result.ffn_padding) else ""
    print(f"heads kept per layer: {result.heads_per_layer}\nFFN width per layer: {result.ffn_per_layer}{padding}\n"
          f"parameters: {result.params_before:,} → {result.params_after:,}; max output change {diff:.2e}\n"
          f"saved to {args.output}")
    return 0


def _load_task(args: argparse.Namespace) -> Any:
    """The task of the data flags (see :func:`data_flags`)."""
    from blockprune.tasks import load_task

    return load_task(args.task, dataset=args.dataset, train_file=args.train_file,
                     validation_file=args.validation_file, text_column=args.text_column,
                     text_pair_column=args.text_pair_column, label_column=args.label_column, seed=args.seed,
                     max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                     max_length=args.max_length)


def cmd_quantize(args: argparse.Namespace) -> int:
    from blockprune.deploy.quantize import check_scheme, quantized_linears, size_bytes
    from blockprune.store.saving import save_pruned

    check_scheme(args.scheme, "--scheme ")  # before loading anything
    batch_sizes = int_list(args.batch_sizes, "--batch-sizes")
    if Path(args.output).resolve() == Path(args.model).resolve():
        raise ValueError(f"OUTPUT {args.output} is the input model folder; write the int8 model to another folder")
    evaluate = args.evaluate or any((args.dataset, args.train_file, args.validation_file))
    task = _load_task(args) if evaluate else None
    task_class = task.model_class() if task is not None else None
    reference = load_model(args.reference, quantize=None) if args.reference else None  # fp32, as given
    model = load_model(args.model, task_class, quantize=None)
    processors = folder_processors(args.model)
    save_pruned(model, args.output, processors, quantize=args.scheme)
    quantized = load_model(args.output, task_class)  # what a later load gives: quantized from the saved weights
    results: dict[str, Any] = {"scheme": args.scheme, "output": str(args.output),
                               "quantized_linears": len(quantized_linears(quantized)),
                               "size_bytes": size_bytes(quantized)["total"], "size_bytes_fp32": size_bytes(model)["total"]}
    if task is not None:
        processor = task.load_processor(args.model)
        results["metric_name"] = task.metric_name
        results["metrics_fp32"] = task.evaluate(model, processor, batch_size=args.batch_size)
        results["metrics"] = task.evaluate(quantized, processor, batch_size=args.batch_size)
    if reference is not None:
        results["speedup"] = speedup_vs(reference, quantized, args, batch_sizes)
    print(json.dumps(results, indent=1, sort_keys=True) if args.json else _quantize_summary(results))
    return 0


def speedup_vs(reference: nn.Module, model: nn.Module, args: argparse.Namespace, batch_sizes: tuple[int, ...]
               ) -> dict[str, Any]:
    """Measured speedup of ``model`` over ``reference`` per batch size (timed alternately, one process)."""
    from blockprune.deploy.measure import speedup

    result = speedup(reference, model, seq_len=args.seq_len, batch_sizes=batch_sizes, repeats=args.repeats,
                     threads=args.threads, progress=True)
    by_batch = {str(b["batch_size"]): b["measured"] for b in result["batches"]}
    return {"measured": by_batch[str(max(batch_sizes))], "measured_by_batch": by_batch, "seq_len": args.seq_len,
            "threads": result["threads"],
            "latency_ms": {str(b["batch_size"]): {"reference": b["reference_ms"], "model": b["model_ms"]}
                           for b in result["batches"]}}


def _quantize_summary(results: dict[str, Any]) -> str:
    lines = [f"{results['scheme']}: {results['quantized_linears']} linears quantized; size "
             f"{results['size_bytes_fp32'] / 1e6:.2f} MB fp32 → {results['size_bytes'] / 1e6:.2f} MB"]
    if "metrics" in results:
        name = results["metric_name"]
        lines.append(f"{name}: fp32 {results['metrics_fp32'][name]:.4f} → {results['scheme']} "
                     f"{results['metrics'][name]:.4f}")
    if "speedup" in results:
        per_batch = ", ".join(f"batch {b}: {v:.2f}x" for b, v in results["speedup"]["measured_by_batch"].items())
        lines.append(f"measured speedup vs --reference (seq {results['speedup']['seq_len']}): {per_batch}")
    lines.append(f"saved to {results['output']} (load it with blockprune.load_pruned: quantized at load)")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from blockprune.tasks import load_task

    task = load_task(args.task, dataset=args.dataset, dataset_config=args.dataset_config,
                     train_split=args.train_split, validation_split=args.validation_split,
                     test_split=args.test_split, train_file=args.train_file, test_file=args.test_file,
                     validation_file=args.validation_file, text_column=args.text_column,
                     text_pair_column=args.text_pair_column, label_column=args.label_column, seed=args.seed,
                     max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
                     max_length=args.max_length)
    from blockprune.store.saving import local_folder

    folder = str(local_folder(args.model))  # a Hub repo id becomes its snapshot folder, once
    model = load_model(folder, task.model_class())
    tokenizer = task.load_processor(folder)
    metrics = task.evaluate(model, tokenizer, batch_size=args.batch_size)
    if task.test_examples:  # reported next to the validation metrics, under "test"
        metrics["test"] = task.test_task().evaluate(model, tokenizer, batch_size=args.batch_size)
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from blockprune.deploy.devices import check_bench_settings
    from blockprune.deploy.measure import measure, speedup

    batch_sizes = int_list(args.batch_sizes, "--batch-sizes")
    for flag, value in (("--seq-len", args.seq_len), ("--repeats", args.repeats)):
        if value < 1:
            raise ValueError(f"{flag} {value} must be >= 1")
    check_bench_settings(args.device, args.dtype, args.threads, flags=("--device", "--dtype", "--threads"))
    model = load_model(args.model)
    common = dict(seq_len=args.seq_len, batch_sizes=batch_sizes, device=args.device, repeats=args.repeats,
                  threads=args.threads, progress=True, dtype=args.dtype)
    if args.reference:
        result = speedup(load_model(args.reference), model, **common)
        if args.json:
            print(json.dumps(result, indent=1, sort_keys=True))
        else:
            print(f"theoretical speedup {result['theoretical']:.2f}x (seq {args.seq_len}); timed on {result['device']} "
                  f"({result['device_name']}), {result['dtype']}, {result['threads']} thread(s)")
            print("| batch | reference ms (IQR) | model ms (IQR) | measured (IQR) | measured/theoretical |\n"
                  "|---|---|---|---|---|")
            for b in result["batches"]:
                print(f"| {b['batch_size']} | {b['reference_ms']:.1f} ({b['reference_iqr_ms']:.1f}) | "
                      f"{b['model_ms']:.1f} ({b['model_iqr_ms']:.1f}) | {b['measured']:.2f}x ({b['measured_iqr']:.2f}) "
                      f"| {b['efficiency']:.2f} |")
        return 0
    report = measure(model, **common)
    print(report.to_json() if args.json else report.to_markdown())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from blockprune.deploy.export import check_onnx, export_onnx, measure_onnx_latency

    if args.quantize is not None:
        return _export_int8(args)
    model = load_model(args.model)
    path = export_onnx(model, args.output)
    diff = check_onnx(model, path)
    latency = measure_onnx_latency(path, args.batch_size, args.seq_len, repeats=args.repeats)
    print(f"wrote {path}; max |ONNX - PyTorch| = {diff:.2e}; ONNX Runtime batch {args.batch_size} x seq "
          f"{args.seq_len}: median {latency['median_ms']:.1f} ms ({latency['threads']} threads)")
    return 0


def _export_int8(args: argparse.Namespace) -> int:
    """``export --quantize int8``: export fp32, quantize with ONNX Runtime, compare with fp32 PyTorch."""
    import tempfile

    from blockprune.deploy.export import export_onnx, measure_onnx_latency
    from blockprune.deploy.onnx_int8 import compare_onnx, quantize_onnx
    from blockprune.deploy.quantize import check_scheme

    check_scheme(args.quantize, "--quantize ")
    model = load_model(args.model, quantize=None)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent) as tmp:
        result = quantize_onnx(export_onnx(model, Path(tmp) / "fp32.onnx"), output)
    parity = compare_onnx(model, output)
    latency = measure_onnx_latency(output, args.batch_size, args.seq_len, repeats=args.repeats)
    print(f"wrote {output} ({args.quantize}: {result['quantized_matmuls']} MatMuls); vs fp32 PyTorch on "
          f"{parity['batch_size']} x {parity['seq_len']} random tokens: max |Δlogit| = {parity['max_abs_diff']:.2e}, "
          f"argmax agreement {parity['agreement']:.1%}; ONNX Runtime batch {args.batch_size} x seq {args.seq_len}: "
          f"median {latency['median_ms']:.1f} ms ({latency['threads']} threads)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from blockprune.report.render import render_report

    for path in render_report(args.run_dir).values():
        print(path)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from blockprune.deploy.latency_model import Setting
    from blockprune.deploy.plan import measure_plan, plan, to_json, to_text

    batch_sizes = int_list(args.batch_sizes, "--batch-sizes")
    setting = Setting(args.device, args.dtype, args.threads, args.max_length, max(batch_sizes))
    result = plan(args.model, args.preset, args.target_speedup, args.sparsity, args.max_length,
                  key_values(args.set, "--set"), args.ffn_multiple, args.trust_remote_code,
                  speed_model=args.speed_model, setting=setting, latency_cache=args.latency_cache,
                  fit=not args.table_only)
    if args.measure:
        result["measured"] = measure_plan(result, batch_sizes, args.repeats, args.device, args.threads,
                                          args.trust_remote_code, args.dtype)
    print(to_json(result) if args.json else to_text(result), end="" if args.json else "\n")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from blockprune.app.hub import push

    print(f"pushed {push(args.path, args.repo_id, private=args.private, token=args.token)}")
    return 0


COMMANDS = {"prune": cmd_prune, "shrink": cmd_shrink, "quantize": cmd_quantize, "eval": cmd_eval, "bench": cmd_bench,
            "export": cmd_export, "report": cmd_report, "plan": cmd_plan, "push": cmd_push}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors the user can fix: bad input, and a non-finite loss when the training side was loaded.

    The training side is not imported for this: the engine installs without the application extras.
    """
    training = sys.modules.get("blockprune.app.finetune")
    found = getattr(training, "NonFiniteLossError", None)
    return (ValueError, FileNotFoundError) + ((found,) if found is not None else ())


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``blockprune`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as err:
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line
        print(f"blockprune {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as err:  # the engine installs alone; the pipeline, reports and plots need the extras
        print(f"blockprune {args.command}: error: {err}; this command needs the application extras: "
              "pip install 'blockprune[cli]'", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = "; run the same command again to resume" if args.command == "prune" else ""
        print(f"blockprune {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
