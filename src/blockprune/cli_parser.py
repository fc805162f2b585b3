"""The ``blockprune`` command line's parser: every subcommand's flags, and the two small value parsers the
commands share (``KEY=VALUE`` lists and comma-separated integers). :mod:`blockprune.cli` runs what it parses."""

from __future__ import annotations

import argparse
import json
from typing import Any

from blockprune import __version__
from blockprune.app.options import PRUNING_BUDGET_EPOCHS, TEACHER_MAX_EPOCHS, TEACHER_PATIENCE
from blockprune.engine.config import PRESETS


def key_values(items: list[str], flag: str) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, true, lists), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"blockprune: error: {flag} takes KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def data_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data (default: the embedded Rotten Tomatoes snippets)")
    group.add_argument("--task", default="text-classification",
                       choices=["text-classification", "question-answering", "causal-lm", "image-classification"],
                       help="what the model is trained and scored on")
    group.add_argument("--dataset", help="Hugging Face hub dataset name (needs the `datasets` package and network), "
                       "or a local folder saved with DatasetDict.save_to_disk")
    group.add_argument("--dataset-config", help="the dataset's configuration, e.g. mnli of glue")
    group.add_argument("--train-split", default="train", help="split of --dataset to train on")
    group.add_argument("--validation-split", default="validation",
                       help="split of --dataset to evaluate on, e.g. validation_matched")
    group.add_argument("--test-split", help="a held-out split of --dataset, scored only for the report")
    group.add_argument("--train-file", help="local CSV/TSV/JSON/JSONL/parquet or a Dataset.save_to_disk folder "
                       "(SQuAD JSON for question answering; also "
                       ".txt, one document per line, for causal-lm); an image folder <root>/<label>/<images> "
                       "for image-classification")
    group.add_argument("--validation-file",
                       help="local evaluation file or image folder (default: a seeded 10%% of --train-file)")
    group.add_argument("--test-file", help="a held-out local file or image folder with --train-file's columns, "
                       "scored only for the report (like --test-split for --dataset)")
    group.add_argument("--text-column", help="text column (default: text)")
    group.add_argument("--text-pair-column", help="second text column for sentence pairs")
    group.add_argument("--label-column", help="label column (default: label)")
    group.add_argument("--max-train-samples", type=int, help="use a seeded subset of the training data")
    group.add_argument("--max-eval-samples", type=int, help="use a seeded subset of the evaluation (and test) data")
    group.add_argument("--max-length", type=int, default=128, help="tokens per example")
    group.add_argument("--seed", type=int, default=42, help="seed of training, subsampling and any hold-out split")


