"""Data the way Hugging Face users name it: a dataset (hub name or ``save_to_disk`` folder), a config, splits.

A :class:`DatasetSpec` names the source and which splits play train, validation and (optionally) test;
:func:`load_splits` loads the whole dataset once and returns those splits as plain records, so the task
loaders check them exactly like records read from local files. Two sources are read:

* a folder written by ``DatasetDict.save_to_disk`` (``dataset_dict.json`` inside), or a folder whose
  sub-folders are such saved datasets, one per config (``<folder>/<config>/dataset_dict.json``): offline;
* any other name goes to ``datasets.load_dataset(name, config)`` (the hub, or its local cache).

Single tables read here too, for ``train_file`` / ``validation_file``: a folder written by
``Dataset.save_to_disk`` (:func:`read_saved_dataset`) and a ``.parquet`` file (:func:`read_parquet`).

Every problem (package missing, folder not a dataset, unknown config or split, hub unreachable) is one
:class:`~blockprune.tasks.base.DataError` that lists what is available and says how to fix it.

Example:
    >>> spec = DatasetSpec("glue", config="mnli", validation_split="validation_matched")   # doctest: +SKIP
    >>> splits = load_splits(spec)                                                          # doctest: +SKIP
    >>> splits.validation[0]["premise"]                                                    # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.tasks.base import DataError, Record

DICT_FILE = "dataset_dict.json"  # written by DatasetDict.save_to_disk
TABLE_FILE = "state.json"  # written by Dataset.save_to_disk
PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")
INSTALL = "pip install 'blockprune[hf]' (or: pip install datasets)"


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset and the splits that play train, validation and test (test: reporting only).

    ``name`` is a hub dataset (``"glue"``, ``"nyu-mll/glue"``) or a local folder saved with ``save_to_disk``.
    """

    name: str
    config: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    test_split: str | None = None

    def where(self, split: str) -> str:
        """How error messages name one split, e.g. ``dataset 'glue' config 'mnli' split 'train'``."""
        config = f" config {self.config!r}" if self.config else ""
        return f"dataset {self.name!r}{config} split {split!r}"

    def describe(self) -> str:
        """The data source line of reports."""
        kind = "folder" if is_local(self.name) else "hub"
        config = f"/{self.config}" if self.config else ""
        test = f", test={self.test_split}" if self.test_split else ""
        return f"{kind}: {self.name}{config} (train={self.train_split}, validation={self.validation_split}{test})"


@dataclass
class SplitRecords:
    """The records of the splits a :class:`DatasetSpec` names (``test`` is ``None`` without a test split)."""

    train: list[Record]
    validation: list[Record]
    test: list[Record] | None = None


def is_local(name: str) -> bool:
    """True when ``name`` means a folder on this machine: it exists, or it is written like a path."""
    return Path(name).expanduser().is_dir() or name.startswith(PATH_PREFIXES)


def load_splits(spec: DatasetSpec) -> SplitRecords:
    """Load ``spec``'s dataset once and return its train, validation and test splits as records.

    Raises:
        DataError: no ``datasets`` package, a folder that is not a saved dataset, an unknown config or split
            (the available ones listed), or a hub failure such as being offline.
    """
    loaded = _load_local(spec) if is_local(spec.name) else _load_hub(spec)
    available = list(loaded)
    wanted = [spec.train_split, spec.validation_split] + ([spec.test_split] if spec.test_split else [])
    unknown = [s for s in dict.fromkeys(wanted) if s not in loaded]
    if unknown:
        config = f" config {spec.config!r}" if spec.config else ""
        raise DataError(
            f"dataset {spec.name!r}{config} has no split {', '.join(map(repr, unknown))}; its splits are "
            f"{available}. Choose with train_split / validation_split / test_split "
            "(--train-split / --validation-split / --test-split)."
        )
    test = loaded[spec.test_split].to_list() if spec.test_split else None
    return SplitRecords(loaded[spec.train_split].to_list(), loaded[spec.validation_split].to_list(), test)


def _datasets(why: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{why} needs the 'datasets' package ({INSTALL}). Without it, pass local train_file=... and "
            "validation_file=... (CSV/JSON/JSONL, or SQuAD JSON for question answering)."
        ) from None
    return datasets


