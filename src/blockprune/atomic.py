"""Atomic writes: every artifact goes to a temporary path first and is renamed into place.

A crash in the middle of a save therefore leaves the previous artifact intact. Use :func:`write_text`
for single files and :func:`atomic_dir` for folders (a saved model, a report with plots). Data is flushed
to disk before the rename, so the rename never publishes a file whose bytes are not written yet. On Linux
a folder is swapped in with one ``renameat2(RENAME_EXCHANGE)``, so ``path`` always names a complete
folder; elsewhere the old folder is first moved to ``.<name>.old``, and the next save to the same path
puts it back if a crash fell between the two renames.

Example:
    >>> with atomic_dir("out/model") as tmp:   # doctest: +SKIP
    ...     (tmp / "weights.safetensors").write_bytes(b"...")
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` to disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(folder)


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``RENAME_EXCHANGE``); ``False`` where unsupported."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _old_copy(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _publish(tmp: Path, path: Path) -> None:
    """Put the finished folder ``tmp`` at ``path``, replacing any previous one whole."""
    if path.exists() and exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous folder
    else:
        old = _old_copy(path)
        try:
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
            os.replace(tmp, path)
        except BaseException:
            if old.is_dir() and not path.exists():
                os.replace(old, path)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(path.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _sweep(path: Path) -> None:
    """Remove the temporary folders of earlier saves to ``path`` whose process died (SIGKILL, power loss).

    A temporary folder is named ``.<name>.<pid>.<random>.tmp``; one whose process still runs is another
    save in progress and is left alone.
    """
    for litter in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = litter.name[len(path.name) + 2:].split(".", 1)[0]
        if litter.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(litter, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole.

    If the body raises, the temporary folder is removed and ``path`` (if it existed) is untouched. The
    temporary folders of earlier saves to ``path`` that were killed outright are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    old = _old_copy(path)
    if old.is_dir() and not path.exists():  # an earlier save crashed between its two renames
        os.replace(old, path)
    _sweep(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, path)
