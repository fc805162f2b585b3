"""The sections of a run report, built from ``report.json``: summary, latency, structure, density, config, timings.

Each builder reads only what it needs and turns a missing part into a :class:`~blockprune.report.doc.Note`,
so a partial ``report.json`` still gives a useful report. Numbers are formatted here once for both outputs:
metrics in [0, 1] are shown in percent and their change in points, counts as ``10.62 M``, signs with a true
minus. A metric where lower is better (``report["higher_is_better"]`` false, e.g. perplexity) is quoted
as both values and their change, marked "lower is better", so a rise never reads as a gain.

The headline quotes the held-out change (the test split's, when the run scored one) first, the dev change beside
it; without a test split, the dev change, labelled as such.

Example:
    >>> headline({"metric_name": "accuracy", "teacher": {"metric": 0.842}, "final": {"metric": 0.835},
    ...           "speedup": {"measured": 2.09}})
    '2.1× faster, −0.7 points accuracy on dev'
    >>> headline({"metric_name": "accuracy", "teacher": {"metric": 0.842, "test_metrics": {"accuracy": 0.80}},
    ...           "final": {"metric": 0.835, "test_metrics": {"accuracy": 0.805}}, "speedup": {"measured": 2.09}})
    '2.1× faster, +0.5 points accuracy on test (−0.7 on dev)'
    >>> headline({"metric_name": "perplexity", "higher_is_better": False, "teacher": {"metric": 12.3},
    ...           "final": {"metric": 13.1}, "speedup": {"measured": 2.09}})
    '2.1× faster, perplexity 12.3 → 13.1 on dev (+0.8, lower is better)'
"""

from __future__ import annotations

import json
from typing import Any

from blockprune.report.doc import Code, Document, Figure, Note, Row, Section, Table

MINUS = "\u2212"
LOWER = "lower is better"


# ------------------------------------------------------------------------------------------ reading helpers
def dig(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...`` or ``None`` when any level is missing or not an object."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool), else ``None``."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def int_list(value: Any) -> list[int] | None:
    """``value`` when it is a non-empty list of integers (per-layer counts), else ``None``."""
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def metrics(report: dict[str, Any], split: str = "dev") -> tuple[float | None, float | None, float]:
    """Teacher metric, final metric (on ``split``: ``"dev"`` or ``"test"``) and the factor turning them into points
    (100 for fractions)."""
    if split == "test":
        name = str(report.get("metric_name", "metric"))
        teacher = number(dig(report, "teacher", "test_metrics", name))
        final = number(dig(report, "final", "test_metrics", name))
    else:
        teacher, final = number(dig(report, "teacher", "metric")), number(dig(report, "final", "metric"))
    fractions = all(v is None or 0 <= v <= 1 for v in (teacher, final))
    return teacher, final, 100.0 if fractions else 1.0


def has_test(report: dict[str, Any]) -> bool:
    """Whether the run scored teacher and final model on a held-out test split."""
    teacher, final, _ = metrics(report, "test")
    return teacher is not None and final is not None


def _metric_text(value: float | None, scale: float) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.1f}%" if scale == 100 else f"{value:.4g}"


def _signed(value: float, digits: int = 1) -> str:
    return f"{value:+.{digits}f}".replace("-", MINUS)


def _human(count: float) -> str:
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count:.0f}"


def _before_after(pair: Any) -> str | None:
    before, after = number(dig(pair, "before")), number(dig(pair, "after"))
    if before is None or after is None:
        return None
    share = f" ({after / before:.1%} of before)" if before else ""
    return f"{_human(before)} \u2192 {_human(after)}{share}"


def _seconds(value: float) -> str:
    minutes, seconds = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{value:.1f} s"


def _batches(by_batch: Any) -> list[tuple[str, float]]:
    """(batch, value) pairs of a ``{"1": x, "32": y}`` object, numeric values only, by batch size."""
    if not isinstance(by_batch, dict):
        return []
    pairs = [(str(k), number(v)) for k, v in by_batch.items() if number(v) is not None]
    return sorted(pairs, key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit() else 0, kv[0]))


def _measured_batch(report: dict[str, Any]) -> str | None:
    """The batch size whose speedup equals ``speedup.measured`` (what the headline quotes)."""
    measured = number(dig(report, "speedup", "measured"))
    for batch, value in _batches(dig(report, "speedup", "measured_by_batch")):
        if measured is not None and abs(value - measured) < 1e-9:
            return batch
    return None


