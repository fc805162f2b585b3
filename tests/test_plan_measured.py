"""`blockprune plan --speed-model measured`: a speedup target planned on a latency table (issue 35 item 4).

No test times a model for its table: a fake timer gives every probe a known cost in which attention heads and a
fixed per-layer cost weigh far more than their FLOPs, so the measured plan must cut deeper than the FLOPs plan.
Only ``--measure`` in the CLI test times anything (a tiny model, no speed assertions).
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from tiny import tiny_config

from blockprune import Pruner
from blockprune.cli import main
from blockprune.deploy import latency_model as lm
from blockprune.deploy import plan as plan_module
from blockprune.deploy.counts import ffn_per_layer, heads_per_layer
from blockprune.deploy.latency_fit import MAX_STEPS, fit_budget
from blockprune.deploy.plan import PlanError, plan, to_text
from blockprune.engine.config import PruningConfig
from blockprune.engine.masks import kept_count
from blockprune.surgery.shrink import shrink

LAYERS, HEADS, FFN = 3, 8, 256
REAL_SHAPE_TIMER = plan_module.device_shape_timer  # the autouse fixture below replaces it in every test


def config():
    """A BERT with interior grid points: 3 layers, 8 heads of 8 dims, FFN 256, 64 positions."""
    return tiny_config("bert", hidden_size=64, num_attention_heads=HEADS, intermediate_size=FFN,
                       num_hidden_layers=LAYERS)


def layer_ms(heads: float, ffn: float, hidden: float) -> float:
    """The fake device: a large fixed cost, a head costs 0.2 ms (far above its FLOPs share), a neuron 0.0005 ms."""
    return (0.3 + 0.2 * heads + 0.0005 * ffn) * hidden / 64


def stem_ms(hidden: float) -> float:
    return 0.2 * hidden / 64


def model_ms(heads: int, ffn: int) -> float:
    return stem_ms(64) + LAYERS * layer_ms(heads, ffn, 64)


class FakeTimer:
    """A :data:`lm.Timer` costing every probe by :func:`layer_ms` and :func:`stem_ms`; counts the passes timed."""

    def __init__(self):
        self.passes = 0

    def cost(self, probe: lm.Probe) -> float:
        if probe.kind == "layer":
            return layer_ms(probe.heads, probe.ffn, probe.hidden)
        if probe.kind == "stem":
            return stem_ms(probe.hidden) + layer_ms(0, 0, probe.hidden)
        return model_ms(HEADS, FFN)

    def __call__(self, probes):
        def run(i: int) -> float:
            self.passes += 1
            return self.cost(probes[i])

        return run


@pytest.fixture
def model_dir(tmp_path):
    path = tmp_path / "bert"
    config().save_pretrained(path)
    return str(path)


def device_speedup(bias: float = 1.0):
    """A fake :data:`~blockprune.deploy.latency_fit.ShapeTimer`: the fake device's true speedup of a uniform shape
    (every layer and the stem scale with the residual width), times ``bias`` (below 1: slower than the table)."""
    def timed(heads: int, ffn: int, width: int) -> float:
        return bias * model_ms(HEADS, FFN) / (model_ms(heads, ffn) * width / 64)

    return timed


@pytest.fixture(autouse=True)
def no_shape_timing(monkeypatch):
    """The fit's device: the fake one, exact (tests that want another bias patch their own)."""
    monkeypatch.setattr(plan_module, "device_shape_timer", lambda *args, **kwargs: device_speedup())


def measured(model_dir, tmp_path, target=2.0, timer=None, fit=False, **kwargs):
    """The plan on the table alone (``fit=False``, what the table tests check) unless ``fit`` is asked for."""
    return plan(model_dir, "struct", target, max_length=16, speed_model="measured", setting=lm.Setting(batch_size=2),
                latency_cache=tmp_path / "cache", timer=timer or FakeTimer(), log=lambda line: None, fit=fit, **kwargs)


