"""Before training large: what pruning all-mpnet-base-v2 to MiniLM-L6's speed asks for, measured on this host.

Why: issue 36's run (MPNet-base fine-tuned, then pruned to MiniLM-L6's measured speed and to half of it) costs
hours on 2 cores. This measures, in minutes, what it needs and what it costs, so that the run is planned on data:

* **the speed gap**: MiniLM-L6 and MPNet-base (both as 2-label classifiers) timed in one process, interleaved,
  threads pinned, at batch 32 x 128 tokens and batch 1 (medians with interquartile ranges). Their ratio is the
  speedup MPNet must gain to run at MiniLM-L6's speed (``1.0x``), and half of it is the ``0.5x`` point;
* **what the planners say**: ``blockprune plan`` for those two targets, in FLOPs (``struct``, with 0%, 25% and 50%
  of the residual width cut) and on the measured latency table of MPNet on this host (whole heads and neurons):
  the shapes, or the planner's own words on why a target is out of reach;
* **the training cost**: seconds per optimizer step at batch 32 x 128 tokens of fine-tuning MPNet (the teacher
  stage), of distilling MPNet from MPNet (a pruning epoch starts at the full model and gets cheaper as it
  shrinks: an upper bound) and of distilling MiniLM-L6 from MiniLM-L6 (the frontier's unit, for comparison);
  multiplied out to CPU-hours for the embedded task's 298 steps an epoch.

Run it on a quiet machine (nothing else on the cores): every number here is a timing.

Usage:
    python benchmarks/train_large_plan.py [--threads 2] [--steps 4] [--repeats 10]

Writes benchmarks/results/train_large_plan.json (command, versions, machine and every number).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from blockprune.app.pipeline import versions  # noqa: E402
from blockprune.atomic import write_text  # noqa: E402
from blockprune.deploy.devices import machine  # noqa: E402
from blockprune.deploy.latency_model import Setting  # noqa: E402
from blockprune.deploy.measure import speedup  # noqa: E402
from blockprune.deploy.plan import PlanError, plan  # noqa: E402
from blockprune.tasks import embedded_model_path  # noqa: E402

RESULT = BENCH / "results" / "train_large_plan.json"
STEPS_PER_EPOCH = 298  # the embedded task: 9,530 training reviews at batch 32
HIDDEN_CUTS = (0.0, 0.25, 0.5)


def classifier(path: Path | str) -> torch.nn.Module:
    return transformers.AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2).eval()


def speed_gap(minilm: torch.nn.Module, mpnet: torch.nn.Module, threads: int, repeats: int) -> dict[str, Any]:
    """MiniLM-L6 (reference) against MPNet-base, interleaved in this process: ``mpnet_over_minilm`` per batch is the
    speedup MPNet needs to run at MiniLM-L6's speed. Both are fed the same token ids, so MPNet's table is cut to
    MiniLM's 30,522 rows first (5 rows fewer: a lookup either way, the same cost)."""
    if mpnet.config.vocab_size != minilm.config.vocab_size:
        mpnet.resize_token_embeddings(minilm.config.vocab_size)
    result = speedup(minilm, mpnet, seq_len=128, batch_sizes=(1, 32), repeats=repeats, threads=threads)
    for batch in result["batches"]:
        batch["mpnet_over_minilm"] = batch["model_ms"] / batch["reference_ms"]
    return result


def planned(model_dir: Path, target: float, threads: int, cache: Path) -> dict[str, Any]:
    """The plans of ``target`` on MPNet (struct, each residual cut): in FLOPs and on the measured latency table."""
    out: dict[str, Any] = {"target": target, "flops": {}, "measured": {}}

    def shapes(result: dict[str, Any]) -> dict[str, Any]:
        keys = ("heads", "ffn", "theoretical_speedup", "sparsity", "attention_sparsity")
        return {k: result[k] for k in keys} | {"hidden": (result.get("hidden") or {}).get("after"),
                                               "params_after": result["params"]["total"]["after"]}

    for cut in HIDDEN_CUTS:
        overrides = {"hidden_sparsity": cut} if cut else None
        try:
            out["flops"][str(cut)] = shapes(plan(str(model_dir), "struct", target, overrides=overrides))
        except PlanError as err:
            out["flops"][str(cut)] = {"error": str(err)}
        try:  # the table is measured once (the first cut) and read from the cache after; its plan, not fitted
            result = plan(str(model_dir), "struct", target, overrides=overrides, speed_model="measured",
                          latency_cache=cache, setting=Setting(threads=threads, batch_size=32), fit=False)
            out["measured"][str(cut)] = shapes(result) | {"predicted_speedup": result["predicted_speedup"]}
        except PlanError as err:
            out["measured"][str(cut)] = {"error": str(err)}
    return out