def higher_is_better(report: dict[str, Any]) -> bool:
    """``report["higher_is_better"]`` (written by the pipeline from the task); ``True`` when absent or not a bool."""
    value = report.get("higher_is_better")
    return value if isinstance(value, bool) else True


def _points(report: dict[str, Any], split: str = "dev") -> float | None:
    teacher, final, scale = metrics(report, split)
    return None if teacher is None or final is None else (final - teacher) * scale


def _change(report: dict[str, Any], digits: int, split: str = "dev", unit: bool = True) -> str | None:
    """Final minus teacher metric: ``−0.7 points``; a lower-is-better metric not in percent has no unit (``+0.80``)."""
    points = _points(report, split)
    if points is None:
        return None
    in_points = unit and (higher_is_better(report) or metrics(report, split)[2] == 100)
    return f"{_signed(points, digits)}{' points' if in_points else ''}"


def _cell(value: Any) -> str:
    if value is None:
        return "\u2014"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


# --------------------------------------------------------------------------------------------- document
def headline(report: dict[str, Any]) -> str:
    """The key result in words: the speedup and the change of the metric, held-out first (see the module docstring).

    E.g. ``"2.1× faster, +0.5 points accuracy on test (−0.7 on dev)"``; when lower is better:
    ``"2.1× faster, perplexity 12.3 → 13.1 on test (+0.8, lower is better; dev +0.7)"``.
    """
    parts = []
    speed = number(dig(report, "speedup", "measured"))
    if speed is not None:
        parts.append(f"{speed:.1f}\u00d7 faster")
    change = metric_change(report)
    if change is not None:
        parts.append(change)
    return ", ".join(parts) or "Pruning report"


def metric_change(report: dict[str, Any]) -> str | None:
    """The metric's change from the teacher, on test with dev beside it (or on dev alone), in words.

    What the headline, the model card and the CLI's closing line say; ``None`` without both metrics.
    """
    split = "test" if has_test(report) else "dev"
    change = _change(report, 1, split)
    if change is None:
        return None
    metric = report.get("metric_name", "metric")
    dev = _change(report, 1, unit=False) if split == "test" else None
    if higher_is_better(report):
        return f"{change} {metric} on {split}" + (f" ({dev} on dev)" if dev is not None else "")
    teacher, final, scale = metrics(report, split)
    beside = f"; dev {dev}" if dev is not None else ""
    return (f"{metric} {_metric_text(teacher, scale)} \u2192 {_metric_text(final, scale)} on {split} "
            f"({change}, {LOWER}{beside})")


def _present(mapping: Any) -> dict[str, Any]:
    """The entries of a JSON object whose values are set (not null, not empty); ``{}`` for anything else."""
    if not isinstance(mapping, dict):
        return {}
    return {str(k): v for k, v in mapping.items() if v is not None and v != ""}


def subline(report: dict[str, Any]) -> str:
    what = " \u00b7 ".join(str(report[k]) for k in ("preset", "model", "task") if report.get(k))
    where = _present(dig(report, "speedup"))
    batch = _measured_batch(report)
    context = ", ".join(x for x in (
        f"batch {batch}" if batch else "",
        f"sequence length {where['seq_len']}" if "seq_len" in where else "",
        f"{where['threads']} thread{'' if where['threads'] == 1 else 's'}" if "threads" in where else "",
    ) if x)
    if context:
        name = f" ({where['device_name']})" if "device_name" in where else ""
        device = f" on {where['device']}{name}" if "device" in where else ""
        device += f" in {where['dtype']}" if "dtype" in where else ""
        what += f" \u2014 speedup measured at {context}{device}"
    return what


