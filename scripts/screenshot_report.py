"""Render a run's report and take a headless Chromium screenshot of report.html, to check how it reads.

The page is self-contained, so the browser is started with everything that could reach the network turned
off (no QUIC, no background networking, no component updates, no sync) and a throwaway profile folder.

Usage:
    python scripts/screenshot_report.py RUN_DIR [--out RUN_DIR/report.png] [--width 1280] [--height 2400]
                                                [--browser chromium] [--no-render]

Needs a Chromium or Chrome binary on PATH (Debian: ``apt-get install chromium``); the test suite does not.

Example:
    python scripts/screenshot_report.py runs/sst2-hybrid --out /tmp/report.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def find_browser(name: str | None) -> str:
    """Path of the browser to use: ``name`` if given, else the first of :data:`BROWSERS` on PATH."""
    for candidate in ([name] if name else BROWSERS):
        path = shutil.which(candidate)
        if path:
            return path
    wanted = name or " / ".join(BROWSERS)
    raise SystemExit(f"no browser found ({wanted}); install one, e.g. `apt-get install -y chromium`, "
                     "or pass --browser PATH")


def screenshot(html: Path, out: Path, browser: str, width: int, height: int, timeout: float = 120.0) -> Path:
    """Save a ``width`` x ``height`` PNG screenshot of the local page ``html`` to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="blockprune-chromium-") as profile:
        command = [browser, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out.resolve()}",
                   f"--window-size={width},{height}", html.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0 or not out.is_file():
        raise SystemExit(f"{browser} failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run folder with report.json (and prune/model for density maps)")
    parser.add_argument("--out", type=Path, help="screenshot file (default: RUN_DIR/report.png)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    parser.add_argument("--browser", help="browser binary (default: first Chromium/Chrome found on PATH)")
    parser.add_argument("--no-render", action="store_true", help="screenshot the existing report.html as is")
    args = parser.parse_args(argv)
    browser = find_browser(args.browser)
    if not args.no_render:
        from blockprune.report.render import render_report

        render_report(args.run_dir)
    html = args.run_dir / "report.html"
    if not html.is_file():
        raise SystemExit(f"{html} does not exist; run without --no-render to write it")
    out = screenshot(html, args.out or args.run_dir / "report.png", browser, args.width, args.height)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
