"""Timing on a chosen device, in a chosen precision, with pinned threads, and the spread of the numbers.

Everything runs on CPU. The CUDA path (CUDA events + synchronize) is checked with a fake ``torch.cuda`` only:
which calls are made, in which order, and that the events' time is what is returned. A real GPU run is not
exercised here.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from tiny import tiny_model

from blockprune import devices
from blockprune.cli import main
from blockprune.deploy.devices import check_bench_settings, check_device, check_dtype, device_name, pass_timer
from blockprune.deploy.measure import MeasureReport, measure, measure_latency, speedup
from blockprune.surgery.shrink import shrink

OTHER_THREADS = 1 if torch.get_num_threads() != 1 else 2


# ------------------------------------------------------------------------------------------------ checks
def test_cpu_and_the_three_dtypes_are_accepted_on_cpu() -> None:
    dev, dtype = check_bench_settings("cpu", "bf16", threads=1)
    assert dev == torch.device("cpu") and dtype == torch.bfloat16
    assert check_dtype("fp16", dev) == torch.float16  # this torch computes fp16 on CPU
    assert check_dtype("fp32", dev) == torch.float32
    assert device_name(dev)  # the processor's model name


@pytest.mark.parametrize(("device", "words"), [
    ("cuda", "'cuda': CUDA is not available on this machine"),
    ("cuda:1", "CUDA is not available"),
    ("nonsense", "'nonsense' is not a device name; use cpu, cuda or cuda:N"),
    ("mps", "timing on 'mps' is not supported"),
])
def test_a_device_this_machine_cannot_time_on_is_one_clear_error(device: str, words: str) -> None:
    if torch.cuda.is_available() and device.startswith("cuda"):
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="--bench-device") as err:
        check_device(device, "--bench-device")
    assert words in str(err.value)


def test_a_missing_gpu_index_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"has 1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        check_device("cuda:1", "--device")


def test_bad_dtype_and_threads_are_refused() -> None:
    with pytest.raises(ValueError, match="'int8' is unknown; choose one of fp32, fp16, bf16"):
        check_dtype("int8", torch.device("cpu"), "--dtype")
    with pytest.raises(ValueError, match="--threads 0 must be a whole number >= 1"):
        check_bench_settings("cpu", "fp32", 0, flags=("--device", "--dtype", "--threads"))


def test_a_precision_torch_cannot_compute_in_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_half(dtype: torch.dtype, dev: torch.device) -> None:
        raise RuntimeError('"addmm_impl_cpu_" not implemented for \'Half\'\nmore detail')

    monkeypatch.setattr(devices, "_probe", no_half)
    with pytest.raises(ValueError) as err:
        check_dtype("fp16", torch.device("cpu"), "--bench-dtype")
    text = str(err.value)
    assert text.startswith("--bench-dtype fp16 is not supported on cpu") and "use bf16 or fp32 on CPU" in text
    assert "\n" not in text and "not implemented for 'Half'" in text
    assert check_dtype("fp32", torch.device("cpu")) == torch.float32  # fp32 needs no probe


def test_an_op_missing_in_the_precision_during_timing_is_one_clear_error() -> None:
    model = tiny_model("bert")

    def missing(module: torch.nn.Module, args: object) -> None:
        if next(module.parameters()).dtype == torch.bfloat16:
            raise RuntimeError("\"softmax_lastdim_kernel_impl\" not implemented for 'BFloat16'")

    model.register_forward_pre_hook(missing)
    with pytest.raises(ValueError, match="the model cannot run in bf16 on cpu .*; use fp32"):
        measure_latency(model, batch_size=1, seq_len=4, warmup=1, repeats=1, dtype="bf16")


# ------------------------------------------------------------------------------------------------ the timer
class FakeEvent:
    log: list[str] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.name = f"event{len([e for e in FakeEvent.log if e.startswith('new')])}"
        FakeEvent.log.append("new")

    def record(self) -> None:
        FakeEvent.log.append(f"record {self.name}")

    def elapsed_time(self, end: FakeEvent) -> float:
        FakeEvent.log.append(f"elapsed {self.name}->{end.name}")
        return 7.25


def test_cuda_passes_are_timed_with_events_between_synchronizes(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: FakeEvent.log.append(f"sync {device}"))

    def forward(**inputs: object) -> None:
        FakeEvent.log.append(f"forward {sorted(inputs)}")

    run = pass_timer(forward, {"input_ids": 0}, torch.device("cuda:0"))
    assert run() == 7.25
    assert FakeEvent.log == ["new", "new", "sync cuda:0", "record event0", "forward ['input_ids']",
                             "record event1", "sync cuda:0", "elapsed event0->event1"]


def test_cpu_passes_use_wall_time_and_no_cuda_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda(*args: object, **kwargs: object) -> None:
        raise AssertionError("CUDA touched on CPU")

    monkeypatch.setattr(torch.cuda, "Event", no_cuda)
    monkeypatch.setattr(torch.cuda, "synchronize", no_cuda)
    assert pass_timer(lambda **kw: sum(range(10_000)), {}, torch.device("cpu"))() > 0


def test_cuda_device_is_named_by_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA Fake 80GB")
    assert device_name(torch.device("cuda")) == "NVIDIA Fake 80GB"


# ------------------------------------------------------------------------------------------------ measure
def test_bf16_on_cpu_is_timed_on_a_copy_with_threads_pinned() -> None:
    model = tiny_model("bert").train()
    seen: list[tuple[torch.dtype, int]] = []
    model.register_forward_pre_hook(
        lambda module, args: seen.append((next(module.parameters()).dtype, torch.get_num_threads())))
    before = torch.get_num_threads()
    result = measure_latency(model, batch_size=2, seq_len=8, warmup=1, repeats=3, threads=OTHER_THREADS, dtype="bf16")
    assert seen == [(torch.bfloat16, OTHER_THREADS)] * 4  # 1 warm-up + 3 timed passes, in bf16, pinned threads
    assert result["dtype"] == "bf16" and result["device"] == "cpu" and result["threads"] == OTHER_THREADS
    assert result["device_name"] == device_name(torch.device("cpu"))
    assert 0 <= result["iqr_ms"] <= result["p90_ms"]
    # the caller's model is as it was
    assert next(model.parameters()).dtype == torch.float32 and model.training
    assert torch.get_num_threads() == before


def test_a_model_already_in_place_is_timed_as_is_and_restored() -> None:
    model = tiny_model("bert").train()
    ids: list[int] = []
    model.register_forward_pre_hook(lambda module, args: ids.append(id(module)))
    measure_latency(model, batch_size=1, seq_len=4, warmup=0, repeats=2)  # dtype None: the model's own (fp32)
    assert ids == [id(model)] * 2 and model.training


def test_measure_report_names_device_dtype_and_threads() -> None:
    report = measure(tiny_model("bert"), seq_len=8, batch_sizes=(1,), warmup=0, repeats=2, threads=1,
                     dtype=torch.bfloat16)
    assert (report.dtype, report.threads, report.device) == ("bf16", 1, "cpu") and report.device_name
    assert MeasureReport.from_json(report.to_json()) == report
    assert f"Latency on cpu ({report.device_name}), bf16, 1 thread(s)" in report.to_markdown()
    old = {k: v for k, v in report.to_dict().items() if k not in ("dtype", "device_name")}  # a report from before
    assert MeasureReport.from_dict(old).dtype == "fp32"


def test_abba_pairs_give_the_speedup_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeat i times A and B back to back (alternating order); measured_iqr is the IQR of the pairs' ratios."""
    order: list[str] = []
    ref_times = iter([10.0, 12.0, 14.0, 16.0, 30.0, 11.0])  # 2 warm-up, then 4 timed
    model_times = iter([5.0, 6.0, 4.0, 7.0, 10.0, 8.0])

    def fake_timer(model: torch.nn.Module, inputs: object, dev: torch.device):
        name, times = ("ref", ref_times) if model is reference else ("model", model_times)
        return lambda: order.append(name) or next(times)

    reference, small = tiny_model("bert"), tiny_model("bert")
    monkeypatch.setattr(importlib.import_module("blockprune.deploy.measure"), "pass_timer", fake_timer)
    result = speedup(reference, small, seq_len=4, batch_sizes=(1,), warmup=2, repeats=4)
    assert order == ["ref", "model"] * 2 + ["ref", "model", "model", "ref"] * 2  # warm-up, then ABBA
    row = result["batches"][0]
    ref, mod = [14.0, 16.0, 30.0, 11.0], [4.0, 7.0, 10.0, 8.0]
    ratios = np.array(ref) / np.array(mod)
    assert row["reference_ms"] == pytest.approx(np.median(ref)) and row["model_ms"] == pytest.approx(np.median(mod))
    assert row["reference_iqr_ms"] == pytest.approx(np.subtract(*np.percentile(ref, [75, 25])))
    assert row["model_iqr_ms"] == pytest.approx(np.subtract(*np.percentile(mod, [75, 25])))
    assert row["measured_iqr"] == pytest.approx(np.subtract(*np.percentile(ratios, [75, 25])))
    assert row["measured"] == pytest.approx(np.median(ref) / np.median(mod))


