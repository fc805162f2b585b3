"""Which dynamic-int8 backend is fastest on CPU? A rough side-by-side on the embedded MiniLM (one process).

Times, round-robin in one process (so drift hits every candidate alike), a forward pass of the embedded
all-MiniLM-L6-v2 as a 2-label ``BertForSequenceClassification`` at batch x seq (default 32 x 128):

- ``torch fp32``: the model as is (the reference);
- ``torch.ao dynamic``: stock ``torch.ao.quantization.quantize_dynamic`` of the encoder linears (deprecated
  API; fbgemm/x86 kernels, per-tensor weights, 7-bit inputs);
- ``blockprune int8``: :func:`blockprune.deploy.quantize.quantize_model` (the same kernels, per-row weights, 8-bit
  inputs on VNNI CPUs);
- ``torchao dynamic`` (only when ``torchao`` is installed): ``torchao.quantization.quantize_`` with
  ``Int8DynamicActivationInt8WeightConfig`` on the encoder linears (eager, no ``torch.compile``);
- ``ORT fp32`` / ``ORT int8``: the ONNX export of the model, and ``onnxruntime.quantization.quantize_dynamic``
  of it (MatMul weights to int8), run by ONNX Runtime's CPU provider.

Each row gives the median latency, its ratio to ``torch fp32`` and the max |logit - fp32 logit| on the timed
batch. Results print as markdown (and JSON with ``--json``). Timings on a shared machine are noisy; run it
alone, with a fixed thread count, before quoting a number.

Run:
    PYTHONPATH=src .venv/bin/python benchmarks/int8_backends.py --threads 2 --repeats 10
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers

from blockprune.deploy.export import export_onnx
from blockprune.deploy.measure import random_inputs
from blockprune.deploy.quantize import quantize_model
from blockprune.tasks import embedded_model_path


def torch_runner(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(**inputs).logits

    return run


def ort_runner(path: Path, inputs: dict[str, torch.Tensor], threads: int) -> Callable[[], torch.Tensor]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    given = {**{k: v.numpy() for k, v in inputs.items()}, "token_type_ids": np.zeros_like(inputs["input_ids"].numpy())}
    feed = {i.name: given[i.name] for i in session.get_inputs()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def encoder_linears(model: torch.nn.Module) -> set[str]:
    return {name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.startswith("bert.encoder.") and m.weight.numel()}


def torch_ao_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    with warnings.catch_warnings():  # its deprecation notices
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), encoder_linears(model), dtype=torch.qint8)


def torchao_dynamic(model: torch.nn.Module) -> torch.nn.Module | None:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return None
    names, model = encoder_linears(model), copy.deepcopy(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda _m, name: name in names)
    return model


def candidates(model: torch.nn.Module, inputs: dict[str, torch.Tensor], threads: int, tmp: Path
               ) -> dict[str, Callable[[], torch.Tensor]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    runners = {
        "torch fp32": torch_runner(model, inputs),
        "torch.ao dynamic": torch_runner(torch_ao_dynamic(model), inputs),
        "blockprune int8": torch_runner(quantize_model(copy.deepcopy(model)), inputs),
    }
    torchao = torchao_dynamic(model)
    if torchao is not None:
        runners["torchao dynamic"] = torch_runner(torchao, inputs)
    fp32 = export_onnx(model, tmp / "model.onnx")
    quantize_dynamic(str(fp32), str(tmp / "model.int8.onnx"), weight_type=QuantType.QInt8)
    runners["ORT fp32"] = ort_runner(fp32, inputs, threads)
    runners["ORT int8"] = ort_runner(tmp / "model.int8.onnx", inputs, threads)
    return runners


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a BERT model folder (default: the embedded MiniLM)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.model or embedded_model_path()
    model = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    inputs = random_inputs(model, args.batch_size, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        runners = candidates(model, inputs, args.threads, Path(tmp))
        reference = runners["torch fp32"]()
        diffs = {name: float((run() - reference).abs().max()) for name, run in runners.items()}
        for _ in range(args.warmup):
            for run in runners.values():
                run()
        times: dict[str, list[float]] = {name: [] for name in runners}
        for i in range(args.repeats):
            order = list(runners) if i % 2 == 0 else list(reversed(runners))
            for name in order:
                start = time.perf_counter()
                runners[name]()
                times[name].append((time.perf_counter() - start) * 1000.0)
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = [{"backend": name, "median_ms": medians[name], "speedup_vs_torch_fp32": medians["torch fp32"] / medians[name],
             "max_abs_logit_diff": diffs[name]} for name in runners]
    meta = {"batch_size": args.batch_size, "seq_len": args.seq_len, "repeats": args.repeats, "threads": args.threads,
            "torch": torch.__version__, "loadavg": os.getloadavg(), "python": sys.version.split()[0]}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=1))
        return 0
    print(f"batch {args.batch_size} x seq {args.seq_len}, {args.threads} threads, {args.repeats} repeats, "
          f"load average {meta['loadavg'][0]:.2f}")
    print("| backend | median ms | vs torch fp32 | max abs logit diff |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['backend']} | {row['median_ms']:.1f} | {row['speedup_vs_torch_fp32']:.2f}x "
              f"| {row['max_abs_logit_diff']:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