def step_seconds(student: torch.nn.Module, teacher: torch.nn.Module | None, steps: int) -> dict[str, Any]:
    """Seconds per optimizer step (AdamW, batch 32 x 128 tokens, random ids) after one warm-up step: fine-tuning
    when ``teacher`` is None, else distillation (the teacher's forward pass included)."""
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=5e-5)
    generator = torch.Generator().manual_seed(0)
    vocab = min(student.config.vocab_size, teacher.config.vocab_size if teacher is not None else 10**9)
    times = []
    for step in range(steps + 1):
        ids = torch.randint(5, vocab, (32, 128), generator=generator)
        labels = torch.randint(0, 2, (32,), generator=generator)
        start = time.perf_counter()
        logits = student(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        loss = torch.nn.functional.cross_entropy(logits, labels)
        if teacher is not None:
            with torch.no_grad():
                target = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
            loss = loss + torch.nn.functional.kl_div(logits.log_softmax(-1), target.softmax(-1), reduction="batchmean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    student.eval()
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "steps": steps}


def mpnet_dir(dest: Path) -> Path:
    """The assembled model folder under ``dest`` (assembled there first, from downloaded wheels, if missing)."""
    from assets import __main__ as setup  # the benchmark set-up
    from assets import mpnet_base

    return mpnet_base.assemble(dest, None if dest.exists() else setup.download_mpnet(dest.parent / "wheels"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every timing (default 2)")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per training kind (default 4)")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per model and batch (default 10)")
    parser.add_argument("--latency-cache", type=Path, default=BENCH / "cache" / "latency",
                        help="where the MPNet latency table is cached")
    parser.add_argument("--mpnet", type=Path, default=BENCH / "cache" / "all-mpnet-base-v2",
                        help="where all-mpnet-base-v2 is (or gets) assembled (make assets-mpnet)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model_dir = mpnet_dir(args.mpnet)
    minilm, mpnet = classifier(embedded_model_path()), classifier(model_dir)
    print("[train-large] timing MiniLM-L6 against MPNet-base ...", flush=True)
    gap = speed_gap(minilm, mpnet, args.threads, args.repeats)
    ratio = next(b["mpnet_over_minilm"] for b in gap["batches"] if b["batch_size"] == 32)
    print(f"[train-large] MPNet-base is {ratio:.2f}x slower than MiniLM-L6 at batch 32 x 128", flush=True)
    plans = {}
    for name, target in (("at MiniLM-L6 speed (1.0x)", ratio), ("at half of it (0.5x)", ratio / 2)):
        print(f"[train-large] planning {target:.2f}x {name} ...", flush=True)
        plans[name] = planned(model_dir, round(target, 2), args.threads, args.latency_cache)
    print("[train-large] timing training steps ...", flush=True)
    steps = {"mpnet_finetune": step_seconds(mpnet, None, args.steps),
             "mpnet_distill_from_mpnet": step_seconds(mpnet, classifier(model_dir), args.steps),
             "minilm_distill_from_minilm": step_seconds(minilm, classifier(embedded_model_path()), args.steps)}
    hours = {name: round(s["median_s"] * STEPS_PER_EPOCH / 3600, 2) for name, s in steps.items()}
    plan_text = (f"teacher: {hours['mpnet_finetune']} h an epoch (at most 2: ~{2 * hours['mpnet_finetune']:.1f} h "
                 f"wall); one pruned point: 2 distillation epochs, at most {2 * hours['mpnet_distill_from_mpnet']:.1f}"
                 " h wall (the student shrinks as it trains); wall hours on 2 cores, CPU-hours twice that")
    record = {
        "what": "issue 36 feasibility: MPNet-base vs MiniLM-L6 speed, the plans to close the gap, training cost",
        "command": shlex.join(["python", "benchmarks/train_large_plan.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "versions": versions(), "machine": machine(),
        "threads": args.threads, "mpnet": str(model_dir), "speed_gap": gap, "mpnet_over_minilm_b32": ratio,
        "plans": plans, "train_step_seconds": steps, "wall_hours_per_epoch": hours, "plan": plan_text,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_text(RESULT, json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"[train-large] {plan_text}\n[train-large] wrote {RESULT.relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