def test_speedup_reports_device_dtype_threads_and_spreads_in_bf16() -> None:
    reference, small = tiny_model("bert"), tiny_model("bert")
    with torch.no_grad():
        small.bert.encoder.layer[0].intermediate.dense.weight[:32] = 0
        small.bert.encoder.layer[0].output.dense.weight[:, :32] = 0
    shrink(small)
    result = speedup(reference, small, seq_len=8, batch_sizes=(1, 2), warmup=1, repeats=3, threads=1, dtype="bf16")
    assert (result["device"], result["dtype"], result["threads"]) == ("cpu", "bf16", 1) and result["device_name"]
    for row in result["batches"]:
        assert row["reference_iqr_ms"] >= 0 and row["model_iqr_ms"] >= 0 and row["measured_iqr"] >= 0
        assert row["repeats"] == 3
    assert next(small.parameters()).dtype == torch.float32  # timed on copies
    assert speedup(reference, small, seq_len=8, latency=False, dtype="fp16")["dtype"] == "fp16"


# ------------------------------------------------------------------------------------------------ the bench command
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("bench-tiny")
    tiny_model("bert").save_pretrained(path)
    return path


def test_bench_command_takes_dtype_threads_and_the_prune_spellings(tiny_dir, capsys) -> None:
    assert main(["bench", str(tiny_dir), "--reference", str(tiny_dir), "--bench-seq-len", "8", "--batch-sizes", "1,2",
                 "--repeats", "2", "--dtype", "bf16", "--bench-threads", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["dtype"], result["threads"], result["seq_len"]) == ("bf16", 1, 8)
    assert [b["batch_size"] for b in result["batches"]] == [1, 2] and "measured_iqr" in result["batches"][0]
    assert main(["bench", str(tiny_dir), "--seq-len", "8", "--batch-sizes", "1", "--repeats", "1",
                 "--bench-dtype", "fp16", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "fp16, 1 thread(s)" in text and "| IQR ms |" in text


@pytest.mark.parametrize(("flags", "words"), [
    (["--device", "cuda"], "--device 'cuda': CUDA is not available"),
    (["--bench-device", "gpu0"], "--device 'gpu0' is not a device name"),
    (["--threads", "0"], "--threads 0 must be"),
    (["--batch-sizes", "1,x"], "--batch-sizes takes comma-separated whole numbers"),
])
def test_bench_command_refuses_bad_settings_in_one_line(tiny_dir, capsys, flags, words) -> None:
    if torch.cuda.is_available() and "cuda" in flags:
        pytest.skip("this machine has CUDA")
    assert main(["bench", str(tiny_dir), "--repeats", "1", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("blockprune bench: error: ") and words in err[0], err
