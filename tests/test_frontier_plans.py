"""The frontier's measured-latency points (benchmarks/frontier_plans.py): struct's shape at 4x and above is planned
once on measured latency, pinned in the runs folder, and every method that copies struct's shapes trains to it.

The latency table comes from test_plan_measured's fake device and the fit from a fake shape timer 15% slower than
the table, so the pinned shape is the fitted one, not the table's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import transformers
from test_plan_measured import FakeTimer, config, device_speedup

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import frontier_plans  # noqa: E402
import frontier_runner as runner  # noqa: E402
import frontier_spec as spec  # noqa: E402

from blockprune.deploy import latency_model as lm  # noqa: E402
from blockprune.deploy import plan as plan_module  # noqa: E402


@pytest.fixture
def fake_device(tmp_path, monkeypatch):
    """The fake latency device, a shape timer 15% slower than its table, and a latency cache under tmp_path; counts
    the fits."""
    fits = []

    def shape_timer(*args, **kwargs):
        fits.append(args)
        return device_speedup(0.85)

    monkeypatch.setattr(lm, "_DeviceTimer", lambda *args: FakeTimer())
    monkeypatch.setattr(plan_module, "device_shape_timer", shape_timer)
    monkeypatch.setattr(frontier_plans, "LATENCY_CACHE", tmp_path / "cache")
    return fits


@pytest.fixture
def teacher(tmp_path):
    path = tmp_path / "teacher"
    transformers.BertForSequenceClassification(config()).save_pretrained(path)
    return path


def point(name, task="20newsgroups"):
    return spec.by_name(spec.points(task))[name]


def at_2x(name):
    """The 4x point ``name`` declared at 2x: the fake device's table reaches 3.7x at most."""
    import dataclasses

    return dataclasses.replace(point(name), name=name.replace("4.0", "2.0"), target=2.0)


def test_struct_and_the_methods_that_copy_its_shapes_aim_at_measured_speed_from_4x():
    for task in spec.TASKS.values():
        for p in spec.points(task.name):
            copies_struct = p.method in ("torch-pruning", "magnitude-oneshot") or p.preset == "struct"
            expected = "measured" if copies_struct and p.target >= spec.HIGH else "flops"
            assert p.speed_model == expected, p.name
    assert point("bp-hybrid-filled-8.0").speed_model == "flops"  # tiles: shapes unknown before training


def test_a_measured_point_is_planned_once_pinned_and_shared_by_every_method(tmp_path, fake_device, teacher, capsys):
    runs = tmp_path / "runs"
    struct = at_2x("bp-struct-4.0")
    planned = frontier_plans.pinned_plan(runs, struct, teacher, max_length=16)
    assert planned["met"] and abs(planned["fitted"] / 2.0 - 1) <= 0.05 and len(planned["fit_steps"]) >= 2
    assert len(fake_device) == 1 and frontier_plans.plan_file(runs, struct).is_file()
    # Torch-Pruning and magnitude at the same target and cut read the same file; nothing is planned again
    for other in ("torch-pruning-4.0", "magnitude-oneshot-4.0"):
        assert frontier_plans.pinned_plan(runs, at_2x(other), teacher, 16) == planned
    assert len(fake_device) == 1
    path = frontier_plans.plan_file(runs, struct)
    path.write_text(json.dumps(planned | {"setting": planned["setting"] | {"device_name": "Another CPU"}}))
    frontier_plans.pinned_plan(runs, struct, teacher, 16)
    assert "was planned on Another CPU" in capsys.readouterr().out and len(fake_device) == 1
    cut = frontier_plans.pinned_plan(runs, at_2x("torch-pruning-hidden25-4.0"), teacher, 16)
    assert cut["hidden"] == 48 and len(fake_device) == 2  # another residual width: a plan of its own
    assert frontier_plans.read_plan(runs, at_2x("bp-struct-hidden25-ld1-4.0")) == cut

    config_ = spec.resolved_config(struct, 16, planned)
    assert config_.sparsity == pytest.approx(planned["sparsity"]) and \
        config_.attention_sparsity == pytest.approx(planned["attention_sparsity"])
    assert 1 - config_.sparsity == pytest.approx(planned["ffn"] / 256)

    from blockprune.cli_parser import build_parser, key_values

    command = runner.blockprune_command(struct, Path("out"), teacher, 2.0, 42, [], None, planned)
    args = build_parser().parse_args(command[1:])
    assert args.target_speedup is None and args.sparsity == planned["sparsity"]
    assert key_values(args.set, "--set") == struct.settings | {"attention_sparsity": planned["attention_sparsity"]}


def test_the_in_process_baselines_train_to_the_pinned_sparsities(tmp_path, monkeypatch):
    import frontier_methods as fm
    import frontier_tp

    planned = {"sparsity": 0.8125, "attention_sparsity": 0.75}
    got = {}
    monkeypatch.setattr(frontier_tp, "torch_pruning_baseline", lambda *a: got.setdefault("tp", a) and {"dev": 1})
    monkeypatch.setattr(fm, "magnitude_oneshot", lambda *a: got.setdefault("mag", a) and {"dev": 1})
    ctx = {"epochs": 2.0, "dev": "dev", "test": "test", "tokenizer": "tok"}
    for name in ("torch-pruning-8.0", "magnitude-oneshot-8.0"):
        runner.in_process(point(name, "rotten-tomatoes"), 42, tmp_path / "run", tmp_path, Path("teacher"), ctx,
                          planned)
    for key in ("tp", "mag"):
        settings, sparsity = got[key][-2:]
        assert sparsity == 0.8125 and settings["attention_sparsity"] == 0.75
    recorded = runner.in_process_config(point("torch-pruning-8.0"), 2.0, 42, 128, planned)["pruning"]
    assert recorded["sparsity"] == 0.8125 and recorded["attention_sparsity"] == 0.75


def test_an_unplannable_measured_target_is_pinned_as_unreachable_and_said_so(tmp_path, fake_device, teacher):
    runs = tmp_path / "runs"
    far = spec.Point("bp-struct-50.0", "20newsgroups", "blockprune", 50.0, "struct", preset="struct",
                     settings=dict(spec.STRUCT), speed_model="measured")
    assert spec.unreachable(far, 16, runs) is None  # not planned yet: reachable until the plan says otherwise
    planned = frontier_plans.pinned_plan(runs, far, teacher, 16)
    assert "beyond the table" in planned["error"]
    assert spec.unreachable(far, 16, runs) == planned["error"]
    assert json.loads(frontier_plans.plan_file(runs, far).read_text()) == planned


def test_pin_plans_plans_each_target_and_cut_once_on_the_pinned_reference(tmp_path, monkeypatch, capsys):
    import frontier

    calls = []

    def fake(runs, p, teacher, max_length):
        calls.append((frontier_plans.plan_file(runs, p).name, teacher, max_length))
        return {"heads": 2, "ffn": 144, "hidden": None, "predicted": 8.3, "fitted": 8.1, "met": True}

    monkeypatch.setattr(frontier_plans, "pinned_plan", fake)
    assert frontier.main(["--task", "20newsgroups", "--pin-plans", "--runs-dir", str(tmp_path)]) is None
    task = spec.TASKS["20newsgroups"]
    expected = {f"struct-{t}-hidden{c}.json" for t in task.targets if t >= spec.HIGH for c in (0.0, 0.25)}
    assert {name for name, _, _ in calls} == expected and len(calls) == len(expected)  # once each
    assert all(teacher == task.pin and length == 128 for _, teacher, length in calls)
    assert "2 heads, 144 neurons a layer, width full: predicted 8.30x, timed 8.10x" in capsys.readouterr().out