def _load_hub(spec: DatasetSpec) -> Any:
    """``datasets.load_dataset(name, config)``: every split, as a ``DatasetDict``."""
    datasets = _datasets(f"Loading dataset={spec.name!r} from the Hugging Face hub")
    try:
        return datasets.load_dataset(spec.name, spec.config)
    except ConnectionError as err:
        raise DataError(
            f"Could not reach dataset {spec.name!r} (config {spec.config!r}) on the Hugging Face hub and it is not "
            f"in the local cache ({err}){_offline_note(datasets)}. Offline, pass a folder saved with "
            "DatasetDict.save_to_disk (dataset=./folder) or local files (train_file=... / validation_file=...)."
        ) from err
    except Exception as err:  # noqa: BLE001 - any hub failure (bad name, bad config) becomes one clear message
        raise DataError(
            f"Could not load dataset {spec.name!r} (config {spec.config!r}) from the Hugging Face hub: {err}. "
            "Check the name and config (dataset_config), and that you are online; or pass a saved folder "
            "(dataset=./folder) or local train_file / validation_file."
        ) from err


def _offline_note(datasets: Any) -> str:
    offline = getattr(datasets.config, "HF_HUB_OFFLINE", False) or getattr(datasets.config, "HF_DATASETS_OFFLINE",
                                                                           False)
    return "; offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else ""


def _load_local(spec: DatasetSpec) -> Any:
    """A ``DatasetDict`` saved with ``save_to_disk``: ``name`` itself, or its sub-folder ``config``."""
    root = Path(spec.name).expanduser()
    if not root.is_dir():
        raise DataError(f"Dataset folder not found: {root}. Check the path, or give a hub dataset name.")
    configs = sorted(p.name for p in root.iterdir() if (p / DICT_FILE).is_file())
    if (root / DICT_FILE).is_file():
        if spec.config is not None:
            raise DataError(f"{root} is one saved DatasetDict without configs; leave dataset_config "
                            f"({spec.config!r}) out.")
        folder = root
    elif (root / TABLE_FILE).is_file():
        raise DataError(
            f"{root} holds a single Dataset (saved with Dataset.save_to_disk), which has no splits; pass it as "
            f"train_file={root} (and validation_file=...), or save a DatasetDict with named splits."
        )
    elif configs:
        if spec.config not in configs:
            given = f"has no config {spec.config!r}" if spec.config else "holds several configs"
            raise DataError(f"{root} {given}; its configs are {configs}. Choose one with dataset_config "
                            "(--dataset-config).")
        folder = root / spec.config
    else:
        raise DataError(
            f"{root} is not a dataset saved with DatasetDict.save_to_disk (no {DICT_FILE}, no config sub-folders "
            "holding one). Save it with save_to_disk, or pass data files as train_file / validation_file."
        )
    return _load_from_disk(folder)


def _load_from_disk(folder: Path) -> Any:
    datasets = _datasets(f"Reading the saved dataset {folder}")
    try:
        return datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as err:  # FileNotFoundError included: a split folder missing or corrupt
        raise DataError(f"Could not read the saved dataset {folder} ({err}); save it again with save_to_disk.") from err


def read_saved_dataset(path: str | os.PathLike[str]) -> list[Record]:
    """The records of one table saved with ``Dataset.save_to_disk`` (a ``train_file`` / ``validation_file``).

    Raises:
        DataError: the folder holds a ``DatasetDict`` (pass it as ``dataset=``) or is not a saved dataset.
    """
    folder = Path(path)
    if (folder / DICT_FILE).is_file():
        raise DataError(f"{folder} holds a DatasetDict with named splits; pass it as dataset={folder} (choose splits "
                        "with train_split / validation_split) instead of as a file.")
    if not (folder / TABLE_FILE).is_file():
        raise DataError(f"{folder} is a folder, not a data file or a Dataset saved with save_to_disk (no "
                        f"{TABLE_FILE}); give a .csv/.tsv/.json/.jsonl/.parquet file, or pass a saved DatasetDict (or a "
                        "folder of them, one per config) as dataset=<folder>.")
    return _load_from_disk(folder).to_list()


def read_parquet(path: Path) -> list[Record]:
    """The rows of a ``.parquet`` file, read with ``pyarrow`` (installed with ``datasets``).

    Read directly rather than through ``datasets.Dataset.from_parquet``, which would copy the file into the
    ``datasets`` cache first.

    Raises:
        DataError: ``pyarrow`` is missing or the file is not valid parquet.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"Reading {path} (parquet) needs pyarrow: {INSTALL}; or convert it to CSV/JSONL.") from None
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path} is not a readable parquet file ({err}); write it again, e.g. with "
                        "Dataset.to_parquet or DataFrame.to_parquet.") from err
