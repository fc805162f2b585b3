"""Reading raw records (one dict per example) from local CSV/TSV/JSON/JSONL (and parquet) files.

Only the standard library reads CSV/TSV/JSON/JSONL, so the offline default needs no ``pandas`` or ``datasets``,
and a bad row is named by its line in the file. Parquet files and folders saved with ``Dataset.save_to_disk``
are read by :mod:`blockprune.tasks.hf` (they need the ``hf`` extra), as are hub datasets.
Every problem becomes one :class:`~blockprune.tasks.base.DataError` naming the file and the fix, raised
before any tokenization or training starts.

Example:
    >>> rows = read_records("train.csv")          # doctest: +SKIP
    >>> rows[0]["text"], rows[0]["label"]         # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from blockprune.tasks.base import DataError, Record

MAX_LISTED = 10


def read_records(path: str | os.PathLike[str]) -> list[Record]:
    """Read a ``.csv``/``.tsv`` (header row), ``.json``/``.jsonl`` (records) or ``.parquet`` file into a list of dicts.

    A ``.json`` file may hold a list of records, an object with one list of records (e.g. ``{"data": [...]}``),
    or JSON lines. A ``.jsonl`` file is always JSON lines, one record per line, so a file of one line is one
    record. A folder written by ``Dataset.save_to_disk`` is read as one table too.

    Raises:
        DataError: missing, unreadable or empty file, or an unknown extension.
    """
    path = Path(path)
    if path.is_dir():
        from blockprune.tasks.hf import read_saved_dataset

        return _not_empty(read_saved_dataset(path), path)
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Check the path (train_file / validation_file).")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        records = _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix == ".json":
        records = _read_json(path)
    elif suffix == ".jsonl":
        records = _read_json_lines(path, read_text(path, f"Data file {path} is empty; give one JSON object per line."))
    elif suffix == ".parquet":
        from blockprune.tasks.hf import read_parquet

        records = read_parquet(path)
    else:
        raise DataError(
            f"Unsupported data file type {path.suffix!r} for {path}; use .csv, .tsv, .json, .jsonl or .parquet."
        )
    return _not_empty(records, path)


def _not_empty(records: list[Record], path: Path) -> list[Record]:
    if not records:
        raise DataError(f"Data file {path} holds no examples; give a file with at least one row.")
    return records


def _read_csv(path: Path, delimiter: str) -> list[Record]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"Data file {path} is empty; it needs a header row and at least one example.")
        return [dict(row) for row in reader]


def read_text(path: Path, empty: str) -> str:
    """The UTF-8 text of a data file (a BOM is dropped); a blank file raises ``DataError(empty)``.

    Raises:
        DataError: the file is not UTF-8 (byte named), or holds only whitespace (message ``empty``).

    Example:
        >>> text = read_text(Path("train.jsonl"), "train.jsonl is empty; give one record per line.")  # doctest: +SKIP
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); re-save it as UTF-8.") from None
    if not text.strip():
        raise DataError(empty)
    return text


def _read_json(path: Path) -> list[Record]:
    text = read_text(path, f"Data file {path} is empty; give a list of records or one JSON object per line.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_json_lines(path, text)
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path} is a JSON object; expected a list of records (or one key holding that list).")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path} must hold JSON records (objects with named fields), one per example.")
    return data


def _read_json_lines(path: Path, text: str) -> list[Record]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not valid JSON ({err.msg}); fix or remove that line.") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number} is not a JSON object; each line must be one record.")
        records.append(record)
    return records


def columns_of(records: list[Record]) -> list[str]:
    """All field names, in first-seen order."""
    seen: dict[str, None] = {}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen)


def require_columns(records: list[Record], columns: dict[str, str | None], where: str) -> None:
    """Check that each named column exists; ``columns`` maps an option name (e.g. ``text_column``) to a column.

    Raises:
        DataError: listing the missing columns, the available ones and the option to change.
    """
    available = columns_of(records)
    missing = {opt: col for opt, col in columns.items() if col is not None and col not in available}
    if missing:
        wanted = ", ".join(f"{col!r} ({opt})" for opt, col in missing.items())
        raise DataError(
            f"{where} has no column {wanted}. Available columns: {available}. "
            f"Pass the right name with {' / '.join(missing)}."
        )


def is_missing(value: Any) -> bool:
    """True for ``None``, NaN and blank strings."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_not_missing(records: list[Record], column: str, where: str) -> None:
    """Raise one :class:`DataError` listing the rows (1-based, header excluded) whose ``column`` is missing."""
    rows = [i for i, r in enumerate(records, start=1) if is_missing(r.get(column))]
    if rows:
        raise DataError(
            f"{where}: column {column!r} is empty or NaN in {len(rows)} row(s) (1-based, header excluded): "
            f"{format_rows(rows)}. Fill or drop those rows."
        )


def format_rows(rows: list[int]) -> str:
    """``[3, 7, ...]`` showing at most a few row numbers."""
    shown = ", ".join(map(str, rows[:MAX_LISTED]))
    return f"[{shown}{', ...' if len(rows) > MAX_LISTED else ''}]"