def build_document(report: dict[str, Any], name: str, figures: dict[str, bytes],
                   skipped: dict[str, str]) -> Document:
    """Assemble the report's sections from ``report.json`` and the figures that could be drawn."""

    def figure(file: str, alt: str) -> Figure | Note:
        return Figure(file, alt) if file in figures else Note(f"Figure skipped: {skipped.get(file, 'not drawn')}.")

    sections = [
        summary_section(report, figure("tradeoff.png", "metric versus speedup of this run and the dense teacher")),
        latency_section(report),
        structure_section(report, figure("heads_per_layer.png", "attention heads kept per layer"),
                   figure("ffn_width.png", "FFN width kept per layer")),
        Section("Where the weights went", [
            "Fraction of weights still non-zero in each pruning block of the masked model, before shrink "
            "(dark = kept, white = pruned).",
            *density_table(report),
            figure("density_maps.png", "block density of every pruned matrix, layer by layer"),
        ]),
        _mapping_section("Pruning configuration", dig(report, "pruning", "config"), "pruning.config"),
        _stages(report),
        Section("Command", [Code(str(report["command"]))] if report.get("command") else
                [Note("report.json has no 'command'.")]),
        environment_section(report),
    ]
    return Document(f"Pruning report: {name}", headline(report), subline(report), sections)


def summary_section(report: dict[str, Any], tradeoff: Figure | Note) -> Section:
    teacher, final, scale = metrics(report)
    metric = str(report.get("metric_name", "metric"))
    rows: list[list[str]] = []

    def add(label: str, value: Any) -> None:
        if value is not None and value != "":
            rows.append([label, value if isinstance(value, str) else _cell(value)])

    add("Task", report.get("task"))
    add("Data", _data_text(report.get("data")))
    add("Base model", report.get("model"))
    add("Preset", report.get("preset"))
    add("Target", _target_text(report.get("target"), "value"))
    add("Predicted (latency table)", _target_text(report.get("target"), "predicted"))
    add("Timed before training (fit)", _target_text(report.get("target"), "fitted"))
    add("Achieved", _target_text(report.get("target"), "achieved"))
    # a held-out test split (scored for the report only) comes first, as in the headline; the dev rows then say so
    for who in ("teacher", "final"):
        value = number(dig(report, who, "test_metrics", metric))
        add(f"{who.capitalize()} {metric} (test split)", _metric_text(value, scale) if value is not None else None)
    test_change = _change(report, 2 if scale == 1 else 1, "test")
    add("Change (test split)", f"{test_change} ({LOWER})" if test_change and not higher_is_better(report)
        else test_change)
    dev = " (dev)" if test_change else ""
    add(f"Teacher {metric}{dev}", _metric_text(teacher, scale) if teacher is not None else None)
    add(f"Final {metric}{dev}", _metric_text(final, scale) if final is not None else None)
    change = _change(report, 2 if scale == 1 else 1)
    add(f"Change{dev}", f"{change} ({LOWER})" if change and not higher_is_better(report) else change)
    add("Teacher training", _teacher_training(dig(report, "teacher", "training"), scale))
    for batch, value in _batches(dig(report, "speedup", "measured_by_batch")):
        add(f"Measured speedup (batch {batch})", f"{value:.2f}\u00d7")
    if not _batches(dig(report, "speedup", "measured_by_batch")) and number(dig(report, "speedup", "measured")):
        add("Measured speedup", f"{dig(report, 'speedup', 'measured'):.2f}\u00d7")
    theoretical = number(dig(report, "speedup", "theoretical"))
    add("Theoretical speedup (FLOPs)", f"{theoretical:.2f}\u00d7" if theoretical else None)
    _quantized_rows(report.get("quantized"), metric, scale, add)
    add("Linear parameters", _before_after(dig(report, "params", "linear")))
    add("Non-embedding parameters", _before_after(dig(report, "params", "non_embedding")))
    add("Total parameters", _before_after(dig(report, "params", "total")))
    add("FLOPs per token", _before_after(report.get("flops_per_token")))
    add("Weights on disk", _disk_text(report.get("size"), ""))
    add("Pruned linears on disk", _disk_text(report.get("size"), "linear_"))
    parts: list[Any] = [Table(["Quantity", "Value"], rows)] if rows else [Note("report.json has no summary fields.")]
    return Section("Summary", [*parts, tradeoff])


def _teacher_training(training: Any, scale: float) -> str | None:
    """How the teacher was fine-tuned: the epoch kept and why training stopped, with dev by epoch; or fixed epochs."""
    if not isinstance(training, dict):
        return None
    chosen, trained = training.get("chosen_epoch"), training.get("epochs_trained")
    if chosen is None:
        return f"{trained:g} epoch(s), fixed by --teacher-epochs" if number(trained) is not None else None
    metric = training.get("metric")
    history = training.get("history") if isinstance(training.get("history"), list) else []
    values = ", ".join(_metric_text(number(h.get(metric)), scale) for h in history if isinstance(h, dict))
    return (f"epoch {chosen} of {trained} kept ({training.get('stopped')}; at most {training.get('max_epochs')}); "
            f"dev {metric} by epoch: {values}")


