"""`blockprune plan`: the shapes, sizes and speedup a target implies, checked against real prune + shrink."""

import json
import time

import pytest
import torch
from tiny import tiny_model

from blockprune import Pruner
from blockprune.cli import main
from blockprune.deploy.counts import ffn_per_layer, heads_per_layer
from blockprune.deploy.measure import speedup
from blockprune.deploy.plan import PlanError, make_plan, plan, planned_config
from blockprune.surgery.shrink import shrink


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Config folders of a tiny BERT (4 heads, FFN 64) and a tiny Llama (4 query heads on 2 KV heads)."""
    dirs = {}
    for model_type in ("bert", "llama"):
        path = tmp_path_factory.mktemp(model_type)
        tiny_model(model_type, task="base").config.save_pretrained(path)
        dirs[model_type] = path
    return dirs


def pruned_and_shrunk(model_type: str, config, ffn_multiple: int, seed: int = 0):
    """What training would leave, without training: random scores, end of schedule, finalize, shrink."""
    model = tiny_model(model_type, task="base")
    dense = tiny_model(model_type, task="base")
    pruner = Pruner(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in pruner.groups:
            group.scores.copy_(torch.randn(group.scores.shape, generator=generator))
    pruner.step(10, 10)
    pruner.finalize()
    shrink(model, ffn_multiple)
    return dense, model


@pytest.mark.parametrize(("model_type", "target", "multiple"), [("bert", 2.0, 16), ("bert", 2.5, 16),
                                                                ("bert", 3.0, 1), ("llama", 2.0, 8)])
def test_struct_plan_matches_real_prune_and_shrink(model_dirs, model_type, target, multiple):
    config = planned_config("struct", target_speedup=target, ffn_multiple=multiple,
                            model_path=str(model_dirs[model_type]))
    planned = make_plan(str(model_dirs[model_type]), config, preset="struct", ffn_multiple=multiple)
    dense, small = pruned_and_shrunk(model_type, config, multiple)
    assert planned["kind"] == {"attention": "exact", "ffn": "exact"} and planned["notes"] == []
    assert planned["heads"] == heads_per_layer(small)
    assert planned["ffn"] == ffn_per_layer(small)
    assert planned["heads_total"] == heads_per_layer(dense) and planned["ffn_total"] == ffn_per_layer(dense)
    real = speedup(dense, small, seq_len=planned["seq_len"], latency=False)
    assert planned["theoretical_speedup"] == pytest.approx(real["theoretical"], rel=1e-9)
    assert planned["flops_per_token"]["after"] == real["model_flops_per_token"]


def test_plan_reaches_the_target_speedup(model_dirs):
    result = plan(str(model_dirs["bert"]), "struct", target_speedup=2.0, ffn_multiple=1)
    assert result["heads"] == [2, 2] and result["ffn"] == [32, 32]
    assert result["theoretical_speedup"] == pytest.approx(2.0, rel=0.02)
    assert result["params"]["linear"]["after"] == pytest.approx(result["params"]["linear"]["before"] / 2)


def test_tile_presets_are_planned_as_a_budget(model_dirs):
    result = plan(str(model_dirs["bert"]), "hybrid", target_speedup=1.5, max_length=8, ffn_multiple=1,
                  overrides={"attention_block": [8, 8]})
    assert result["kind"] == {"attention": "upper bound", "ffn": "budget"}
    assert result["heads"] == result["heads_total"]  # tiles: every head kept in the plan
    assert result["theoretical_speedup"] == pytest.approx(1.5, rel=0.05)
    assert any("budget" in note for note in result["notes"])


def test_a_tile_presets_attention_sparsity_override_stands_and_the_ffn_still_reaches_the_target(model_dirs):
    common = dict(target_speedup=1.5, max_length=8, model_path=str(model_dirs["bert"]))
    planned = planned_config("hybrid", **common, overrides={"attention_block": [8, 8]})
    harder = planned_config("hybrid", **common, overrides={"attention_block": [8, 8], "attention_sparsity": 0.8})
    assert planned.attention_sparsity == pytest.approx(1 - 1 / 1.5, abs=1e-4) and harder.attention_sparsity == 0.8
    assert harder.sparsity == planned.sparsity  # the FFN alone is sized to the target either way
    heads = planned_config("struct", **common, overrides={"attention_sparsity": 0.8})
    assert heads.attention_sparsity == pytest.approx(1 - 1 / 1.5, abs=1e-4)  # whole heads: the target decides


def test_a_flops_budget_reaches_a_target_the_ffn_alone_cannot(model_dirs):
    common = dict(target_speedup=2.5, max_length=8, model_path=str(model_dirs["bert"]),
                  overrides={"attention_block": [8, 8]})
    shared = planned_config("hybrid", **common)  # attention is half the FLOPs: the FFN alone stops near 1.8x
    assert shared.ffn_budget == "flops" and shared.sparsity == pytest.approx(0.6, abs=1e-4)
    assert shared.attention_sparsity == pytest.approx(0.6, abs=1e-4)
    with pytest.raises(PlanError, match="2.5 cannot be reached with tiles in attention and ffn_budget=fixed .*"
                                        "ffn_budget=flops lets emptied heads pay"):
        planned_config("hybrid", **{**common, "overrides": {"attention_block": [8, 8], "ffn_budget": "fixed"}})
    result = plan(str(model_dirs["bert"]), "hybrid", target_speedup=2.5, max_length=8, ffn_multiple=1,
                  overrides={"attention_block": [8, 8]})
    assert result["heads"] == result["heads_total"] and result["ffn_kept"] == [1, 1]  # its least: 2% of 64, rounded
    assert result["ffn_budget"] == "flops" and any(note.startswith("ffn_budget=flops: the sparsity is a share of attention and FFN FLOPs")
               for note in result["notes"])


def test_plan_json_with_measure_has_latencies(model_dirs, capsys):
    assert main(["plan", "--model", str(model_dirs["bert"]), "--target-speedup", "2", "--max-length", "16",
                 "--measure", "--batch-sizes", "1,2", "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    measured = result["measured"]
    assert [b["batch_size"] for b in measured["batches"]] == [1, 2]
    for batch in measured["batches"]:
        assert batch["reference_ms"] > 0 and batch["model_ms"] > 0 and batch["measured"] > 0
    assert measured["theoretical"] == pytest.approx(result["theoretical_speedup"])
    assert measured["seq_len"] == 16 and measured["device"] == "cpu"


@pytest.mark.parametrize(("args", "needle"), [
    (["--target-speedup", "40"], "cannot be reached"),
    (["--target-speedup", "0.9"], "must be greater than 1"),
    (["--set", "not_a_field=1"], "not a PruningConfig field"),
    (["--ffn-multiple", "0"], "--ffn-multiple"),
])
def test_plan_errors_are_one_line(model_dirs, capsys, args, needle):
    assert main(["plan", "--model", str(model_dirs["bert"]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("blockprune plan: error: ") and needle in err and "\n" not in err


@pytest.mark.real
def test_plan_on_the_embedded_minilm_is_quick_and_exact(capsys):
    start = time.perf_counter()
    assert main(["plan", "--preset", "struct", "--target-speedup", "2"]) == 0
    assert time.perf_counter() - start < 30
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit() and "/" in line]
    assert [row[1:3] for row in rows] == [["6/12", "768/1536"]] * 6
    assert "theoretical speedup 2.00x" in out


@pytest.fixture(scope="module")
def minilm_shaped(tmp_path_factory):
    """A config folder with the embedded model's shapes (6 layers, 12 heads of 32, FFN 1536): no weights needed."""
    import transformers

    path = tmp_path_factory.mktemp("minilm-shaped")
    transformers.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                            vocab_size=30522).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("target", [2.0, 2.5, 4.0, 5.0, 8.0, 10.0])
