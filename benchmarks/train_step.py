"""Training-step cost of pruning: masked model (no teacher) vs the dense model, on the embedded MiniLM-L6.

One step = forward + backward + AdamW step at batch 32 x seq 128 (random token ids), the two models timed
alternately so drift of the machine affects both alike; the median of the repeats is reported. The goal of
the core engine is a masked step at most 1.25x the dense one.

Usage:
    python benchmarks/train_step.py [--preset hybrid] [--repeats 6] [--threads N]

Writes benchmarks/results/train_step.json and .md (with the command, versions and machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

from blockprune import Pruner, PruningConfig, make_optimizer
from blockprune.atomic import write_text
from blockprune.deploy.devices import machine
from blockprune.tasks import embedded_model_path

RESULTS = Path(__file__).parent / "results"


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], pruner=None):
    def step(i: int) -> float:
        start = time.perf_counter()
        if pruner is not None:
            pruner.step(90 + i, 100)  # late in the schedule: masks active, λ on
        loss = model(**batch).loss
        if pruner is not None:
            loss = loss + pruner.regularization()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hybrid")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    path = embedded_model_path()
    torch.manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 30000, (args.batch_size, args.seq_len)),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch_size,)),
    }

    def load() -> torch.nn.Module:
        return transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()

    dense = load()
    dense_step = make_step(dense, torch.optim.AdamW(dense.parameters(), lr=1e-5), batch)
    masked = load()
    pruner = Pruner(masked, PruningConfig.preset(args.preset, sparsity=0.5))
    masked_step = make_step(masked, make_optimizer(pruner, lr=1e-5), batch, pruner)

    for i in range(2):  # warm-up
        dense_step(i)
        masked_step(i)
    dense_times, masked_times = [], []
    for i in range(args.repeats):
        pair = [(dense_step, dense_times), (masked_step, masked_times)]
        for fn, sink in pair if i % 2 == 0 else reversed(pair):
            sink.append(fn(i))
    dense_ms = statistics.median(dense_times) * 1000
    masked_ms = statistics.median(masked_times) * 1000
    result = {
        "name": "train_step",
        "preset": args.preset,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "repeats": args.repeats,
        "dense_ms": round(dense_ms, 1),
        "masked_ms": round(masked_ms, 1),
        "ratio": round(masked_ms / dense_ms, 3),
        "threads": torch.get_num_threads(),
        "command": "python " + " ".join(sys.argv),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "machine": machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    write_text(RESULTS / "train_step.json", json.dumps(result, indent=1) + "\n")
    write_text(
        RESULTS / "train_step.md",
        f"# Training step: masked ({args.preset}, no teacher) vs dense\n\n"
        f"Embedded MiniLM-L6, batch {args.batch_size} x seq {args.seq_len}, CPU, {result['threads']} threads, "
        f"median of {args.repeats} alternating steps (forward + backward + AdamW).\n\n"
        f"| dense ms | masked ms | ratio |\n|---|---|---|\n| {result['dense_ms']} | {result['masked_ms']} | "
        f"{result['ratio']}x |\n\nCommand: `{result['command']}`; torch {torch.__version__}, "
        f"transformers {transformers.__version__}.\n",
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
