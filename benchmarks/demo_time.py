"""How long `make demo` takes on a fresh clone, and what it gives: the numbers README states, as data.

Clones this repository into a temporary folder, runs `make demo` there (virtual environment included, so the
set-up is timed too), and records the wall time, the peak memory of the run, and from the run's report the
teacher and final accuracy on dev and test, the shapes kept and the measured speedup. Run it on a quiet machine:
the demo's bench stage times the two models, and other jobs on the same cores slow every stage.

Usage:
    python benchmarks/demo_time.py                     # clone HEAD, run make demo, write the record
    python benchmarks/demo_time.py --run-dir D --wall-s S --peak-kib K
                                                       # record a run already made (and timed) in D

Writes benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from blockprune.atomic import write_text
from blockprune.deploy.devices import machine

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUN = "runs/demo"


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What README says of the demo, read from its report.json."""
    teacher, final = report["teacher"], report["final"]
    return {
        "teacher": {"dev": teacher["metric"], "test": teacher["test_metrics"]["accuracy"],
                    "training": teacher.get("training")},
        "final": {"dev": final["metric"], "test": final["test_metrics"]["accuracy"]},
        "change_points": {"dev": round(100 * (final["metric"] - teacher["metric"]), 2),
                          "test": round(100 * (final["test_metrics"]["accuracy"]
                                               - teacher["test_metrics"]["accuracy"]), 2)},
        "heads_kept": report["heads_kept"], "heads_total": report["heads_total"],
        "ffn_width": report["ffn_width"], "ffn_total": report["ffn_total"],
        "speedup": report["speedup"], "stages": report.get("stages"),
        "command": report["command"], "versions": report["versions"],
    }


def run_fresh_clone() -> tuple[Path, float, int]:
    """``make demo`` in a fresh clone of HEAD: (its run folder, wall seconds, peak memory of the run in KiB)."""
    clone = Path(tempfile.mkdtemp(prefix="blockprune-demo-")) / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    start = time.perf_counter()
    subprocess.run(["make", "demo"], cwd=clone, check=True)
    wall = time.perf_counter() - start
    return clone / RUN, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished demo run to record instead of running one")
    parser.add_argument("--wall-s", type=float, help="with --run-dir: the wall seconds of its `make demo`")
    parser.add_argument("--peak-kib", type=int, help="with --run-dir: its peak memory (KiB, as time -v says)")
    args = parser.parse_args(argv)
    if args.run_dir is None:
        run_dir, wall, peak = run_fresh_clone()
        how = "python benchmarks/demo_time.py"
    elif args.wall_s is None or args.peak_kib is None:
        parser.error("--run-dir needs --wall-s and --peak-kib (from `/usr/bin/time -v make demo` on a fresh clone)")
    else:
        run_dir, wall, peak = args.run_dir, args.wall_s, args.peak_kib
        how = "/usr/bin/time -v make demo (fresh clone), recorded by " + " ".join(["python", *sys.argv])
    report_file = run_dir / "report.json"
    if not report_file.is_file():
        parser.error(f"{report_file} does not exist: give the run folder of a finished `make demo`")
    record = {"what": "make demo on a fresh clone (virtual environment set-up included)", "how": how,
              "wall_s": round(wall, 1), "peak_rss_mib": round(peak / 1024), "machine": machine(),
              "date": datetime.now(UTC).isoformat(timespec="seconds"),
              **summary(json.loads(report_file.read_text()))}
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / "demo.json", json.dumps(record, indent=1) + "\n")
    print(f"make demo: {wall / 60:.1f} min wall; test {record['teacher']['test']:.4f} -> "
          f"{record['final']['test']:.4f}; {record['speedup']['measured']:.2f}x measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
