"""Turn a run's ``report.json`` into what a person reads: ``report.md``, ``report.html`` and ``plots/*.png``.

The pipeline measures; this module only presents. Both text formats are rendered from one small document
model (sections of tables, figures, code and notes), so they always say the same thing. The HTML file is
self-contained (inline CSS, figures as base64 data URIs) so it can be mailed or opened offline.

Missing optional parts of ``report.json`` skip their section with a note instead of failing. Every figure
and both texts are computed before anything is written, and every file is written atomically, so a failure
midway leaves the previous report as it was.

Example:
    >>> paths = render_report("runs/sst2-hybrid")          # doctest: +SKIP
    >>> sorted(paths)                                      # doctest: +SKIP
    ['plots/density_maps.png', 'plots/ffn_width.png', ..., 'report.html', 'report.md']
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from blockprune import atomic
from blockprune.report import plots
from blockprune.report.doc import to_html, to_markdown
from blockprune.report.sections import build_document, dig, higher_is_better, int_list, metrics, number

REPORT_FILE = "report.json"
PLOTS_DIR = "plots"
FORMAT = "blockprune-report"
VERSION = 1


class ReportError(ValueError):
    """``report.json`` is missing or unreadable; the message names the file and the fix."""


class MissingReportError(ReportError):
    """The run folder has no ``report.json`` yet."""


def load_report(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and sanity-check ``run_dir/report.json``.

    Example:
        >>> load_report("runs/sst2-hybrid")["preset"]       # doctest: +SKIP
        'hybrid'

    Raises:
        MissingReportError: the file does not exist (run ``blockprune prune`` first).
        ReportError: the file is not JSON, not an object, or not a blockprune report.
    """
    path = Path(run_dir) / REPORT_FILE
    if not path.is_file():
        raise MissingReportError(
            f"{path} does not exist: run `blockprune prune ... --output-dir {Path(run_dir)}` first, which writes it"
        )
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ReportError(f"{path} is not valid JSON ({err}); rerun `blockprune prune` to rewrite it") from None
    if not isinstance(report, dict):
        raise ReportError(f"{path} must hold a JSON object, found {type(report).__name__}")
    if report.get("format", FORMAT) != FORMAT:
        raise ReportError(f"{path} has format {report['format']!r}, expected {FORMAT!r}: not a blockprune report")
    version = report.get("version", VERSION)
    if isinstance(version, int) and version > VERSION:
        warnings.warn(f"{path} has version {version}, newer than this blockprune reads ({VERSION}); "
                      "some sections may be missing", stacklevel=2)
    return report


def render_report(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` for the run in ``run_dir``.

    Returns:
        The written files by path relative to ``run_dir`` (e.g. ``"report.html"``, ``"plots/tradeoff.png"``).

    Example:
        >>> render_report("runs/sst2-hybrid")["report.html"]   # doctest: +SKIP
        PosixPath('runs/sst2-hybrid/report.html')

    Raises:
        MissingReportError: ``run_dir/report.json`` does not exist.
        ReportError: it cannot be read.
    """
    run_dir = Path(run_dir)
    report = load_report(run_dir)
    figures, skipped = make_figures(report, run_dir)
    document = build_document(report, run_dir.resolve().name, figures, skipped)
    markdown, html = to_markdown(document), to_html(document, figures)
    written: dict[str, Path] = {}
    with atomic.atomic_dir(run_dir / PLOTS_DIR) as tmp:
        for name, png in figures.items():
            (tmp / name).write_bytes(png)
    for name in figures:
        written[f"{PLOTS_DIR}/{name}"] = run_dir / PLOTS_DIR / name
    written["report.md"] = atomic.write_text(run_dir / "report.md", markdown)
    written["report.html"] = atomic.write_text(run_dir / "report.html", html)
    return written


# ---------------------------------------------------------------------------------------------- figures
def make_figures(report: dict[str, Any], run_dir: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """Compute every figure the report can draw: (file name -> PNG bytes, file name -> why it was skipped)."""
    figures: dict[str, bytes] = {}
    skipped: dict[str, str] = {}
    teacher, final, _ = metrics(report)
    speed = number(dig(report, "speedup", "measured"))
    needed = {"teacher.metric": teacher, "final.metric": final, "speedup.measured": speed}
    missing = [key for key, value in needed.items() if value is None]
    if missing:
        skipped["tradeoff.png"] = f"report.json lacks {', '.join(missing)}"
    else:
        figures["tradeoff.png"] = plots.tradeoff_figure(
            teacher, final, speed, str(report.get("metric_name", "metric")), str(report.get("preset", "pruned")),
            number(dig(report, "speedup", "theoretical")), higher_is_better(report))
    for name, kept_key, total_key, what in (("heads_per_layer.png", "heads_kept", "heads_total", "attention heads"),
                                            ("ffn_width.png", "ffn_width", "ffn_total", "FFN neurons")):
        kept, total = int_list(report.get(kept_key)), int_list(report.get(total_key))
        if kept is None or total is None or len(kept) != len(total):
            skipped[name] = f"report.json lacks per-layer lists {kept_key!r} and {total_key!r} of equal length"
        else:
            figures[name] = plots.structure_figure(kept, total, what)
    figures_density, reason = _density(report, run_dir)
    if figures_density is None:
        skipped["density_maps.png"] = reason
    else:
        figures["density_maps.png"] = figures_density
    return figures, skipped


def _density(report: dict[str, Any], run_dir: Path) -> tuple[bytes | None, str]:
    config = dig(report, "pruning", "config")
    attention_block, ffn_block = dig(config, "attention_block"), dig(config, "ffn_block")
    if attention_block is None or ffn_block is None:
        return None, "report.json lacks pruning.config.attention_block / ffn_block"
    model_dir = run_dir / "prune" / "model"
    if not model_dir.is_dir():
        return None, "no pruned weights in prune/model/ (`blockprune prune` saves the masked model there)"
    try:
        maps = plots.load_density_maps(model_dir, attention_block, ffn_block, int_list(report.get("heads_total")))
    except plots.DensityMapError as err:
        return None, str(err)
    caption = (f"attention blocks: {_block_text(attention_block, False)}  \u00b7  "
               f"FFN blocks: {_block_text(ffn_block, True)}\n"
               f"one-row strips read left to right; grids over {plots.MAX_CELLS} cells per side are averaged")
    return plots.density_figure(maps, caption), ""


def _block_text(setting: Any, ffn: bool) -> str:
    if setting == "head":
        return "whole heads (Q/K/V rows, O columns)"
    if ffn and list(setting) == [1, -1]:
        return "neurons (up rows, down columns)"
    return f"{tuple(setting)} (rows x cols, -1 = full)"