def _quantized_rows(quantized: Any, metric: str, scale: float, add: Any) -> None:
    """Rows of the quantized final model (``report["quantized"]``, from ``--quantize``), beside the fp32 ones."""
    if not isinstance(quantized, dict):
        return
    scheme = str(quantized.get("scheme", "quantized"))
    value = number(quantized.get("metric"))
    add(f"Final {metric} ({scheme})", _metric_text(value, scale) if value is not None else None)
    for batch, speed in _batches(dig(quantized, "speedup", "measured_by_batch")):
        add(f"Measured speedup {scheme} (batch {batch})", f"{speed:.2f}\u00d7")
    size, fp32 = number(quantized.get("size_bytes")), number(quantized.get("size_bytes_fp32"))
    if size is not None and fp32 is not None:
        add(f"Model size fp32 \u2192 {scheme}", f"{fp32 / 1e6:.2f} MB \u2192 {size / 1e6:.2f} MB")


def _disk_text(size: Any, prefix: str) -> str | None:
    """``90.9 MB as dense fp32 → 48.1 MB saved (52.9%)`` from the report's ``size`` object."""
    dense, saved = number(dig(size, f"{prefix}dense_bytes")), number(dig(size, f"{prefix}saved_bytes"))
    if dense is None or saved is None or dense <= 0:
        return None
    return f"{_bytes(dense)} as dense fp32 \u2192 {_bytes(saved)} saved ({saved / dense:.1%})"


def _bytes(count: float) -> str:
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count:.0f} B"


_DATA_LABELS = {"num_train": "train", "num_eval": "eval", "max_length": "max length"}
_DATA_SKIP = {"source", "name", "task", "metric", "higher_is_better"}


def _data_text(data: Any) -> str | None:
    """``source (train 8,530, eval 1,066, max length 128, ...)`` from ``task.describe()``."""
    if not isinstance(data, dict):
        return None if data is None else str(data)
    head = str(data.get("source", data.get("name", "")))
    keys = [k for k in _DATA_LABELS if k in data] + sorted(k for k in data if k not in _DATA_LABELS)
    extra = [f"{_DATA_LABELS.get(k, k.replace('_', ' '))} {_count(data[k])}" for k in keys
             if k not in _DATA_SKIP and isinstance(data[k], int | float | str) and not isinstance(data[k], bool)]
    return f"{head} ({', '.join(extra)})" if extra else head or None


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _target_text(target: Any, key: str) -> str | None:
    kind, value = dig(target, "kind"), number(dig(target, key))
    if value is None:
        return None
    if kind == "speedup" and dig(target, "speed_model") == "measured":
        table = dig(target, "latency_table") or {}
        where = f" on {table['device_name']}" if isinstance(table, dict) and table.get("device_name") else ""
        return (f"{value:.2f}\u00d7 speedup (measured latency, batch {dig(target, 'batch_size')}, "
                f"{dig(target, 'seq_len')} tokens{where})")
    if kind == "speedup":
        length = number(dig(target, "seq_len"))
        return f"{value:.2f}\u00d7 speedup" + (f" (FLOPs at {length:.0f} tokens)" if length else "")
    if kind == "sparsity":
        return f"{value:.1%} sparsity"
    return f"{kind} {value:.4g}"


def latency_section(report: dict[str, Any]) -> Section:
    teacher = dict(_batches(dig(report, "teacher", "latency_ms")))
    final = dict(_batches(dig(report, "final", "latency_ms")))
    speed = dict(_batches(dig(report, "speedup", "measured_by_batch")))
    batches = [b for b, _ in _batches({**teacher, **final, **speed})]
    if not batches:
        return Section("Latency", [Note("report.json has no latency measurements.")])
    rows = [[b, f"{teacher[b]:.2f}" if b in teacher else "", f"{final[b]:.2f}" if b in final else "",
             f"{speed[b]:.2f}\u00d7" if b in speed else ""] for b in batches]
    where = _present(dig(report, "speedup"))
    setting = ", ".join(f"{k.replace('_', ' ')} {where[k]}" for k in ("seq_len", "threads", "device", "dtype")
                        if k in where)
    text = [f"Median latency per batch ({setting})." if setting else "Median latency per batch."]
    return Section("Latency", [*text, Table(["Batch", "Teacher (ms)", "Final (ms)", "Speedup"], rows)])