def test_measured_plan_meets_the_target_where_the_flops_plan_falls_short(model_dir, tmp_path):
    flops = plan(model_dir, "struct", 2.0, max_length=16)
    result = measured(model_dir, tmp_path)
    assert flops["speed_model"] == "flops" and flops["heads"] == [4] * 3 and flops["ffn"] == [128] * 3
    assert result["speed_model"] == "measured"
    h, f = result["heads"][0], result["ffn"][0]
    assert result["heads"] == [h] * 3 and result["ffn"] == [f] * 3 and f == 16 * round(FFN * h / HEADS / 16)
    truth = model_ms(HEADS, FFN) / model_ms(h, f)
    assert result["predicted_speedup"] >= 2.0 and result["predicted_speedup"] == pytest.approx(truth, rel=1e-6)
    assert model_ms(HEADS, FFN) / model_ms(4, 128) < 2.0  # on this device the FLOPs shapes miss 2x ...
    assert h < 4 and result["theoretical_speedup"] > flops["theoretical_speedup"]  # ... so it cuts deeper
    assert model_ms(HEADS, FFN) / model_ms(h + 1, 16 * round(FFN * (h + 1) / HEADS / 16)) < 2.0  # and no deeper
    assert result["attention_sparsity"] == pytest.approx(1 - h / HEADS)
    assert result["sparsity"] == pytest.approx(1 - f / FFN)
    table = result["latency_table"]
    assert table["batch_size"] == 2 and table["seq_len"] == 16 and table["calibration"] == pytest.approx(1.0)
    assert table["model_ms"] == pytest.approx(model_ms(HEADS, FFN)) and table["cache"].endswith(".json")


def test_the_sparsities_round_trip_to_the_planned_shapes_through_the_pruner(model_dir, tmp_path):
    result = measured(model_dir, tmp_path)
    pruning = PruningConfig.preset("struct", sparsity=result["sparsity"], attention_sparsity=result["attention_sparsity"])
    model = transformers.AutoModel.from_config(config()).eval()
    pruner = Pruner(model, pruning)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for group in pruner.groups:
            group.scores.copy_(torch.randn(group.scores.shape, generator=generator))
    pruner.step(10, 10)
    pruner.finalize()
    shrink(model, 16)
    assert heads_per_layer(model) == result["heads"] and ffn_per_layer(model) == result["ffn"]


@pytest.mark.parametrize("heads", [4, 8, 12, 16, 32])
@pytest.mark.parametrize("ffn", [64, 256, 1536, 3072, 4096, 11008])
def test_every_even_shape_round_trips_through_kept_count(heads, ffn):
    for h in range(1, heads + 1):
        f = min(ffn, 16 * round(ffn * h / heads / 16))
        assert kept_count(heads, 1.0 - (1.0 - h / heads)) == h
        assert kept_count(ffn, 1.0 - (1.0 - f / ffn)) == f


def test_tiled_presets_and_sparsity_targets_are_refused(model_dir, tmp_path):
    for preset in ("hybrid", "block"):
        with pytest.raises(PlanError, match=f"whole heads and neurons .*--preset {preset} prunes tiles"):
            plan(model_dir, preset, 2.0, max_length=16, speed_model="measured", latency_cache=tmp_path,
                 timer=FakeTimer(), log=lambda line: None)
    with pytest.raises(PlanError, match="plans a --target-speedup, not a --sparsity"):
        plan(model_dir, "struct", None, 0.5, speed_model="measured", timer=FakeTimer())
    with pytest.raises(PlanError, match="--speed-model 'latency' is unknown"):
        plan(model_dir, "struct", 2.0, speed_model="latency")
    with pytest.raises(PlanError, match="beyond the table"):
        measured(model_dir, tmp_path, target=50.0)


