"""``blockprune prune`` with the ``--bench-*`` options, and the stage progress lines of a run.

One tiny run (tiny BERT, embedded tokenizer, 96 training rows) is made once; the tests then re-run the same
folder with other bench options or progress settings. The bench options travel CLI -> RunOptions ->
bench/done.json ("settings") -> report.json; changing them measures the bench stage again and nothing else.
Only CPU is used: ``--bench-device cuda`` is checked for its error on this machine, not timed on a GPU.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import random
import re
from pathlib import Path

import pytest
import torch
import transformers

from blockprune.app.options import RunOptions
from blockprune.app.pipeline import STAGES
from blockprune.app.progress import StageClock, clock_time
from blockprune.cli import main
from blockprune.tasks import embedded_model_path

WORDS = (["great", "wonderful", "moving", "sharp"], ["dull", "boring", "messy", "flat"])
PLAN = ["teacher", "prune", "shrink", "evaluate", "bench"]
OTHER_THREADS = 1 if torch.get_num_threads() != 1 else 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-pipeline")
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=30522, max_position_embeddings=64)
    transformers.BertForSequenceClassification(config).save_pretrained(root / "model")
    transformers.AutoTokenizer.from_pretrained(embedded_model_path()).save_pretrained(root / "model")
    rng = random.Random(0)
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for _ in range(96):
            label = rng.random() < 0.5
            writer.writerow([" ".join(rng.choices(WORDS[label], k=5)), int(label)])
    return {"model": root / "model", "csv": root / "train.csv", "root": root}


def prune_line(inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", str(inputs["model"]), "--train-file", str(inputs["csv"]), "--sparsity", "0.5",
            "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "16", "--max-length", "16",
            "--learning-rate", "1e-3", "--teacher-learning-rate", "1e-3", "--training-arg", "use_cpu=true",
            "--output-dir", str(out), *extra]


BENCH = ["--bench-threads", str(OTHER_THREADS), "--bench-seq-len", "12", "--bench-batch-sizes", "1,3",
         "--bench-dtype", "bf16", "--bench-repeats", "2"]


def stage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("stage ")]


@pytest.fixture(scope="module")
def first_run(inputs: dict[str, Path]) -> dict[str, object]:
    """The run, with progress lines on; its stderr and the mtimes of every done.json."""
    out = inputs["root"] / "run"
    err = io.StringIO()  # a module fixture cannot use capsys: capture stderr by hand
    with contextlib.redirect_stderr(err):
        code = main(prune_line(inputs, out, *BENCH))
    assert code == 0, err.getvalue()[-2000:]
    return {"out": out, "err": err.getvalue(),
            "done": {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/done.json")}}


@pytest.mark.slow
def test_progress_lines_count_the_stages_in_order(first_run) -> None:
    lines = stage_lines(first_run["err"])
    n = len(PLAN)
    assert len(lines) == 2 * n, lines
    for k, name in enumerate(PLAN, start=1):
        start, end = lines[2 * k - 2], lines[2 * k - 1]
        assert start == f"stage {k}/{n} {name} ..."
        left = r", about \d+:\d\d left" if k < n else ""
        assert re.fullmatch(rf"stage {k}/{n} {name} done in \d+\.\d s \(elapsed \d+:\d\d{left}\)", end), end


@pytest.mark.slow
def test_bench_options_reach_done_json_and_report(first_run) -> None:
    out = first_run["out"]
    bench = json.loads((out / "bench" / "done.json").read_text())
    assert bench["settings"] == {"seq_len": 12, "batch_sizes": [1, 3], "repeats": 2, "device": "cpu",
                                 "threads": OTHER_THREADS, "dtype": "bf16"}
    assert (bench["dtype"], bench["threads"], bench["seq_len"]) == ("bf16", OTHER_THREADS, 12)
    assert [b["batch_size"] for b in bench["batches"]] == [1, 3] and bench["batches"][0]["repeats"] == 2
    report = json.loads((out / "report.json").read_text())
    speed = report["speedup"]
    assert (speed["device"], speed["dtype"], speed["threads"], speed["seq_len"]) == ("cpu", "bf16", OTHER_THREADS, 12)
    assert speed["device_name"] and set(speed["measured_iqr_by_batch"]) == {"1", "3"}
    assert speed["measured"] == speed["measured_by_batch"]["3"]  # the largest batch size is the headline
    assert not [k for k in json.loads((out / "run_config.json").read_text()) if k.startswith("bench")]  # not pinned
    assert "in bf16" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_rerun_says_every_stage_is_done(inputs, first_run, capsys) -> None:
    assert main(prune_line(inputs, first_run["out"], *BENCH)) == 0
    n = len(PLAN)
    assert stage_lines(capsys.readouterr().err) == [
        f"stage {k}/{n} {name} already done (skipped)" for k, name in enumerate(PLAN, start=1)]


@pytest.mark.slow
def test_other_bench_options_measure_the_bench_stage_again_only(inputs, first_run, capsys) -> None:
    out = first_run["out"]
    # an older run_config.json that still pinned some bench options does not block the re-run
    pinned = json.loads((out / "run_config.json").read_text())
    (out / "run_config.json").write_text(json.dumps(pinned | {"bench_seq_len": 99, "bench_batch_sizes": [7]}))
    other = ["--bench-seq-len", "8", "--bench-batch-sizes", "2", "--bench-repeats", "1", "--no-progress"]
    assert main(prune_line(inputs, out, *other)) == 0
    assert stage_lines(capsys.readouterr().err) == []  # --no-progress: no stage lines
    now = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/done.json")}
    assert {k: v for k, v in now.items() if k != "bench"} == {k: v for k, v in first_run["done"].items()
                                                              if k != "bench"}
    assert now["bench"] != first_run["done"]["bench"]
    bench = json.loads((out / "bench" / "done.json").read_text())
    assert bench["settings"] == {"seq_len": 8, "batch_sizes": [2], "repeats": 1, "device": "cpu", "threads": None,
                                 "dtype": "fp32"}
    report = json.loads((out / "report.json").read_text())
    assert report["speedup"]["dtype"] == "fp32" and list(report["speedup"]["measured_by_batch"]) == ["2"]
    assert report["speedup"]["threads"] == torch.get_num_threads()  # torch's choice, reported


@pytest.mark.parametrize(("flags", "words"), [
    (["--bench-device", "cuda"], "--bench-device 'cuda': CUDA is not available on this machine"),
    (["--bench-device", "tpu7"], "--bench-device 'tpu7' is not a device name; use cpu, cuda or cuda:N"),
    (["--bench-threads", "0"], "--bench-threads 0 must be a whole number >= 1"),
    (["--bench-batch-sizes", "1,,2"], "--bench-batch-sizes takes comma-separated whole numbers"),
    (["--bench-batch-sizes", "0"], "every batch size must be >= 1"),
    (["--bench-seq-len", "0"], "--bench-seq-len 0 must be a whole number >= 1"),
    (["--bench-seq-len", "65"], "--bench-seq-len 65 is longer than the model's 64 positions"),
    (["--bench-repeats", "0"], "--bench-repeats 0 must be a whole number >= 1"),
])
def test_bad_bench_options_are_one_error_before_any_work(inputs, tmp_path, capsys, flags, words) -> None:
    if torch.cuda.is_available() and "cuda" in flags:
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert main(prune_line(inputs, out, "--no-progress", *flags)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("blockprune")]
    assert len(lines) == 1 and lines[0].startswith("blockprune prune: error: ") and words in lines[0], err
    assert "Traceback" not in err and not out.exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------------ the plan
def test_the_stage_table_lists_fill_only_for_filled_presets() -> None:
    assert [s.name for s in STAGES if s.when(RunOptions(preset="struct"))] == PLAN
    assert [s.name for s in STAGES if s.when(RunOptions(preset="hybrid-filled"))] == [
        "teacher", "prune", "shrink", "fill", "evaluate", "bench"]


def test_costs_follow_epochs_times_examples() -> None:
    costs = {s.name: s.cost(RunOptions(epochs=2, teacher_epochs=1, fill_epochs=3), 1000, 300) for s in STAGES}
    assert costs["teacher"] == pytest.approx(1000 + 100) and costs["prune"] == pytest.approx(1.5 * 2 * 1000)
    assert costs["fill"] == pytest.approx(4 / 3 * 3 * 1000) and costs["evaluate"] == pytest.approx(100)
    given = {s.name: s.cost(RunOptions(teacher="t"), 1000, 300) for s in STAGES}
    assert given["teacher"] == pytest.approx(100)  # --teacher: only its evaluation


def test_the_estimate_scales_the_rate_of_the_stages_run_so_far(capsys) -> None:
    clock = StageClock([("a", 10.0), ("b", 30.0), ("c", 20.0)], enabled=True)
    clock.skipped("a")
    clock.start("b")
    clock.done("b", 60.0)  # 2 s per unit of cost -> c: about 40 s
    clock.start("c")
    clock.done("c", 50.0)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "stage 1/3 a already done (skipped)" and lines[1] == "stage 2/3 b ..."
    assert re.fullmatch(r"stage 2/3 b done in 60\.0 s \(elapsed 0:\d\d, about 0:40 left\)", lines[2])
    assert re.fullmatch(r"stage 3/3 c done in 50\.0 s \(elapsed 0:\d\d\)", lines[4])
    assert clock_time(3 * 3600 + 62) == "3:01:02" and clock_time(62.4) == "1:02"
    StageClock([("a", 1.0)], enabled=False).start("a")
    assert capsys.readouterr().err == ""
