"""What does loading a saved pruned model cost? Wall time and peak memory of ``load_pruned``, and file sizes.

Saves the embedded all-MiniLM-L6-v2 (BERT 6x384, sequence classification head) twice with
:func:`blockprune.store.saving.save_pruned`: ``dense`` (unpruned, ``compact=False``: the worst case for loading) and
``unstructured-90`` (every block linear zeroed at 90% by magnitude, ``compact=True``). Then loads each folder
``--repeats`` times, each in a fresh Python process so that one load's memory cannot hide the next, and reports
the load time and the peak resident memory the load added (Linux ``VmHWM``, reset just before loading, minus
the resident size then; imports, including the model's modeling module, are done before), both right after
``load_pruned`` returns and once every parameter has been read (safetensors maps the file: weights loaded
without a copy only become resident when used). ``--src`` points the child processes at another checkout's ``src`` (e.g. the version
before loading on the meta device) to compare loaders on the same folders; the compact folder is skipped
there when that version cannot read it.

Results are printed as a table and written to ``benchmarks/results/load_memory.json``, with the command,
versions and load average, since a shared machine skews timings.

Run:
    PYTHONPATH=src .venv/bin/python benchmarks/load_memory.py --repeats 3
    PYTHONPATH=src .venv/bin/python benchmarks/load_memory.py --repeats 3 --src /path/to/old/src --tag before
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from blockprune.atomic import write_text
from blockprune.deploy.counts import block_linears
from blockprune.deploy.devices import machine
from blockprune.store.saving import save_pruned
from blockprune.store.size import size_report
from blockprune.tasks import embedded_model_path

RESULTS = Path(__file__).resolve().parent / "results"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch, transformers
from blockprune.saving import load_pruned  # the flat layout's path: --src may name an older checkout
for name in json.loads((Path(sys.argv[2]) / "config.json").read_text())["architectures"]:
    getattr(transformers, name)  # import the modeling module before timing: transformers imports it lazily


def peak_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_kib():
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024


Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
before = rss_kib()
start = time.perf_counter()
model = load_pruned(sys.argv[2])
seconds = time.perf_counter() - start
loaded = peak_kib()
with torch.no_grad():  # read every parameter: weights still mapped from the file become resident
    sum(float(p.sum()) for p in model.parameters())  # a reduction: no temporary copy
print(json.dumps({"seconds": seconds, "peak_added_mib": (loaded - before) / 1024,
                  "peak_added_used_mib": (peak_kib() - before) / 1024, "rss_before_mib": before / 1024}))
"""


def zero_by_magnitude(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest ``sparsity`` share of each block linear's weights (unstructured magnitude pruning)."""
    with torch.no_grad():
        for layer in block_linears(model):
            for weight in layer.values():
                k = int(sparsity * weight.numel())
                if k:
                    cut = weight.abs().reshape(-1).kthvalue(k).values
                    weight.masked_fill_(weight.abs() <= cut, 0.0)


def make_folders(root: Path, sparsity: float) -> dict[str, Path]:
    """The two folders to load: the dense MiniLM and its ``sparsity`` unstructured copy, saved compactly."""
    source = embedded_model_path()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).eval()
    folders = {"dense": save_pruned(model, root / "dense", compact=False)}
    zero_by_magnitude(model, sparsity)
    folders[f"unstructured-{round(sparsity * 100)}"] = save_pruned(model, root / "sparse", compact=True)
    return folders


def measure_load(folder: Path, src: Path, repeats: int) -> list[dict[str, float]]:
    """``repeats`` loads of ``folder``, each in a fresh process importing blockprune from ``src``."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(folder)], capture_output=True, text=True,
                             check=False, env={**os.environ, "PYTHONPATH": str(src)})
        if out.returncode:
            raise RuntimeError(f"loading {folder} failed:\n{out.stderr[-2000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return runs


def summary(runs: list[dict[str, float]]) -> dict[str, float]:
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {"seconds_median": ordered[len(ordered) // 2]["seconds"],
            "peak_added_mib_max": max(r["peak_added_mib"] for r in runs),
            "peak_added_used_mib_max": max(r["peak_added_used_mib"] for r in runs), "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the src folder whose load_pruned the child processes use")
    parser.add_argument("--tag", default="current", help="name of this measurement in the results file")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, folder in make_folders(Path(tmp), args.sparsity).items():
            try:
                load = summary(measure_load(folder, args.src.resolve(), args.repeats))
            except RuntimeError as err:
                print(f"{name}: skipped ({str(err).splitlines()[-1][:200]})")
                continue
            results[name] = {"size": size_report(folder), "load": load}
    record = {"tag": args.tag, "command": " ".join([Path(sys.executable).name, *sys.argv]), "src": str(args.src),
              "results": results, "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                               "python": platform.python_version()},
              "machine": machine(), "load_average": os.getloadavg()}
    file = RESULTS / "load_memory.json"
    previous = json.loads(file.read_text()) if file.is_file() else {}
    write_text(file, json.dumps({**previous, args.tag: record}, indent=1) + "\n")
    for name, result in results.items():
        size, load = result["size"], result["load"]
        print(f"{name:>18}: file {size['saved_bytes'] / 2**20:6.1f} MiB (dense fp32 {size['dense_bytes'] / 2**20:.1f}), "
              f"linears {size['linear_saved_bytes'] / max(size['linear_dense_bytes'], 1):.1%} of dense; "
              f"load {load['seconds_median']:.2f} s median, peak +{load['peak_added_mib_max']:.0f} MiB "
              f"(+{load['peak_added_used_mib_max']:.0f} MiB once every weight is read)")
    return record


if __name__ == "__main__":
    main()