def test_cli_prints_the_three_numbers_and_reuses_the_cache(model_dir, tmp_path, monkeypatch, capsys):
    fakes = []

    def device_timer(*args):
        fakes.append(FakeTimer())
        return fakes[-1]

    monkeypatch.setattr(lm, "_DeviceTimer", device_timer)
    argv = ["plan", "--model", model_dir, "--target-speedup", "2", "--max-length", "16", "--speed-model", "measured",
            "--latency-cache", str(tmp_path / "cache"), "--batch-sizes", "1,2", "--threads", "1"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert fakes[0].passes and "cached in" in err
    line = next(x for x in out.splitlines() if x.startswith("target 2.0x"))
    assert "| predicted " in line and "(measured table, b 2, 1 threads)" in line and "| theoretical (FLOPs) " in line
    assert main([*argv, "--measure", "--repeats", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(fakes) == 1  # the second call reads the cached table: nothing timed for it, only the fit's shape
    assert err and all(x.startswith("[blockprune] latency fit: ") for x in err.splitlines())
    line = next(x for x in out.splitlines() if x.startswith("target 2.0x"))
    assert "| measured " in line and line.endswith("(b 2)")
    assert "fitted on the device: measured 2.06x, within 5% of the target" in out
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["speed_model"] == "measured" and result["predicted_speedup"] >= 2.0 and result["latency_fit"]["met"]
    assert main([*argv, "--json", "--table-only"]) == 0  # the table's shape, nothing timed
    out, err = capsys.readouterr()
    assert "latency_fit" not in json.loads(out) and err == ""


@pytest.mark.parametrize(("args", "needle"), [
    (["--threads", "0"], "--threads 0 must be a whole number"),
    (["--preset", "hybrid"], "--speed-model measured plans whole heads and neurons"),
    (["--sparsity", "0.5"], "plans a --target-speedup"),
])
def test_cli_errors_are_one_line(model_dir, tmp_path, capsys, args, needle):
    argv = ["plan", "--model", model_dir, "--speed-model", "measured", "--latency-cache", str(tmp_path), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockprune plan: error: ") and needle in err and "\n" not in err


@pytest.fixture
def classifier_dir(tmp_path):
    """:func:`config`'s BERT as a classifier with the embedded tokenizer: what ``prune`` fine-tunes."""
    from blockprune.tasks import embedded_model_path

    path = tmp_path / "classifier"
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(embedded_model_path())
    bert = config()
    bert.vocab_size = len(tokenizer)
    transformers.BertForSequenceClassification(bert).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def prune_argv(model, tmp_path, out, *extra):
    from tiny import write_review_csvs

    data = write_review_csvs(tmp_path / "data", {"train.csv": 48, "dev.csv": 16}, ["great", "sharp"], ["dull", "flat"])
    return ["prune", "--model", str(model), "--train-file", str(data / "train.csv"), "--validation-file",
            str(data / "dev.csv"), "--text-column", "review", "--label-column", "sentiment", "--epochs", "1",
            "--teacher-epochs", "1", "--batch-size", "16", "--max-length", "16", "--bench-seq-len", "16",
            "--bench-batch-sizes", "1,2", "--bench-repeats", "2", "--bench-threads", "1", "--no-progress",
            "--speed-model", "measured", "--latency-cache", str(tmp_path / "cache"), "--output-dir", str(out), *extra]


def test_prune_trains_to_the_shapes_the_latency_table_priced_and_reports_all_three(classifier_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    """``prune --speed-model measured``: the run's sparsities are the measured plan's (at the bench's batch and
    length), the shrunk model has exactly its shapes, and report.json/.md and the closing line put the target,
    the prediction and the measurement side by side."""
    monkeypatch.setattr(lm, "_DeviceTimer", lambda *args: FakeTimer())
    expected = plan(str(classifier_dir), "struct", 2.0, max_length=16, speed_model="measured",
                    setting=lm.Setting(threads=1, batch_size=2), latency_cache=tmp_path / "cache", timer=FakeTimer(),
                    log=lambda line: None)
    assert expected["heads"][0] < HEADS // 2  # deeper than the FLOPs plan (4 of 8): the table decided
    out = tmp_path / "run"
    assert main(prune_argv(classifier_dir, tmp_path, out, "--target-speedup", "2")) == 0
    closing = capsys.readouterr().out
    assert f"target 2x, predicted {expected['predicted_speedup']:.2f}x by the latency table" in closing
    report = json.loads((out / "report.json").read_text())
    target = report["target"]
    assert target["speed_model"] == "measured" and target["value"] == 2.0 and target["batch_size"] == 2
    assert target["predicted"] == pytest.approx(expected["predicted_speedup"])
    assert target["achieved"] == report["speedup"]["measured_by_batch"]["2"]  # measured at the table's batch
    assert report["pruning"]["config"]["attention_sparsity"] == pytest.approx(expected["attention_sparsity"])
    assert report["heads_kept"] == expected["heads"] and report["ffn_width"] == expected["ffn"]
    assert report["plan"]["latency_table"]["threads"] == 1
    text = (out / "report.md").read_text()
    assert "Predicted (latency table)" in text and "measured latency, batch 2, 16 tokens" in text

    # resumed without its latency cache (cleared, or another machine): the pinned plan, nothing timed again
    import shutil

    shutil.rmtree(tmp_path / "cache")

    def no_timing(*args):
        raise AssertionError("a resumed run must not measure a latency table")

    monkeypatch.setattr(lm, "_DeviceTimer", no_timing)
    monkeypatch.setattr(plan_module, "device_shape_timer", no_timing)  # nor fit its shape again
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")}
    assert main(prune_argv(classifier_dir, tmp_path, out, "--target-speedup", "2")) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")} == done
    assert json.loads((out / "report.json").read_text())["target"]["predicted"] == target["predicted"]

    # another target in this folder: refused (its options differ), and the folder's plan stays as it was
    monkeypatch.setattr(lm, "_DeviceTimer", lambda *args: FakeTimer())
    monkeypatch.setattr(plan_module, "device_shape_timer", lambda *args, **kwargs: device_speedup())
    pinned = (out / "measured_plan.json").read_text()
    assert json.loads(pinned)["asked"]["target_speedup"] == 2.0
    assert main(prune_argv(classifier_dir, tmp_path, out, "--target-speedup", "1.5")) == 2
    assert "target_speedup" in capsys.readouterr().err and (out / "measured_plan.json").read_text() == pinned
    other = tmp_path / "flops-run"  # nor is a plan written into a folder made by a run of other options
    other.mkdir()
    (other / "run_config.json").write_text(json.dumps({"preset": "hybrid"}))
    assert main(prune_argv(classifier_dir, tmp_path, other, "--target-speedup", "2")) == 2
    assert not (other / "measured_plan.json").exists()


@pytest.mark.parametrize(("extra", "needle"), [
    (["--sparsity", "0.5"], "--speed-model measured spends a --target-speedup"),
    (["--target-speedup", "2", "--preset", "hybrid"], "plans whole heads and neurons"),
    (["--target-speedup", "50"], "beyond the table"),
])
def test_prune_refuses_what_the_latency_table_cannot_plan_before_any_training(classifier_dir, tmp_path, monkeypatch,
                                                                              capsys, extra, needle):
    monkeypatch.setattr(lm, "_DeviceTimer", lambda *args: FakeTimer())
    out = tmp_path / "run"
    assert main(prune_argv(classifier_dir, tmp_path, out, *extra)) == 2
    *progress, error = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("blockprune prune: error: ") and needle in error
    assert all(line.startswith(("latency table", "[blockprune] latency fit: ")) for line in progress)  # timing
    assert not (out / "teacher").exists()  # refused before the teacher stage started


def test_a_residual_cut_is_planned_at_the_width_the_table_timed(model_dir, tmp_path):
    """hidden_sparsity 0.25 keeps 48 of 64 dimensions, a width the table timed: every layer and the stem cost 3/4
    there (the fake device), so 2x keeps more heads than at full width; a width the table did not time is refused."""
    full = measured(model_dir, tmp_path)
    cut = measured(model_dir, tmp_path, overrides={"hidden_sparsity": 0.25})
    assert cut["hidden"]["after"] == 48 and cut["heads"][0] > full["heads"][0]
    h, f = cut["heads"][0], cut["ffn"][0]
    truth = model_ms(HEADS, FFN) / (0.75 * model_ms(h, f))
    assert cut["predicted_speedup"] >= 2.0 and cut["predicted_speedup"] == pytest.approx(truth, rel=1e-6)
    text = to_text(cut)
    assert "hidden 64 \u2192 48" in text and "speedup split" not in text  # the FLOPs split would not be the table's
    with pytest.raises(PlanError, match=r"keeps 58 residual dimensions, a width the latency table did not time .*"
                                        r"choose hidden_sparsity among \[0.25, 0.5, 0.75\]"):
        measured(model_dir, tmp_path, overrides={"hidden_sparsity": 0.1})


# ------------------------------------------------------------------------------------------ the fit on the device
def test_the_fit_corrects_a_table_that_is_optimistic_until_the_model_measures_within_5_percent(model_dir, tmp_path):
    """The device runs every shape 15% slower than the table predicts: the table's shape measures short of 2x, so
    the fit keeps the heads, narrows the FFN by the correction and lands within 5%; the plan is that shape."""
    table_only = measured(model_dir, tmp_path)
    result = measured(model_dir, tmp_path, fit=True, shape_timer=device_speedup(0.85))
    fit = result["latency_fit"]
    first, chosen = fit["steps"][0], fit["steps"][-1]
    assert (first["heads"], first["ffn"]) == (table_only["heads"][0], table_only["ffn"][0])
    assert first["measured"] == pytest.approx(0.85 * table_only["predicted_speedup"]) and first["measured"] < 1.9
    assert fit["met"] and abs(fit["measured_speedup"] / 2.0 - 1) <= 0.05 and 2 <= len(fit["steps"]) <= MAX_STEPS
    assert (result["heads"][0], result["ffn"][0]) == (chosen["heads"], chosen["ffn"]) == \
        (result["heads"][-1], result["ffn"][-1])
    assert result["predicted_speedup"] == pytest.approx(chosen["predicted"])  # the table's number, not the fit's
    assert result["attention_sparsity"] == pytest.approx(1 - chosen["heads"] / HEADS)
    assert result["sparsity"] == pytest.approx(1 - chosen["ffn"] / FFN)
    text = to_text(result)
    assert f"fitted on the device: measured {fit['measured_speedup']:.2f}x, within 5% of the target" in text


@pytest.mark.parametrize("target", [1.5, 2.0, 2.4])
def test_the_fit_lands_within_5_percent_when_the_error_depends_on_the_shape(model_dir, tmp_path, target):
    """A device whose error grows as shapes shrink (few heads: 35% slower than the table, all heads: 5%)."""
    def uneven(heads, ffn, width):
        return (0.65 + 0.3 * heads / HEADS) * device_speedup()(heads, ffn, width)

    fit = measured(model_dir, tmp_path, target=target, fit=True, shape_timer=uneven)["latency_fit"]
    assert fit["met"] and abs(fit["measured_speedup"] / target - 1) <= 0.05, fit["steps"]
    assert len({(s["heads"], s["ffn"]) for s in fit["steps"]}) == len(fit["steps"])  # never the same shape twice


def test_a_device_the_fit_cannot_move_is_reported_as_missed(model_dir, tmp_path):
    """Every shape measures 1.5x (a device bound by something else): the fit stops, says it missed, keeps the
    closest shape."""
    calls = []

    def stuck(heads, ffn, width):
        calls.append((heads, ffn))
        return 1.5

    result = measured(model_dir, tmp_path, fit=True, shape_timer=stuck)
    fit = result["latency_fit"]
    assert not fit["met"] and fit["measured_speedup"] == 1.5 and 1 <= len(calls) <= MAX_STEPS
    assert "measured 1.50x, NOT within 5% of the target" in to_text(result)


def test_fit_budget_refuses_what_it_cannot_correct(model_dir, tmp_path):
    table = lm.latency_table(model_dir, lm.Setting(batch_size=2, seq_len=16), folder=tmp_path, timer=FakeTimer(),
                             log=lambda line: None)
    start = lm.uniform_budget(table, 2.0, even=True)
    with pytest.raises(lm.LatencyModelError, match="corrects a uniform budget"):
        fit_budget(table, 2.0, device_speedup(), start | {"heads": [1, 2, 3]})
    with pytest.raises(lm.LatencyModelError, match="tolerance 0 must lie in"):
        fit_budget(table, 2.0, device_speedup(), start, tolerance=0)


def test_the_real_shape_timer_times_the_cut_model_against_the_dense_one(model_dir):
    timed = REAL_SHAPE_TIMER(model_dir, lm.Setting(threads=1, seq_len=8, batch_size=1), repeats=2)
    assert 0 < timed(2, 64, 64) < float("inf")
    with pytest.raises(PlanError, match="cuts the residual to 64, not 48"):
        timed(2, 64, 48)


def test_prune_trains_to_the_fitted_shape(classifier_dir, tmp_path, monkeypatch, capsys):
    """Through the CLI: the device is 15% slower than the table, so the run trains to the fitted shape, and the
    report's plan carries the fit."""
    monkeypatch.setattr(lm, "_DeviceTimer", lambda *args: FakeTimer())
    monkeypatch.setattr(plan_module, "device_shape_timer", lambda *args, **kwargs: device_speedup(0.85))
    out = tmp_path / "run"
    assert main(prune_argv(classifier_dir, tmp_path, out, "--target-speedup", "2")) == 0
    report = json.loads((out / "report.json").read_text())
    fit = report["plan"]["latency_fit"]
    chosen = next(s for s in fit["steps"] if s["measured"] == fit["measured_speedup"])
    assert fit["met"] and len(fit["steps"]) >= 2
    assert report["heads_kept"] == [chosen["heads"]] * LAYERS and report["ffn_width"] == [chosen["ffn"]] * LAYERS
    assert report["target"]["fitted"] == fit["measured_speedup"] and report["target"]["fit_met"] is True
    captured = capsys.readouterr()
    assert "[blockprune] latency fit: " in captured.err
    assert f"by the latency table, {fit['measured_speedup']:.2f}x timed before training; " in captured.out
    assert "Timed before training (fit)" in (out / "report.md").read_text()


def test_a_target_the_table_calls_beyond_is_fitted_from_the_fastest_shape_and_kept_if_the_device_reaches_it(
        model_dir, tmp_path):
    """The table's best even shape on the fake device is 3.59x; a device 10% faster than the table reaches 3.8x
    with the fastest even shape (1 head, 32 neurons), so the plan is kept; 10% slower, it is refused, naming both."""
    with pytest.raises(PlanError, match="beyond the table"):
        measured(model_dir, tmp_path, target=3.8)  # the table alone
    result = measured(model_dir, tmp_path, target=3.8, fit=True, shape_timer=device_speedup(1.1))
    fit = result["latency_fit"]
    assert fit["met"] and fit["steps"][0]["heads"] == 1 and fit["steps"][0]["ffn"] == 32
    assert result["heads"] == [1] * LAYERS
    with pytest.raises(PlanError, match=r"beyond the table: uniform shapes reach at most 3.59x.*; the fastest "
                                        r"uniform shapes timed on this device reach 3.2\dx"):
        measured(model_dir, tmp_path, target=3.8, fit=True, shape_timer=device_speedup(0.9))


def test_when_noise_sends_the_fit_back_to_a_timed_shape_it_bisects_the_bracket(tmp_path):
    """A device with a jump at 96 neurons (below: 20% faster than the table, from there: 10% slower): the secant
    steps overshoot both ways and come back to timed widths, so the fit bisects the widths that bracket 3.3x; where
    nothing lands within 5%, it keeps the slowest shape that meets the target, never one short of it."""
    path = tmp_path / "bert"
    config().save_pretrained(path)
    table = lm.latency_table(str(path), lm.Setting(batch_size=2, seq_len=16), folder=tmp_path, timer=FakeTimer(),
                             log=lambda line: None)

    def jumpy(heads, ffn, width):
        return device_speedup(1.2 if ffn < 96 else 0.9)(heads, ffn, width)

    start = lm.shape_budget(table, "uniform", 3.3, [1] * LAYERS, [128] * LAYERS, 64)
    fit = fit_budget(table, 3.3, jumpy, start, log=lambda line: None)["fit"]
    widths = [s["ffn"] for s in fit["steps"]]
    assert len(widths) == len(set(widths)) and {64, 96} & set(widths)  # a midpoint of a bracket was timed
    assert not fit["met"] and fit["measured_speedup"] >= 3.3
    assert fit["measured_speedup"] == min(s["measured"] for s in fit["steps"] if s["measured"] >= 3.3)
