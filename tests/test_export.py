"""Tests for blockprune.deploy.export: ONNX parity on shrunk models (uneven heads, empty layers), dynamic axes,
atomic writes, latency and clear errors. Skipped when the optional onnx extras are missing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny import FFN, HEAD_DIM, HEADS, tiny_model

from blockprune.deploy.counts import ffn_per_layer, heads_per_layer
from blockprune.deploy.export import (
    MissingOnnxError,
    OnnxExportError,
    OnnxMismatchError,
    check_onnx,
    export_onnx,
    measure_onnx_latency,
    onnx_input_names,
)
from blockprune.surgery.arch import find_blocks, get_arch, get_path
from blockprune.surgery.shrink import shrink

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def shrunk(model_type: str, heads: dict[int, list[int]], neurons: dict[int, int], task: str = "seq-cls"
           ) -> torch.nn.Module:
    """A tiny model shrunk by zeroing V rows of ``heads[layer]`` and the first ``neurons[layer]`` down columns."""
    model = tiny_model(model_type, task=task)
    spec = get_arch(model)
    with torch.no_grad():
        for layer, block in enumerate(find_blocks(model)):
            v = get_path(block, spec.attention[0].v)
            for h in heads.get(layer, []):
                v.weight[h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
                v.bias[h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
            get_path(block, spec.ffn.down).weight[:, :neurons.get(layer, 0)] = 0
    shrink(model)
    return model


def graph_axes(path: Path) -> dict[str, list[str | int]]:
    graph = onnx.load(str(path)).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*graph.input, *graph.output]}


def test_uneven_heads_parity_with_default_exporter(tmp_path: Path) -> None:
    model = shrunk("bert", heads={0: [0, 2, 3], 1: [1]}, neurons={0: 20, 1: 5})
    assert heads_per_layer(model) == [1, 3] and ffn_per_layer(model) == [FFN - 20, FFN - 5]
    path = export_onnx(model, tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and path.is_file()
    assert check_onnx(model, path) <= 1e-4
    assert check_onnx(model, path, batch_size=1, seq_len=29) <= 1e-4  # other shapes: the axes are dynamic
    axes = graph_axes(path)
    assert axes["input_ids"] == ["batch", "seq"] and axes["token_type_ids"] == ["batch", "seq"]
    assert axes["logits"][0] == "batch"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind


@pytest.mark.parametrize(("model_type", "dynamo"), [("bert", False), ("bert", True), ("distilbert", False)])
def test_layer_with_no_heads_and_no_neurons_exports(tmp_path: Path, model_type: str, dynamo: bool) -> None:
    model = shrunk(model_type, heads={0: list(range(HEADS)), 1: [0]}, neurons={1: FFN})
    assert heads_per_layer(model) == [0, HEADS - 1] and ffn_per_layer(model) == [FFN, 0]
    model.train()
    path = export_onnx(model, tmp_path / "empty.onnx", dynamo=dynamo)
    assert model.training  # the caller's mode is restored
    assert check_onnx(model, path) <= 1e-4
    assert model.training
    names = [i.name for i in onnx.load(str(path)).graph.input]
    assert names == onnx_input_names(model)
    assert ("token_type_ids" in names) == (model_type != "distilbert")


def test_base_model_exports_hidden_states_with_dynamic_seq(tmp_path: Path) -> None:
    model = shrunk("bert", heads={1: [2]}, neurons={0: 7}, task="base")
    path = export_onnx(model, tmp_path / "base.onnx", dynamo=False)
    assert graph_axes(path)["last_hidden_state"][:2] == ["batch", "seq"]
    assert check_onnx(model, path, seq_len=5) <= 1e-4


def test_mismatch_raises(tmp_path: Path) -> None:
    model = tiny_model("bert")
    path = export_onnx(model, tmp_path / "m.onnx", dynamo=False)
    with torch.no_grad():
        model.classifier.bias += 1.0
    with pytest.raises(OnnxMismatchError, match="differs from PyTorch"):
        check_onnx(model, path)
    other = tiny_model("bert", num_labels=3)
    with pytest.raises(OnnxMismatchError, match="shape"):
        check_onnx(other, path)


def test_failed_export_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(OnnxExportError, match="boom.*dynamo=True"):
        export_onnx(tiny_model("bert"), path, dynamo=False)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_onnx_latency_positive_with_stated_threads(tmp_path: Path) -> None:
    path = export_onnx(tiny_model("bert"), tmp_path / "m.onnx", dynamo=False)
    result = measure_onnx_latency(path, batch_size=2, seq_len=8, repeats=3, warmup=1, threads=1)
    assert result["threads"] == 1 and result["provider"] == "CPUExecutionProvider"
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]


def test_missing_onnxruntime_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingOnnxError, match=r"pip install blockprune\[onnx\]"):
        measure_onnx_latency(tmp_path / "m.onnx", 1, 8)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        check_onnx(tiny_model("bert"), tmp_path / "nope.onnx")