def int_list(text: str, flag: str) -> tuple[int, ...]:
    """``"1,32"`` -> ``(1, 32)``; anything else is one clear error naming ``flag``."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated whole numbers such as 1,32, got {text!r}") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{flag} {text!r}: every batch size must be >= 1")
    return values


def bench_flags(parser: argparse.ArgumentParser, prefix: str, aliases: bool = False) -> None:
    """Where and how latency is timed; ``prefix`` is ``"bench-"`` for ``prune`` and ``""`` for ``bench``.

    ``bench`` also accepts the ``--bench-*`` names of ``prune`` (``aliases``), so both spell the same thing alike.
    """
    def names(name: str) -> list[str]:
        return [f"--{prefix}{name}"] + ([f"--bench-{name}"] if aliases else [])

    group = parser.add_argument_group("benchmark (latency of the reference and the final model)")
    group.add_argument(*names("device"), default="cpu", help="where to time: cpu, cuda or cuda:N")
    group.add_argument(*names("threads"), type=int,
                       help="torch intra-op threads while timing (default: torch's choice); reported either way")
    group.add_argument(*names("seq-len"), type=int, default=128, help="tokens per timed sequence")
    group.add_argument(*names("batch-sizes"), default="1,32", help="comma-separated batch sizes")
    group.add_argument(*names("dtype"), default="fp32", choices=["fp32", "fp16", "bf16"],
                       help="precision to time in (fp16 on CPU is usually slower than fp32; try bf16)")
    group.add_argument(*names("repeats"), type=int, default=10, help="timed passes per model and batch size")


PRESET_HELP = "named recipe: what is pruned (tiles, neurons, whole heads) and how (see README)"


FFN_MULTIPLE_HELP = ("pad each FFN's width to a multiple of N with zero neurons (outputs unchanged; aligned widths run "
                     "faster); 1 = no padding")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``blockprune`` command."""
    parser = argparse.ArgumentParser(
        prog="blockprune",
        description="Prune a transformer while fine-tuning it, then shrink it into a smaller, faster dense model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, formatter_class=DefaultsOnce)

    prune = command("prune", "teacher → prune → shrink → (fill) → evaluate → bench → report")
    prune.add_argument("--model", help="local model folder or hub name (default: the embedded MiniLM-L6)")
    data_flags(prune)
    prune.add_argument("--preset", default="struct", choices=sorted(PRESETS), help=PRESET_HELP)
    target = prune.add_mutually_exclusive_group()
    target.add_argument("--target-speedup", type=float,
                        help="theoretical FLOPs speedup of the transformer layers (default 2.0)")
    target.add_argument("--sparsity", type=float, help="fraction of the pruned linears' weights removed")
    prune.add_argument("--speed-model", default="flops", choices=["flops", "measured"], help="what --target-speedup "
                       "counts: FLOPs, or latency measured once on the --bench-* device and cached (whole heads and "
                       "neurons, hidden_sparsity 0.25/0.5/0.75; the report shows target, predicted and measured "
                       "side by side)")
    prune.add_argument("--latency-cache", metavar="DIR", help="folder of latency tables (default: the user cache dir)")
    prune.add_argument("--teacher", help="a fine-tuned model folder to distill from (default: fine-tune --model)")
    prune.add_argument("--epochs", type=float,
                       help=f"epochs of the pruning stage (default: {PRUNING_BUDGET_EPOCHS:g}, the budget the benchmarks "
                       f"measured; {PRUNING_BUDGET_EPOCHS / 2:g} with a fill stage, which trains the other "
                       f"{PRUNING_BUDGET_EPOCHS / 2:g} as --fill-epochs)")
    prune.add_argument("--min-pruning-steps", type=int, default=0,
                       help="the pruning stage takes at least this many optimizer steps: more epochs over small data, "
                            "so that learned scores have time to rank (the report gives the steps and epochs run)")
    prune.add_argument("--teacher-epochs", type=float,
                       help="fine-tune the teacher exactly this many epochs (default: epoch by epoch until the "
                       "validation metric stops improving, keeping the best epoch; see --teacher-max-epochs)")
    prune.add_argument("--teacher-max-epochs", type=int, default=TEACHER_MAX_EPOCHS,
                       help="without --teacher-epochs: the most epochs the teacher trains")
    prune.add_argument("--teacher-patience", type=int, default=TEACHER_PATIENCE,
                       help="without --teacher-epochs: stop after this many epochs without a better validation metric")
    prune.add_argument("--fill", action="store_true",
                       help="after shrink, fine-tune the shrunk model again with distillation (hybrid-filled has it)")
    prune.add_argument("--fill-epochs", type=float, default=PRUNING_BUDGET_EPOCHS / 2, help="epochs of the fill stage")
    prune.add_argument("--learning-rate", type=float, default=5e-5, help="learning rate of the pruning and fill stages")
    prune.add_argument("--teacher-learning-rate", type=float, default=5e-5, help="learning rate of the teacher stage")
    prune.add_argument("--batch-size", type=int, default=32, help="training and evaluation batch size")
    prune.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation loss")
    prune.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
    prune.add_argument("--layer-distill", type=float, default=0.0, metavar="W", help="weight of layer-wise "
                       "distillation (prune and fill stages): MSE of student to teacher layer outputs (default 0: off)")
    prune.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a PruningConfig field, e.g. --set score_lr=0.02 --set warmup=0.05")
    prune.add_argument("--training-arg", action="append", default=[], metavar="KEY=VALUE",
                       help="override a transformers TrainingArguments field, e.g. --training-arg bf16=true")
    prune.add_argument("--ffn-multiple", type=int, default=16, help=FFN_MULTIPLE_HELP)
    bench_flags(prune, "bench-")
    prune.add_argument("--quantize", metavar="SCHEME",
                       help="int8: also evaluate and time the final model quantized (CPU; report.json 'quantized')")
    prune.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    prune.add_argument("--no-progress", action="store_true", help="no progress bars")
    prune.add_argument("--output-dir", default="runs/demo", help="run directory (re-running the command resumes it)")
    prune.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the final model with its card after the run")
    prune.add_argument("--hub-private", action="store_true", help="with --push-to-hub: create the repository private")
    prune.add_argument("--hub-token", help="with --push-to-hub: hub token (default: HF_TOKEN or `hf auth login`)")

    shrink = command("shrink", "remove empty heads and FFN neurons from a pruned model (exact)")
    shrink.add_argument("input", help="model folder saved with save_pretrained (zeros where pruned), or a Hub repo id")
    shrink.add_argument("output", help="folder for the shrunk model (load it with blockprune.load_pruned)")
    shrink.add_argument("--ffn-multiple", type=int, default=16, help=FFN_MULTIPLE_HELP)

    quantize = command("quantize", "int8 copy of a model for CPU inference: accuracy and speedup")
    quantize.add_argument("model", help="model folder (save_pruned or save_pretrained format) or Hub repo id, fp32")
    quantize.add_argument("output", help="folder to write: the fp32 save_pruned model + quantization.json "
                          "(load_pruned quantizes it at load)")
    quantize.add_argument("--scheme", default="int8", help="quantization scheme (int8)")
    quantize.add_argument("--evaluate", action="store_true",
                          help="evaluate fp32 and int8 on the data (also implied by --dataset/--train-file/"
                          "--validation-file; default data: the embedded Rotten Tomatoes snippets)")
    data_flags(quantize)
    quantize.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")
    quantize.add_argument("--reference", help="a dense fp32 model to time the int8 model against (e.g. the teacher)")
    quantize.add_argument("--seq-len", type=int, default=128, help="tokens per timed sequence")
    quantize.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes of the timing")
    quantize.add_argument("--repeats", type=int, default=10, help="timed passes per model and batch size")
    quantize.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    quantize.add_argument("--json", action="store_true", help="print the results as JSON")

    evaluate = command("eval", "evaluate a model (pruned or not) on a task")
    evaluate.add_argument("model", help="model folder (save_pruned or save_pretrained format) or Hub repo id")
    data_flags(evaluate)
    evaluate.add_argument("--batch-size", type=int, default=64, help="evaluation batch size")

    bench = command("bench", "measure parameters, FLOPs and latency; speedup against --reference")
    bench.add_argument("model", help="model folder (save_pruned or save_pretrained format) or Hub repo id")
    bench.add_argument("--reference", help="a model to compare against (e.g. the dense teacher)")
    bench_flags(bench, "", aliases=True)
    bench.add_argument("--json", action="store_true", help="print JSON instead of markdown")

    export = command("export", "export a model to ONNX, check it against PyTorch, time ONNX Runtime")
    export.add_argument("model", help="model folder (save_pruned or save_pretrained format) or Hub repo id")
    export.add_argument("output", help="the .onnx file to write")
    export.add_argument("--seq-len", type=int, default=128, help="sequence length of the ORT timing")
    export.add_argument("--batch-size", type=int, default=1, help="batch size of the ORT timing")
    export.add_argument("--repeats", type=int, default=10, help="timed ONNX Runtime passes")
    export.add_argument("--quantize", metavar="SCHEME", help="int8: write an ONNX Runtime dynamic-int8 file instead "
                        "(block linears only); its parity check reports max |Δlogit| and argmax agreement")

    report = command("report", "render report.md / report.html / plots of a run directory again")
    report.add_argument("run_dir", help="a run directory of blockprune prune (holds report.json)")

    plan = command("plan", "sparsities, per-layer shapes, size and speedup a target implies (no training)")
    plan.add_argument("--model", help="local model folder or hub name (default: the embedded MiniLM-L6)")
    plan.add_argument("--preset", default="struct", choices=sorted(PRESETS), help=PRESET_HELP)
    plan_target = plan.add_mutually_exclusive_group()
    plan_target.add_argument("--target-speedup", type=float, help="speedup in FLOPs or as --speed-model says (default 2)")
    plan_target.add_argument("--sparsity", type=float, help="fraction of the pruned linears' weights removed")
    plan.add_argument("--max-length", type=int, default=128, help="tokens per sequence of the FLOPs count")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a PruningConfig field")
    plan.add_argument("--ffn-multiple", type=int, default=16, help=FFN_MULTIPLE_HELP)
    plan.add_argument("--measure", action="store_true",
                      help="also time a random model of the planned shapes against the dense one on this machine")
    plan.add_argument("--speed-model", default="flops", choices=["flops", "measured"], help="what --target-speedup "
                      "counts: FLOPs, or latency measured on this device (its table, timed once per setting and "
                      "cached, then the planned model timed and corrected to within 5%%)")
    plan.add_argument("--table-only", action="store_true",
                      help="--speed-model measured: the latency table's shape alone, without timing it (seconds)")
    plan.add_argument("--latency-cache", metavar="DIR", help="folder of latency tables (default: the user cache dir)")
    plan.add_argument("--batch-sizes", default="1,32", help="batch sizes of --measure; the table times the largest")
    plan.add_argument("--repeats", type=int, default=10, help="timed passes of --measure")
    plan.add_argument("--device", default="cpu", help="device of --measure and of the latency table")
    plan.add_argument("--threads", type=int, help="torch threads of --measure and the latency table (default: torch's)")
    plan.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="dtype of both timings")
    plan.add_argument("--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)")
    plan.add_argument("--json", action="store_true", help="print JSON instead of text")

    push = command("push", "upload a final model folder with its model card to the Hugging Face Hub")
    push.add_argument("path", help="a run directory (its model/ is pushed) or a model folder")
    push.add_argument("repo_id", help="hub repository, e.g. your-name/minilm-struct-2x")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--token", help="hub token (default: HF_TOKEN or the one saved by `hf auth login`)")
    return parser


class DefaultsOnce(argparse.HelpFormatter):
    """States each option's default once: ``(default: X)`` is appended unless the help already names the default,
    or there is nothing to state (no default, a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] or \
            action.default == argparse.SUPPRESS
        if "default" in text or nothing or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"
