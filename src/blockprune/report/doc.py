"""A tiny document model (sections of text, tables, figures, code, notes) and its Markdown and HTML renderers.

The run report is built once as a :class:`Document` and rendered twice, so ``report.md`` and ``report.html``
cannot drift apart. The HTML is one self-contained page: inline CSS, figures embedded as base64 PNG data
URIs, no scripts, fonts or links to fetch, and every piece of text escaped.

Example:
    >>> doc = Document("Report", "2.0× faster", "", [Section("Summary", [Table(["a", "b"], [["1", "2"]])])])
    >>> "| a | b |" in to_markdown(doc)
    True
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field

_NUMERIC = re.compile(r"[\u2212+\-]?[\d.,]+\s*(%|\u00d7)?")


@dataclass(frozen=True)
class Table:
    """A table of strings; ``compact`` tables sit side by side in HTML."""

    headers: list[str]
    rows: list[list[str]]
    compact: bool = False


@dataclass(frozen=True)
class Figure:
    """A PNG under ``plots/`` (by file name) with its alt text."""

    file: str
    alt: str


@dataclass(frozen=True)
class Code:
    """A block of literal text (a command line)."""

    text: str


@dataclass(frozen=True)
class Note:
    """A remark about something missing or skipped."""

    text: str


@dataclass(frozen=True)
class Row:
    """Parts shown side by side in HTML when they fit (one after another in Markdown)."""

    parts: list[str | Table | Figure | Code | Note]


Part = str | Table | Figure | Code | Note | Row
"""A plain ``str`` part is a paragraph."""


@dataclass(frozen=True)
class Section:
    """A titled list of parts."""

    title: str
    parts: list[Part] = field(default_factory=list)


@dataclass(frozen=True)
class Document:
    """A whole report: a title, a one-line headline with the key result, a context line and sections."""

    title: str
    headline: str
    subline: str
    sections: list[Section]


def _is_numeric(cell: str) -> bool:
    return bool(_NUMERIC.fullmatch(cell.strip()))


def _numeric_columns(table: Table) -> list[bool]:
    columns = list(zip(*table.rows, strict=False)) if table.rows else [()] * len(table.headers)
    return [bool(col) and all(_is_numeric(c) or not c for c in col) for col in columns]


# ------------------------------------------------------------------------------------------------ Markdown
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    numeric = _numeric_columns(table)
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _md_part(part: Part) -> str:
    if isinstance(part, Row):
        return "\n\n".join(_md_part(p) for p in part.parts)
    if isinstance(part, Table):
        return _md_table(part)
    if isinstance(part, Figure):
        return f"![{part.alt}](plots/{part.file})"
    if isinstance(part, Code):
        fence = "````" if "```" in part.text else "```"
        return f"{fence}sh\n{part.text}\n{fence}"
    if isinstance(part, Note):
        return f"> *{part.text}*"
    return part


def to_markdown(doc: Document) -> str:
    """Render ``doc`` as GitHub-flavoured Markdown; figures link to ``plots/<file>``."""
    blocks = [f"# {doc.title}", f"**{doc.headline}**"]
    if doc.subline:
        blocks.append(doc.subline)
    for section in doc.sections:
        blocks.append(f"## {section.title}")
        blocks += [_md_part(part) for part in section.parts]
    return "\n\n".join(blocks) + "\n"


# ---------------------------------------------------------------------------------------------------- HTML
_CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f5f8;color:#1c2633;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1100px;margin:0 auto;padding:28px 24px 56px}
.hero{background:#fff;border-left:6px solid #2f6db5;border-radius:10px;padding:22px 28px;
box-shadow:0 1px 3px rgba(20,30,50,.08)}
.hero .kicker{margin:0;color:#5a6878;font-size:13px;letter-spacing:.06em;text-transform:uppercase}
.hero h1{margin:6px 0 6px;font-size:34px;line-height:1.2}
.hero p{margin:0;color:#3d4a5a}
section{background:#fff;border-radius:10px;padding:18px 28px 20px;margin-top:18px;
box-shadow:0 1px 3px rgba(20,30,50,.08)}
h2{margin:0 0 12px;padding-bottom:6px;font-size:20px;border-bottom:1px solid #e2e7ee}
p{margin:8px 0}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px}
table.compact{display:inline-table;margin-right:28px;vertical-align:top}
th,td{padding:5px 12px;border-bottom:1px solid #e6eaf0;text-align:left;vertical-align:top}
td:first-child,th:first-child{white-space:nowrap}
th{background:#f6f8fb;font-weight:600;color:#33404f}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:hover{background:#f8fafc}
.row{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start;margin:6px 0 10px}
.row>figure{flex:1 1 560px;min-width:0}
.row>table{margin-right:0}
figure{margin:12px 0}
img{display:block;max-width:100%;height:auto;border:1px solid #e2e7ee;border-radius:6px}
figcaption{color:#5a6878;font-size:13px;margin-top:4px}
pre{background:#101923;color:#e6edf3;padding:12px 16px;border-radius:8px;white-space:pre-wrap;
word-break:break-all;font:13px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.note{background:#fff8e8;border-left:4px solid #f0b429;color:#6b4b00;padding:8px 12px;border-radius:4px}
"""


def _html_table(table: Table) -> str:
    numeric = _numeric_columns(table)
    head = "".join(f'<th{" class=num" if n else ""}>{html.escape(h)}</th>' for h, n in zip(table.headers, numeric,
                                                                                          strict=False))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if n else ""}>{html.escape(c)}</td>' for c, n in zip(row, numeric,
                                                                                                 strict=False))
        + "</tr>" for row in table.rows)
    cls = ' class="compact"' if table.compact else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_part(part: Part, figures: dict[str, bytes]) -> str:
    if isinstance(part, Row):
        return '<div class="row">' + "".join(_html_part(p, figures) for p in part.parts) + "</div>"
    if isinstance(part, Table):
        return _html_table(part)
    if isinstance(part, Figure):
        data = base64.b64encode(figures[part.file]).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(part.alt)}">'
                f"<figcaption>{html.escape(part.alt)}</figcaption></figure>")
    if isinstance(part, Code):
        return f"<pre>{html.escape(part.text)}</pre>"
    if isinstance(part, Note):
        return f'<p class="note">{html.escape(part.text)}</p>'
    return f"<p>{html.escape(part)}</p>"


def to_html(doc: Document, figures: dict[str, bytes]) -> str:
    """Render ``doc`` as one self-contained HTML page; ``figures`` maps figure file names to PNG bytes."""
    sections = "\n".join(
        f"<section><h2>{html.escape(s.title)}</h2>\n" + "\n".join(_html_part(p, figures) for p in s.parts)
        + "</section>" for s in doc.sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head>\n<body><main>\n"
        f"<header class=\"hero\"><p class=\"kicker\">{html.escape(doc.title)}</p>"
        f"<h1>{html.escape(doc.headline)}</h1><p>{html.escape(doc.subline)}</p></header>\n"
        f"{sections}\n</main></body></html>\n"
    )
