"""The two latency benchmarks (benchmarks/latency_targets.py, benchmarks/train_large_plan.py) on a tiny BERT:
the rows they record are the planner's, timed for real (no speed asserted), and a refused plan is recorded with
the planner's words instead of stopping the run. The latency table comes from a fake device (test_plan_measured)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import transformers
from test_plan_measured import HEADS, FakeTimer, config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import latency_targets  # noqa: E402
import train_large_plan  # noqa: E402

from blockprune.deploy import latency_model as lm  # noqa: E402


@pytest.fixture
def bert_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(lm, "_DeviceTimer", lambda *args: FakeTimer())
    path = tmp_path / "bert"
    long_config().save_pretrained(path)
    return path


def long_config(**changes):
    """:func:`config` with room for the benchmarks' 128 tokens."""
    bert = config()
    for key, value in {"max_position_embeddings": 160, **changes}.items():
        setattr(bert, key, value)
    return bert


def test_latency_targets_records_plan_prediction_and_measurement(bert_dir, tmp_path):
    argv = ["--model", str(bert_dir), "--targets", "2,50", "--cuts", "0,0.25", "--repeats", "2", "--threads", "1",
            "--passes", "2",
            "--latency-cache", str(tmp_path / "cache"), "--results", str(tmp_path / "out")]
    assert latency_targets.main(argv) == 0
    record = json.loads((tmp_path / "out" / "latency_targets.json").read_text())
    rows = {(r["target"], r["hidden_sparsity"], r["speed_model"]): r for r in record["rows"]}
    assert len(rows) == 12 and record["threads"] == 1 and record["machine"]["cpu"]
    hit = rows[(2.0, 0.0, "table")]
    assert hit["predicted"] >= 2.0 and hit["heads"] < HEADS // 2  # the table's plan, not the FLOPs one
    assert rows[(2.0, 0.0, "flops")]["heads"] == HEADS // 2 and rows[(2.0, 0.0, "flops")]["predicted"] is None
    assert hit["error_b32"] == pytest.approx(hit["measured_b32"] / 2.0 - 1.0) and len(hit["measured_b32_passes"]) == 2
    assert hit["measured_b32"] == pytest.approx(sum(hit["measured_b32_passes"]) / 2)  # the median of two
    assert record["passes"] == 2
    assert rows[(2.0, 0.25, "table")]["hidden"] == 48 and "fit_steps" not in rows[(2.0, 0.25, "table")]
    fitted = rows[(2.0, 0.0, "fitted")]  # the fit times the tiny model for real: its steps, not their speed
    assert fitted["fit_steps"][0]["heads"] == hit["heads"] and 1 <= len(fitted["fit_steps"]) <= 6
    assert (fitted["heads"], fitted["ffn"]) in {(s["heads"], s["ffn"]) for s in fitted["fit_steps"]}
    assert "beyond the table" in rows[(50.0, 0.0, "table")]["error"]  # recorded, the run went on
    text = (tmp_path / "out" / "latency_targets.md").read_text()
    assert "| 2.0x | 25% | table |" in text and "| 2.0x | 0% | fitted |" in text and "beyond the table" in text


def test_train_large_plan_plans_each_cut_in_flops_and_on_the_table(bert_dir, tmp_path):
    out = train_large_plan.planned(bert_dir, 2.0, threads=1, cache=tmp_path / "cache")
    assert set(out["flops"]) == set(out["measured"]) == {"0.0", "0.25", "0.5"}
    assert out["flops"]["0.0"]["heads"] == [HEADS // 2] * 3 and out["flops"]["0.25"]["hidden"] == 48
    assert out["measured"]["0.0"]["predicted_speedup"] >= 2.0
    assert out["measured"]["0.5"]["hidden"] == 32


def test_train_large_plan_times_fine_tuning_and_distillation_steps():
    student = transformers.BertForSequenceClassification(long_config(vocab_size=64))
    teacher = transformers.BertForSequenceClassification(long_config())
    tuned, distilled = (train_large_plan.step_seconds(student, t, steps=2) for t in (None, teacher))
    for timing in (tuned, distilled):
        assert timing["steps"] == 2 and 0 < timing["min_s"] <= timing["median_s"] <= timing["max_s"]
    assert not student.training  # left in eval mode, as found by the timing that follows