def test_a_speedup_target_is_met_in_whole_heads_and_padded_neurons(minilm_shaped, target):
    """Heads round to the nearest whole one (8x: 2 of 12, not 1.5) and FFN widths pad to 16; the FFN gives back
    what rounding took, so the plan meets the target with the widest FFN that does (16 more would miss it)."""
    config = planned_config("struct", target_speedup=target, model_path=minilm_shaped)
    result = make_plan(minilm_shaped, config, seq_len=128, ffn_multiple=16)
    assert result["theoretical_speedup"] >= target * (1 - 1e-9)
    heads, width = result["heads"][0], result["ffn"][0]
    assert result["heads"] == [heads] * 6 and result["ffn"] == [width] * 6 and width % 16 == 0
    assert heads == max(1, round(12 / target))  # the nearest whole head count
    if result["ffn_kept"][0] != round(1536 / target):  # the FFN was narrowed for the rounding: by no more than needed
        wider = make_plan(minilm_shaped, config.replace(sparsity=1.0 - (width + 16) / 1536), ffn_multiple=16)
        assert wider["theoretical_speedup"] < target
    if target == 8.0:
        assert (heads, width) == (2, 144)  # fractions gave 2 heads and 192 neurons: 7.12x


def test_one_head_fewer_when_no_ffn_width_can_pay_for_the_rounding(model_dirs):
    """A tiny BERT (4 heads, FFN 64) at 2.5x with 16-neuron padding: 2 heads (1.6 rounded) leave no FFN width that
    reaches it, so the plan keeps 1 head and the widest FFN that does; the pruner and shrink agree."""
    config = planned_config("struct", target_speedup=2.5, ffn_multiple=16, model_path=str(model_dirs["bert"]))
    planned = make_plan(str(model_dirs["bert"]), config, ffn_multiple=16)
    assert planned["heads"] == [1, 1] and planned["theoretical_speedup"] >= 2.5
    _, small = pruned_and_shrunk("bert", config, 16)
    assert heads_per_layer(small) == planned["heads"] and ffn_per_layer(small) == planned["ffn"]
