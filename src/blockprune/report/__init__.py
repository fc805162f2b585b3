"""What a run shows a person: report.json/md/html, its figures, and the model card."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``from blockprune.report import render_report`` (its place before the subpackage) still works."""
    if name == "render_report":
        from blockprune.report.render import render_report

        return render_report
    raise AttributeError(f"module 'blockprune.report' has no attribute {name!r}")