def structure_section(report: dict[str, Any], heads_fig: Figure | Note, ffn_fig: Figure | Note) -> Section:
    parts: list[Any] = ["What shrink kept of every layer (heads removed exactly, FFN neurons cut out)."]
    hidden = report.get("hidden")
    if isinstance(hidden, dict) and number(hidden.get("before")) and number(hidden.get("after")) is not None:
        parts.append(f"Hidden (residual) width: hidden {hidden['before']} \u2192 {hidden['after']} "
                     f"({hidden['after'] / hidden['before']:.0%} kept), in every layer: the embeddings, every "
                     "LayerNorm and every linear reading or writing the residual were cut.")
    for title, kept_key, total_key, fig in (("Heads kept", "heads_kept", "heads_total", heads_fig),
                                            ("FFN width", "ffn_width", "ffn_total", ffn_fig)):
        kept, total = int_list(report.get(kept_key)), int_list(report.get(total_key))
        if kept is None or total is None or len(kept) != len(total):
            parts.append(Note(f"{title}: report.json lacks {kept_key!r}/{total_key!r} of equal length."))
            continue
        rows = [[str(i), str(k), str(t), f"{k / t:.0%}" if t else ""] for i, (k, t) in enumerate(zip(kept, total, strict=True))]
        rows.append(["all", str(sum(kept)), str(sum(total)), f"{sum(kept) / max(sum(total), 1):.0%}"])
        parts.append(Row([Table(["Layer", title, "Of", "Kept"], rows, compact=True), fig]))
    return Section("Structure after shrink", parts)


def density_table(report: dict[str, Any]) -> list[Table]:
    density = dig(report, "pruning", "density")
    if not isinstance(density, dict):
        return []
    rows = [[k, f"{density[k]:.1%}"] for k in ("attention", "ffn", "overall") if number(density.get(k)) is not None]
    if number(density.get("hidden")) is not None:
        rows.append(["hidden dimensions", f"{density['hidden']:.1%}"])
    return [Table(["Part", "Weights kept"], rows, compact=True)] if rows else []


def _mapping_section(title: str, mapping: Any, key: str) -> Section:
    if not isinstance(mapping, dict) or not mapping:
        return Section(title, [Note(f"report.json has no {key!r}.")])
    return Section(title, [Table(["Setting", "Value"], [[str(k), _cell(v)] for k, v in sorted(mapping.items())])])


STAGE_ORDER = ("teacher", "prune", "shrink", "fill", "evaluate", "bench", "report")
"""Pipeline order of the stages (report.json may store them sorted by name)."""


def _stages(report: dict[str, Any]) -> Section:
    stages = report.get("stages")
    times = [(str(k), number(dig(v, "seconds"))) for k, v in stages.items()] if isinstance(stages, dict) else []
    times = [(k, s) for k, s in times if s is not None]
    times.sort(key=lambda ks: STAGE_ORDER.index(ks[0]) if ks[0] in STAGE_ORDER else len(STAGE_ORDER))
    if not times:
        return Section("Stage timings", [Note("report.json has no stage timings.")])
    total = sum(s for _, s in times)
    rows = [[k, f"{s:.1f}", _seconds(s), f"{s / total:.0%}" if total else ""] for k, s in times]
    rows.append(["total", f"{total:.1f}", _seconds(total), "100%"])
    return Section("Stage timings", [Table(["Stage", "Seconds", "Wall time", "Share"], rows, compact=True)])


def environment_section(report: dict[str, Any]) -> Section:
    rows = []
    for key in ("versions", "machine"):
        value = report.get(key)
        if isinstance(value, dict):
            rows += [[k, _cell(v)] for k, v in _present(value).items()]
        elif value:
            rows.append([key, str(value)])
    if report.get("created"):
        rows.append(["report created", str(report["created"])])
    if not rows:
        return Section("Environment", [Note("report.json has no versions or machine.")])
    return Section("Environment", [Table(["Item", "Value"], rows, compact=True)])
