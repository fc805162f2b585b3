"""The frontier benchmark's baselines (benchmarks/): layer dropping, the torch-pruning peer, carried records."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import transformers
from tiny import FFN, HEADS, HIDDEN, LAYERS, save_tiny_bert

from blockprune import load_pruned, save_pruned

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import frontier  # noqa: E402
import frontier_methods as fm  # noqa: E402
import frontier_tp  # noqa: E402


def test_kept_layers_are_evenly_spaced_and_start_at_the_first():
    assert fm.kept_layers(6, 3) == [0, 2, 4]
    assert fm.kept_layers(6, 2) == [0, 3]
    assert fm.kept_layers(6, 4) == [0, 1, 3, 4]


def test_drop_layers_keeps_the_chosen_layers_and_the_config_follows(tmp_path):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(save_tiny_bert(tmp_path / "m")).eval()
    second = model.bert.encoder.layer[1]
    fm.drop_layers(model, [1])
    assert model.config.num_hidden_layers == 1 and model.bert.encoder.layer[0] is second
    logits = model(input_ids=torch.tensor([[101, 2000, 102]])).logits
    assert logits.shape == (1, 2)


@pytest.mark.real  # the embedded reviews give the Taylor gradients
def test_torch_pruning_removes_whole_heads_and_neurons_to_the_totals_and_saves_exactly(tmp_path):
    from blockprune.tasks import load_task

    folder = save_tiny_bert(tmp_path / "m")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    task = load_task(max_train_samples=64)
    shapes = frontier_tp.prune_like_struct(model, tokenizer, task, head_ratio=0.5, ffn_ratio=0.5, seed=0)["shapes"]
    assert sum(s["heads"] for s in shapes) == LAYERS * HEADS // 2  # global: layers may differ, the total may not
    assert 0 < sum(s["ffn"] for s in shapes) <= LAYERS * FFN // 2 + LAYERS
    assert all(p.grad is None for p in model.parameters())
    for layer, shape in zip(model.bert.encoder.layer, shapes, strict=True):
        attention = layer.attention.self
        assert attention.query.out_features == attention.key.out_features == attention.value.out_features \
            == shape["heads"] * (HIDDEN // HEADS) == layer.attention.output.dense.in_features
        assert layer.output.dense.out_features == HIDDEN  # the residual stream is left alone
    batch = tokenizer(["a fine film", "dull"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        reloaded = load_pruned(save_pruned(model, tmp_path / "pruned", tokenizer)).eval()
        assert torch.equal(reloaded(**batch).logits, expected)


def test_earlier_records_are_carried_only_for_the_same_reference_and_missing_runs(tmp_path):
    import json

    earlier = [{"name": "layer-drop-3", "seed": 42, "split": "test", "reference_metric": 0.8099, "metric": 0.8},
               {"name": "layer-drop-3", "seed": 43, "split": "test", "reference_metric": 0.8099, "metric": 0.81},
               {"name": "layer-drop-3", "seed": 44, "split": "test", "reference_metric": 0.7, "metric": 0.7},
               {"name": "gone-point", "seed": 42, "split": "test", "reference_metric": 0.8099, "metric": 0.7}]
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(earlier))
    drop = {"layer-drop-3": "layer drop, 3 of 6"}
    kept = frontier.carried_records(path, {"test": 0.8099}, {("layer-drop-3", 42)}, drop)
    assert [(r["name"], r["seed"], r["carried"], r["label"]) for r in kept] == [
        ("layer-drop-3", 43, True, "layer drop, 3 of 6")]  # the plan's words for the point now
    assert frontier.carried_records(tmp_path / "absent.json", {"test": 0.8099}, set(), drop) == []


def test_with_a_pinned_reference_records_carry_by_its_sha256_whatever_machine_scored_them(tmp_path):
    import json

    earlier = [{"name": "layer-drop-3", "seed": 42, "split": "test", "reference_metric": 0.81, "metric": 0.8,
                "reference_sha256": "aaa"},  # another machine scored the same teacher one example higher
               {"name": "layer-drop-3", "seed": 43, "split": "test", "reference_metric": 0.8099, "metric": 0.8,
                "reference_sha256": "bbb"},  # another teacher
               {"name": "layer-drop-3", "seed": 44, "split": "test", "reference_metric": 0.8099, "metric": 0.8}]
    path = tmp_path / "frontier.json"
    path.write_text(json.dumps(earlier))
    kept = frontier.carried_records(path, {"test": 0.8099, "pinned": "aaa"}, set(), {"layer-drop-3": "drop"})
    assert [(r["seed"], r["reference_metric"]) for r in kept] == [(42, 0.8099)]  # Δ against this machine's score
    unpinned = frontier.carried_records(path, {"test": 0.8099}, set(), {"layer-drop-3": "drop"})
    assert [r["seed"] for r in unpinned] == [44]  # a trained reference never takes a pinned teacher's records


def test_the_pinned_reference_round_trips_in_fp16_and_refuses_weights_that_do_not_match(tmp_path, monkeypatch):
    folder = save_tiny_bert(tmp_path / "trained")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    history = [{"epoch": 1, "dev": 0.8, "test": 0.79}]
    digest = fm.pin_reference({"model": str(folder), "epoch": 1, "history": history}, tmp_path / "pin")
    scored = []
    monkeypatch.setattr(fm, "evaluate", lambda model, *_: scored.append(model) or {"dev": 0.8, "test": 0.79})
    ref = fm.pinned_reference(tmp_path / "ref", tokenizer, None, None, pin=tmp_path / "pin")
    assert ref["pinned"] == digest and ref["epoch"] == 1 and ref["history"] == history and ref["test"] == 0.79
    original = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    teacher = fm.load_classifier(Path(ref["model"]))
    for (name, want), got in zip(original.state_dict().items(), teacher.state_dict().values(), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want.half().float()), name
    assert fm.pinned_reference(tmp_path / "ref", tokenizer, None, None, pin=tmp_path / "pin") == ref
    assert len(scored) == 1  # the second call reads the folder it made
    weights = tmp_path / "pin" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-2] + b"  ")
    with pytest.raises(SystemExit, match="pinned.json says .*restore it"):
        fm.pinned_reference(tmp_path / "ref", tokenizer, None, None, pin=tmp_path / "pin")


def test_the_committed_pin_matches_its_sha256():
    import json

    meta = json.loads((fm.PIN / "pinned.json").read_text())
    assert fm.file_sha256(fm.PIN / "model.safetensors") == meta["sha256"]
    assert meta["epoch"] == max(meta["history"], key=lambda h: h["dev"])["epoch"]


def _row(name, method, acc, dev, b32, std=0.2, theoretical=None):
    return {"name": name, "method": method, "acc": acc, "std": std, "seeds": 3, "dev": dev, "b32": b32, "iqr": 0.1,
            "delta_ref": acc - 81.0, "min_efficiency": b32 / theoretical if theoretical else None}


def test_goals_pick_the_best_preset_on_dev_and_say_what_is_missed():
    rows = [_row("bp-struct-2.0", "blockprune", 80.5, 85.0, 2.05, theoretical=2.0),
            _row("bp-struct-global-2.0", "blockprune", 80.9, 84.0, 2.1, theoretical=2.3),  # better test, worse dev
            _row("layer-drop-3", "layer-drop", 79.8, 84.0, 2.0),
            _row("magnitude-oneshot-2.0", "magnitude-oneshot", 78.0, 83.0, 2.0, std=0.3)]
    text = frontier.goals(rows)
    assert text[0].startswith("2x: best blockprune point by dev = bp-struct-2.0 (80.50")
    assert "-0.50 vs the reference: reached" in text[0]
    assert "vs layer-drop-3 +0.70 at the same or higher speed (2.05x vs 2.00x): reached" in text[0]
    assert text[1] == "2x: bp-struct-2.0 vs magnitude-oneshot-2.0: +2.50 (larger than the seed spread (0.50))"
    assert text[-1].startswith("measured/theoretical (b32×s128) of every model shrunk by blockprune ≥ 0.9: lowest "
                               "0.91 (bp-struct-global-2.0): reached")
    peer = frontier.goals(rows + [_row("torch-pruning-2.0", "torch-pruning", 80.0, 84.0, 1.7, theoretical=2.0)])
    assert peer[-2] == text[-1]  # the peer's uneven shapes are reported apart: they are not blockprune's shrink
    assert peer[-1].startswith("measured/theoretical (b32×s128) of every model shrunk by torch-pruning (the peer's "
                               "own output, for comparison) ≥ 0.9: lowest 0.85 (torch-pruning-2.0): NOT reached")
    rows[2]["b32"] = 2.3  # layer drop now faster than the candidate: the gap no longer counts
    assert "vs layer-drop-3 +0.70 at LOWER speed (2.05x vs 2.30x): NOT reached (slower)" in frontier.goals(rows)[0]
    rows[2]["b32"] = 2.0
    rows[0]["acc"], rows[0]["delta_ref"] = 79.5, -1.5
    missed = frontier.goals(rows)[0]
    assert "NOT reached (by 0.50) (goal ≥ −1.0 at ≥ 2x measured)" in missed and "-0.30" in missed
    assert "NOT reached (by 0.80)" in missed


def test_a_hybrid_filled_point_competes_in_the_speed_goal_its_measured_speed_meets():
    rows = [_row("bp-struct-2.0", "blockprune", 80.5, 85.0, 2.05),
            _row("bp-hybrid-filled-flops-hp1-taylor-2.2", "blockprune", 80.9, 85.5, 2.27),
            _row("bp-hybrid-filled-flops-hp1-taylor-3.0", "blockprune", 79.9, 85.9, 3.1),
            _row("bp-hybrid-filled-flops-att80-2.2", "blockprune", 82.0, 86.0, 2.3) | {"seeds": 1},
            _row("layer-drop-3", "layer-drop", 79.8, 84.0, 2.0)]
    by_name = {r["name"]: r for r in rows}
    # the 3.0 point measures past the next goal and a single seed is no mean: neither competes at 2x
    assert [r["name"] for r in frontier.goal_candidates(by_name, 2.0)] == [
        "bp-struct-2.0", "bp-hybrid-filled-flops-hp1-taylor-2.2"]
    assert [r["name"] for r in frontier.goal_candidates(by_name, 3.0)] == ["bp-hybrid-filled-flops-hp1-taylor-3.0"]
    text = frontier.goals(rows)
    assert text[0].startswith("2x: best blockprune point by dev = bp-hybrid-filled-flops-hp1-taylor-2.2 (80.90")
    assert "vs layer-drop-3 +1.10 at the same or higher speed (2.27x vs 2.00x): reached" in text[0]
    by_name["bp-hybrid-filled-flops-hp1-taylor-2.2"]["b32"] = 1.98  # too slow for the goal it was meant for
    assert [r["name"] for r in frontier.goal_candidates(by_name, 2.0)] == ["bp-struct-2.0"]
    point = next(p for p in frontier.plan(quick=False) if p.name == "bp-hybrid-filled-flops-hp1-taylor-3.0")
    assert point.target == 3.0 and point.extra == frontier.HYBRID_VARIANTS["flops-hp1-taylor"][1]


def test_a_speed_goal_is_chosen_among_the_points_that_measure_it():
    rows = [_row("bp-struct-3.0", "blockprune", 81.5, 86.0, 2.76),  # best dev, but planned 3x measures 2.76x here
            _row("bp-hybrid-filled-flops-hp1-taylor-3.3", "blockprune", 80.5, 85.0, 3.05),
            _row("layer-drop-2", "layer-drop", 77.0, 80.0, 2.91)]
    text = frontier.goals(rows)[0]
    assert text.startswith("3x: best blockprune point by dev = bp-hybrid-filled-flops-hp1-taylor-3.3 (80.50 ± 0.20, "
                           "3.05x measured) — -0.50 vs the reference: reached (goal ≥ −2.5 at ≥ 3x measured)")
    assert "vs layer-drop-2 +3.50 at the same or higher speed (3.05x vs 2.91x): reached" in text
    rows[1]["b32"] = 2.95  # none measures 3x (the hybrid point now competes at 2x): the goal says the speed is missing
    text = next(line for line in frontier.goals(rows) if line.startswith("3x"))
    assert text.startswith("3x: best blockprune point by dev = bp-struct-3.0 (81.50 ± 0.20, 2.76x measured, below 3x)")
    assert "vs the reference: NOT reached (slower than the target)" in text
    assert "vs layer-drop-2 +4.50 at LOWER speed (2.76x vs 2.91x): NOT reached (slower)" in text


def test_hybrid_filled_is_a_point_on_the_same_budget_and_its_goal_says_what_is_missed():
    point = next(p for p in frontier.plan(quick=False) if p.name == "bp-hybrid-filled-fixed-2.2")
    command = frontier.blockprune_command(point, Path("out"), Path("teacher"), 2.0, 42, [])
    assert command[command.index("--epochs") + 1] == "1.0" and command[command.index("--fill-epochs") + 1] == "1.0"
    rows = [_row("bp-hybrid-filled-flops-hp1-2.2", "blockprune", 80.9, 84.0, 2.1)]
    assert frontier.goals(rows)[-1] == ("bp-hybrid-filled-flops-hp1-2.2: 80.90 ± 0.20 at 2.10x measured, -0.10 vs the "
                                        "reference: NOT reached (0.10x too slow) (goal ≥ 2.2x and ≥ −0.15)")
    rows[0].update(b32=2.3, acc=80.5, delta_ref=-0.5)
    assert frontier.goals(rows)[-1].endswith("NOT reached (0.35 points short) (goal ≥ 2.2x and ≥ −0.15)")
    rows[0].update(acc=81.0, delta_ref=0.0)
    assert frontier.goals(rows)[-1].endswith("vs the reference: reached (goal ≥ 2.2x and ≥ −0.15)")
    faster = _row("bp-hybrid-filled-flops-hp1-taylor-2.4", "blockprune", 80.9, 84.0, 2.199)
    assert frontier.goals([faster])[-1] == (  # the default at a higher target is judged too; 2.199 is too slow
        "bp-hybrid-filled-flops-hp1-taylor-2.4: 80.90 ± 0.20 at 2.20x measured, -0.10 vs the reference: NOT reached "
        "(0.01x too slow) (goal ≥ 2.2x and ≥ −0.15)")
    # every point names its FFN budget and head pressure; the preset as it is is the head-pressed FLOPs budget
    points = {p.name: p for p in frontier.plan(quick=False)}
    assert points["bp-hybrid-filled-fixed-2.2"].extra == ["--set", "ffn_budget=fixed", "--set", "head_pressure=0"]
    assert points["bp-hybrid-filled-flops-att80-2.2"].extra == [
        "--set", "ffn_budget=flops", "--set", "attention_sparsity=0.8", "--set", "head_pressure=0"]
    assert frontier.preset_variant("hybrid-filled", frontier.HYBRID_VARIANTS, target_speedup=2.2) == "flops-hp1-taylor"
    assert frontier.hybrid_lines(rows) == ["not run yet"]  # the preset as it is has not run
    rows[0]["name"] = "bp-hybrid-filled-flops-hp1-taylor-2.2"
    rows.append(_row("bp-hybrid-filled-fixed-2.2", "blockprune", 80.5, 84.5, None, std=0.1))
    assert frontier.hybrid_lines(rows) == [
        "tiles ranked on their own, the FFN sized to the target alone (the recipe before head pressure) (`--set "
        "ffn_budget=fixed --set head_pressure=0`): 80.50 ± 0.10 (dev 84.50, not timed) vs the preset as it is "
        "(emptied heads pay for FFN width, V and O tiles kept or dropped head by head, scores start from the Taylor "
        "ranking) 81.00 ± 0.20 (dev 84.00, 2.30x); dev chooses `--set ffn_budget=fixed --set head_pressure=0`; "
        "-0.50 points, larger than the seed spread (0.30)"]
    assert points["bp-hybrid-filled-flops-hp1-2.2"].extra[-2:] == ["--set", "score_init_from=constant"]


def test_variant_rows_compare_each_struct_variant_with_the_default_and_let_dev_choose():
    rows = [_row("bp-struct-3.0", "blockprune", 79.4, 83.0, 2.9, std=0.3),
            _row("bp-struct-front-3.0", "blockprune", 80.6, 84.1, None, std=0.2),
            _row("bp-struct-global-3.0", "blockprune", 78.6, 82.0, 3.1, std=0.6)]
    front = frontier.variant_rows(rows, "front")
    assert len(front) == 1 and front[0].startswith("3x: default 79.40 ± 0.30 (dev 83.00, 2.90x) vs front-loaded")
    assert "(dev 84.10, not timed); dev chooses front-loaded schedule; +1.20 points, larger than the seed spread" \
        in front[0]
    glob = frontier.variant_rows(rows, "global")[0]
    assert "dev chooses default; -0.80 points, within noise" in glob
    assert frontier.variant_rows(rows[:1], "front") == ["not run yet"]
    rows[1]["seeds"] = 1  # one seed has no spread: the gap is reported, no claim is made
    assert frontier.variant_rows(rows, "front")[0].endswith("+1.20 points, single seed on one side: no spread, no claim")


def test_report_only_without_a_finished_reference_stops_before_training_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["frontier.py", "--report-only", "--runs-dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        frontier.main()
    assert stop.value.code == 2
    assert "holds no finished reference" in capsys.readouterr().err
    assert not (tmp_path / "v2").exists()  # nothing was created, let alone trained


def test_every_struct_variant_is_a_point_at_every_target():
    names = {p.name for p in frontier.plan(quick=False)}
    for suffix in frontier.VARIANTS:
        assert {f"bp-struct-{suffix}-{t}" for t, _ in frontier.TARGETS} <= names
    const = next(p for p in frontier.plan(quick=False) if p.name == "bp-struct-const-3.0")
    assert const.extra == ["--set", "score_init_from=constant"]  # the default before Taylor stays measurable


def test_filled_struct_variant_splits_the_same_budget_into_pruning_and_fill():
    filled = next(p for p in frontier.plan(quick=False) if p.name == "bp-struct-filled-3.0")
    command = frontier.blockprune_command(filled, Path("out"), Path("teacher"), 2.0, 42, [])
    assert command[command.index("--preset") + 1] == "struct" and "--fill" in command
    assert command[command.index("--epochs") + 1] == "1.0" and command[command.index("--fill-epochs") + 1] == "1.0"


def test_variant_section_says_what_the_variant_changes_then_its_rows():
    rows = [_row("bp-struct-2.0", "blockprune", 80.0, 84.0, 2.0, std=0.3),
            _row("bp-struct-const-2.0", "blockprune", 79.0, 82.0, 2.0, std=0.4)]
    text = frontier.variant_section(rows, "const")
    assert text.startswith("### scores start at 0 (the default before Taylor) (`--set score_init_from=constant`)")
    assert "movement alone" in text and "- 2x: default 80.00 ± 0.30" in text and "dev chooses default" in text


def test_unstructured_and_block_points_prune_to_a_sparsity_and_their_goals_read_the_dev_choice():
    points = {p.name: p for p in frontier.plan(quick=False)}
    const, taylor = points["bp-unstructured-const-0.9"], points["bp-unstructured-taylor-0.9"]
    command = frontier.blockprune_command(taylor, Path("out"), Path("teacher"), 2.0, 42, [])
    assert command[command.index("--sparsity") + 1] == "0.9" and "--target-speedup" not in command
    assert command[command.index("--epochs") + 1] == "2.0" and "--fill-epochs" not in command  # same budget, no fill
    assert taylor.extra == ["--set", "score_init_from=taylor", *frontier.CUBIC] and const.kind == "sparsity"
    assert const.extra == ["--set", "score_init_from=constant", *frontier.CUBIC]  # names its start and schedule
    assert points["bp-unstructured-maginit-0.5"].extra == ["--set", "score_init_from=magnitude", *frontier.CUBIC]
    assert points["magnitude-gradual-unstructured-0.9"].extra == frontier.MAGNITUDE
    assert {"bp-unstructured-const-0.5", "bp-block-const-0.5", "bp-block-maginit-0.5", "bp-block-taylor-0.5"} \
        <= set(points) and "bp-unstructured-0.5" not in points
    # each preset is compared with its own default start, read from PRESETS
    assert frontier.sparse_default("unstructured") == "maginit-front"
    assert frontier.sparse_default("block") == "const-soft"
    # block's shared variants pin the hard top-k they ran with before soft movement became its default
    assert points["bp-block-const-0.5"].extra == ["--set", "score_init_from=constant", *frontier.CUBIC, *frontier.HARD]
    assert points["bp-unstructured-const-0.5"].extra == ["--set", "score_init_from=constant", *frontier.CUBIC]
    assert frontier.sparse_lines([]) == ["not run yet"]
    rows = [_row("bp-unstructured-maginit-front-0.9", "blockprune", 74.0, 80.0, 1.0, std=0.5),
            _row("bp-unstructured-taylor-0.9", "blockprune", 77.5, 82.0, 1.0, std=0.4),
            _row("magnitude-gradual-unstructured-0.9", "magnitude-gradual", 76.0, 81.0, 1.0, std=0.3)]
    lines = frontier.sparse_lines(rows)
    assert lines[0].startswith("unstructured 90%: scores start from the Taylor ranking (`--set score_init_from=taylor "
                               "--set warmup=0.1 --set cooldown=0.1`) vs the preset's default (scores start from "
                               "weight magnitude, pruning from 5% to 50% of the steps): +3.50 points, larger "
                               "than the seed spread (0.90)")
    assert lines[1] == ("unstructured 90%: best by dev = bp-unstructured-taylor-0.9 (77.50 ± 0.40, 3 seeds) — -3.50 "
                        "vs the reference: reached (goal ≥ −5.0)")
    assert lines[2] == ("unstructured 90%: movement (bp-unstructured-taylor-0.9) vs gradual magnitude: +1.50 points "
                        "(larger than the seed spread (0.70)): reached (goal: movement above magnitude)")
    rows[1]["dev"] = 79.0  # dev now prefers the default, whose test is 7 points below the reference
    assert "best by dev = bp-unstructured-maginit-front-0.9 (74.00 ± 0.50, 3 seeds) — -7.00 vs the reference: NOT " \
        "reached (by 2.00)" in frontier.sparse_lines(rows)[1]


def test_a_shape_key_rebuilds_a_model_that_runs_the_same_shapes_as_the_one_it_came_from(tmp_path):
    import frontier_timing as ft

    from blockprune.deploy.counts import flops_per_token
    from blockprune.surgery.shrink import apply_shapes, shape_record

    reference = transformers.AutoModelForSequenceClassification.from_pretrained(save_tiny_bert(tmp_path / "m")).eval()
    pruned = fm.load_classifier(tmp_path / "m")
    record = shape_record(pruned)
    record["layers"] = [{"heads": [HEADS - 1], "ffn": FFN // 2}, {"heads": [0], "ffn": 3}]  # uneven, one empty
    key = ft.shape_key(apply_shapes(pruned, record))
    assert ft.parse_shape_key(key) == ([HEADS - 1, 0], [FFN // 2, 3], None)
    rebuilt = fm.model_of_shape(reference, key)
    assert ft.shape_key(rebuilt) == key
    assert flops_per_token(rebuilt, 16)["total"] == flops_per_token(pruned, 16)["total"]
    dropped = fm.drop_layers(fm.load_classifier(tmp_path / "m"), [1])  # layer dropping: fewer layers
    assert ft.shape_key(fm.model_of_shape(reference, ft.shape_key(dropped))) == ft.shape_key(dropped)
    assert ft.shape_key(reference) != key  # the reference itself is left as it was
    quantized = fm.model_of_shape(reference, key + ";int8")
    assert not isinstance(quantized.bert.encoder.layer[0].intermediate.dense, torch.nn.Linear)
    for bad in ("heads=[1, 2];ffn=[3]", "ffn=[3]", "heads=[1];ffn=[3];int8;x"):
        with pytest.raises(ValueError, match="shape key"):
            ft.parse_shape_key(bad)


def test_carried_records_take_this_machines_speedups_for_their_shape_when_it_was_timed_here():
    timing = {"b32": {"speedup": 1.9, "speedup_iqr": 0.1}, "b1": {"speedup": 1.5, "speedup_iqr": 0.2},
              "testset": {"speedup": 2.0, "speedup_iqr": 0.3}, "theoretical": 2.0, "threads": 2}
    old = {"name": "layer-drop-3", "seed": 43, "shape": "k", "speedup_measured_b32": 2.4, "carried": True}
    here = frontier.retimed(old, {"k": timing})
    assert here["timed_here"] and here["speedup_measured_b32"] == 1.9 and here["efficiency_b32"] == 0.95
    assert here["speedup_measured_testset"] == 2.0 and here["seed"] == 43
    assert frontier.retimed(old, {"other": timing}) == old  # not timed here: its own machine's numbers stay
    assert frontier.retimed(old | {"shape": None}, {"k": timing}) == old | {"shape": None}


def test_the_report_finds_every_seed_on_disk_not_only_the_ones_asked_to_run(tmp_path):
    point = next(p for p in frontier.plan(False) if p.name == "bp-struct-2.0")
    for name in ("bp-struct-2.0-s42", "bp-struct-2.0-s7", "bp-struct-2.0-int8-s43", "bp-struct-2.0-sx"):
        (tmp_path / name).mkdir()
    (tmp_path / "bp-struct-2.0-s44").write_text("a file, not a run folder")
    # another point's folder (…-int8-s43) and names that are not seeds are not this point's
    assert frontier.seeds_on_disk(tmp_path, point) == {7, 42}


def test_a_sparse_presets_own_variants_run_for_it_alone_and_are_compared_with_its_default():
    from blockprune.cli import _key_values
    from blockprune.deploy.plan import planned_config

    names = {p.name: p for p in frontier.plan(quick=False)}
    tile16 = names["bp-block-const-tile16-0.5"]
    config = planned_config("block", sparsity=0.5, overrides=_key_values(tile16.extra[1::2], "--set"))
    assert config.attention_block == (16, 16) and config.ffn_block == (16, 16)
    assert not any("tile16" in n or "soft" in n for n in names if n.startswith("bp-unstructured"))
    rows = [_row("bp-block-const-soft-0.5", "blockprune", 79.5, 82.8, None),
            _row("bp-block-const-tile16-0.5", "blockprune", 80.5, 83.8, None)]
    lines = frontier.sparse_lines(rows)
    assert lines[0].startswith("block 50%: scores start at 0, 16x16 tiles, hard top-k (`--set score_init_from=const")
    assert ("vs the preset's default (scores start at 0, soft movement (sigmoid threshold + L1)): +1.00 points"
            in lines[0])
    assert lines[1].startswith("block 50%: best by dev = bp-block-const-tile16-0.5 (80.50")


def test_retime_times_again_only_the_shapes_asked_for(tmp_path, monkeypatch):
    import json

    import frontier_timing as ft

    (tmp_path / "timing.json").write_text(json.dumps({"asked": {"b32": "old"}, "other": {"b32": "kept"}}))
    point = frontier.Point("bp-struct-2.0", "blockprune", 2.0, "struct")
    for seed in (42, 43):  # two seeds of one shape: timed once
        (frontier.run_dir(tmp_path, point, seed) / "frontier-result").mkdir(parents=True)
    timed = []
    monkeypatch.setattr(fm, "load_classifier", lambda path: "reference")
    monkeypatch.setattr(fm, "read_done", lambda folder: {"model": str(folder)})
    monkeypatch.setattr(fm, "load_for_timing", lambda result: result["model"])
    monkeypatch.setattr(ft, "test_set_batches", lambda tokenizer, test: [])
    monkeypatch.setattr(ft, "shape_key", lambda model, quantize: "asked")
    monkeypatch.setattr(ft, "time_against", lambda ref, model, batches, test_repeats: timed.append(model) or {"b32": "new"})
    ctx = {"tokenizer": None, "test": None}
    finished = [(point, 42), (point, 43)]
    frontier.time_runs(tmp_path, finished, {"model": "ref"}, ctx, retime=False)
    assert timed == []  # cached: nothing to time
    frontier.time_runs(tmp_path, finished, {"model": "ref"}, ctx, retime=True)
    assert len(timed) == 1
    assert json.loads((tmp_path / "timing.json").read_text()) == {"asked": {"b32": "new"}, "other": {"b32": "kept"}}
    assert (frontier.run_dir(tmp_path, point, 43) / "shape_key.txt").read_text() == "asked\n"
