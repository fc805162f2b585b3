"""Compact storage of sparse weights (blockprune.store.compact) and how save_pruned / load_pruned use it; loading on
the meta device and from a Hub repo id.

Bit-exactness is checked on the integer view of the tensors, so a ``-0.0`` turned into ``0.0`` (or a NaN
payload lost) fails even though ``torch.equal`` would accept it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from tiny import prune_at_random, tiny_batch, tiny_inputs, tiny_model
from torch import nn

from blockprune import saving
from blockprune.deploy.counts import block_linears
from blockprune.report.doc import Note
from blockprune.report.sections import summary_section
from blockprune.store.compact import (
    AUTO_MIN_SAVING,
    METADATA_KEY,
    decode,
    decode_state,
    encode,
    encode_state,
    nonzero_mask,
    pack_bits,
    unpack_bits,
)
from blockprune.store.saving import SHAPES_FILE, WEIGHTS_FILE, PrunedModelError, load_pruned, save_pruned
from blockprune.store.size import size_report

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(INT_VIEW[tensor.element_size()]) if tensor.is_floating_point() else tensor


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def sparse_tensor(shape: tuple[int, int], sparsity: float, dtype: torch.dtype, block: int | None = None,
                  seed: int = 0) -> torch.Tensor:
    """Random values with ``sparsity`` of them (or of its ``block x block`` tiles) set to +0.0."""
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.randn(shape, generator=generator).to(dtype)
    if block is None:
        drop = torch.rand(shape, generator=generator) < sparsity
    else:
        tiles = torch.rand(math.ceil(shape[0] / block), math.ceil(shape[1] / block), generator=generator) < sparsity
        tiles[-1, -1] = sparsity == 1  # one (partial) edge tile kept unless everything goes
        drop = tiles.repeat_interleave(block, 0).repeat_interleave(block, 1)[: shape[0], : shape[1]]
    return tensor.masked_fill(drop, 0.0)


def round_trip(tensor: torch.Tensor) -> torch.Tensor:
    encoded = encode(tensor)
    return decode("t", json.loads(json.dumps(encoded.info)), encoded.parts)  # info survives JSON


# --------------------------------------------------------------------------------------------- tensors


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block", [None, 32], ids=["unstructured", "block32"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_round_trip_is_bit_exact(sparsity: float, block: int | None, dtype: torch.dtype) -> None:
    tensor = sparse_tensor((100, 200), sparsity, dtype, block)  # not a multiple of 32: edge blocks are partial
    if 0 < sparsity < 1:
        alive = nonzero_mask(tensor).nonzero().reshape(-1)
        tensor.view(-1)[alive[:3]] = torch.tensor([-0.0, float("nan"), float("-inf")], dtype=dtype)
    encoded = encode(tensor)
    assert same_bits(round_trip(tensor), tensor)
    dense = tensor.numel() * tensor.element_size()
    assert encoded.nbytes <= dense
    if sparsity == 0.0:
        assert encoded.encoding == "dense"
    elif sparsity >= 0.5:
        assert encoded.nbytes < 0.6 * dense
    if block and 0.5 <= sparsity <= 0.9:
        density = float(nonzero_mask(tensor).float().mean())
        assert encoded.encoding == "blocks" and encoded.nbytes < (density + 0.1) * dense  # finds the zero tiles
    if block is None and sparsity == 0.9:
        assert encoded.encoding == "bitmask"


def test_negative_zero_and_nan_are_values_not_zeros() -> None:
    tensor = torch.tensor([0.0, -0.0, float("nan"), 0.0, 1.5, 0.0, 0.0, 0.0, 0.0])
    assert nonzero_mask(tensor).tolist() == [False, True, True, False, True, False, False, False, False]
    assert same_bits(round_trip(tensor), tensor)


def test_bit_packing_round_trips_and_is_one_bit_per_element() -> None:
    mask = torch.rand(1001, generator=torch.Generator().manual_seed(1)) < 0.3
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == 126
    assert torch.equal(unpack_bits(packed, 1001), mask)
    assert pack_bits(torch.tensor([True, False, False, True])).tolist() == [0b1001]


@pytest.mark.parametrize("shape", [(0,), (0, 7), (3, 0, 2)])
def test_empty_tensors_stay_dense(shape: tuple[int, ...]) -> None:
    tensor = torch.empty(shape)
    assert encode(tensor).encoding == "dense"
    stored, index = encode_state({"w": tensor, "x": sparse_tensor((64, 64), 0.99, torch.float32)}, True)
    assert "w" not in index and "x" in index
    assert decode_state(stored, index)["w"].shape == shape


@pytest.mark.parametrize("tensor", [torch.zeros(64, 64, dtype=torch.int64), torch.zeros(500, dtype=torch.bool),
                                    torch.zeros(300, dtype=torch.uint8)], ids=["int64", "bool", "uint8"])
def test_non_float_tensors_are_stored_untouched(tensor: torch.Tensor) -> None:
    stored, index = encode_state({"ids": tensor}, True)
    assert index == {} and stored["ids"] is tensor


def test_zero_dim_and_three_dim_floats_round_trip() -> None:
    for tensor in (torch.tensor(0.0), torch.tensor(-2.5), sparse_tensor((40, 50), 0.9, torch.float32).view(4, 10, 50)):
        assert same_bits(round_trip(tensor), tensor)


def test_a_90_percent_unstructured_linear_takes_at_most_15_percent_of_its_fp32_bytes() -> None:
    """The goal of issue 13: 1/8 byte of mask + 10% of the 4-byte values = 13.1% of the dense size."""
    weight = sparse_tensor((1536, 384), 0.9, torch.float32)
    encoded = encode(weight)
    assert encoded.nbytes <= 0.15 * weight.numel() * 4
    assert encoded.nbytes == pytest.approx((1 / 8 + 0.1 * 4) / 4 * weight.numel() * 4, rel=0.02)


def test_auto_keeps_a_file_dense_unless_compact_saves_more_than_a_tenth() -> None:
    sparse = sparse_tensor((128, 128), 0.9, torch.float32)
    dense = torch.randn(128, 128)
    assert encode_state({"a": sparse, "b": dense}, "auto")[1]  # saves ~43%
    few_zeros = {"a": sparse_tensor((128, 128), 0.15, torch.float32), "b": dense}  # saves 12% of a, 6% in all
    assert encode_state(few_zeros, "auto")[1] == {}
    assert set(encode_state(few_zeros, True)[1]) == {"a"}
    assert encode_state({"a": sparse}, False) == ({"a": sparse}, {})
    assert 0 < AUTO_MIN_SAVING < 1
    with pytest.raises(ValueError, match="compact='yes'"):
        encode_state({"a": sparse}, "yes")


# --------------------------------------------------------------------------------------------- save / load


@pytest.fixture(scope="module")
def pruned90() -> nn.Module:
    """A tiny BERT through Pruner + finalize, unstructured at 90% sparsity (full shapes, zeros in place)."""
    return prune_at_random(tiny_model("bert"), "unstructured", sparsity=0.9)


@pytest.fixture(scope="module")
def saved90(pruned90: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pruned(pruned90, tmp_path_factory.mktemp("compact") / "sparse", compact=True)


def linear_weights(model: nn.Module) -> list[torch.Tensor]:
    return [w for layer in block_linears(model) for w in layer.values()]


def file_metadata(folder: Path) -> dict[str, str]:
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as handle:
        return handle.metadata()


def test_finalize_stores_pruned_weights_as_positive_zeros(pruned90: nn.Module) -> None:
    for weight in linear_weights(pruned90):
        assert (weight == 0).float().mean() == pytest.approx(0.9, abs=0.02)
        assert torch.equal(weight == 0, ~nonzero_mask(weight).view(weight.shape))  # no -0.0 left by the mask


def test_a_90_percent_tiny_bert_round_trips_bit_exactly(pruned90: nn.Module, saved90: Path, tmp_path: Path) -> None:
    index = json.loads(file_metadata(saved90)[METADATA_KEY])
    linears = {name for name, p in pruned90.named_parameters() if "encoder.layer" in name and p.dim() == 2}
    assert {name for name, info in index.items() if info["encoding"] == "bitmask"} == linears
    assert {info["encoding"] for name, info in index.items() if name not in linears} == {"indices"}  # zero biases
    plain = save_pruned(pruned90, tmp_path / "plain", compact=False)
    assert METADATA_KEY not in file_metadata(plain)  # the format of folders saved before compact saving
    assert (saved90 / WEIGHTS_FILE).stat().st_size < 0.6 * (plain / WEIGHTS_FILE).stat().st_size
    for folder in (saved90, plain):
        loaded = load_pruned(folder)
        state = pruned90.state_dict()
        assert loaded.state_dict().keys() == state.keys()
        assert all(same_bits(tensor, state[name]) for name, tensor in loaded.state_dict().items())
        with torch.no_grad():
            assert torch.equal(loaded(**tiny_inputs()).logits, pruned90(**tiny_inputs()).logits)


def test_auto_is_the_default_and_compacts_the_sparse_tiny_bert(pruned90: nn.Module, tmp_path: Path) -> None:
    assert METADATA_KEY in file_metadata(save_pruned(pruned90, tmp_path / "auto"))
    assert METADATA_KEY not in file_metadata(save_pruned(tiny_model("bert"), tmp_path / "dense"))


def test_size_report_counts_the_file_and_the_linears(pruned90: nn.Module, saved90: Path) -> None:
    size = size_report(saved90)
    state = pruned90.state_dict()
    tied = {"cls.predictions.decoder.weight"} & set(state)
    assert size["dense_bytes"] == sum(t.numel() * 4 for k, t in state.items() if k not in tied)
    assert size["saved_bytes"] == (saved90 / WEIGHTS_FILE).stat().st_size
    linear = sum(w.numel() for w in linear_weights(pruned90))
    assert size["linear_dense_bytes"] == linear * 4
    nonzero = sum(int((w != 0).sum()) for w in linear_weights(pruned90))
    assert size["linear_saved_bytes"] == sum(math.ceil(w.numel() / 8) for w in linear_weights(pruned90)) + 4 * nonzero
    assert size["linear_saved_bytes"] <= 0.15 * size["linear_dense_bytes"]
    assert size_report(saved90, pruned90) == size


def test_the_report_summary_shows_weights_on_disk() -> None:
    size = {"dense_bytes": 90_900_000, "saved_bytes": 48_100_000, "linear_dense_bytes": 42_500_000,
            "linear_saved_bytes": 5_570_000}
    rows = dict(summary_section({"size": size}, Note("")).parts[0].rows)
    assert rows["Weights on disk"] == "90.9 MB as dense fp32 \u2192 48.1 MB saved (52.9%)"
    assert rows["Pruned linears on disk"] == "42.5 MB as dense fp32 \u2192 5.6 MB saved (13.1%)"
    assert "Weights on disk" not in dict(summary_section({"task": "x"}, Note("")).parts[0].rows)


@pytest.fixture
def sparse_copy(saved90: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in saved90.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


def rewrite(folder: Path, change) -> None:
    """Rewrite the weights file with ``change(tensors, metadata)`` applied, recording the new checksum."""
    file = folder / WEIGHTS_FILE
    with safe_open(str(file), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    change(tensors, metadata)
    save_file(tensors, str(file), metadata=metadata)
    record = json.loads((folder / SHAPES_FILE).read_text())
    record["weights_sha256"] = saving.file_sha256(file)
    (folder / SHAPES_FILE).write_text(json.dumps(record))


NAME = "bert.encoder.layer.1.intermediate.dense.weight"


def _drop_value(tensors: dict, metadata: dict) -> None:
    tensors[f"{NAME}::values"] = tensors[f"{NAME}::values"][:-1].clone()


def _drop_mask(tensors: dict, metadata: dict) -> None:
    del tensors[f"{NAME}::mask"]


def _set_padding_bit(tensors: dict, metadata: dict) -> None:
    index = json.loads(metadata[METADATA_KEY])
    index[NAME]["shape"] = [63, 32]  # 2016 elements: 2016 bits fill the mask exactly, the stored values do not fit
    metadata[METADATA_KEY] = json.dumps(index)


def _unknown_encoding(tensors: dict, metadata: dict) -> None:
    index = json.loads(metadata[METADATA_KEY])
    index[NAME]["encoding"] = "zip"
    metadata[METADATA_KEY] = json.dumps(index)


def _stray_part(tensors: dict, metadata: dict) -> None:
    index = json.loads(metadata[METADATA_KEY])
    del index[NAME]
    metadata[METADATA_KEY] = json.dumps(index)


@pytest.mark.parametrize("change, message", [
    (_drop_value, "part 'values' holds"),
    (_drop_mask, rf"its part '{NAME}::mask' is missing"),
    (_set_padding_bit, "part 'mask' holds|part 'values' holds"),
    (_unknown_encoding, "unknown encoding 'zip'"),
    (_stray_part, "a compact part without an entry"),
], ids=["values", "mask", "shape", "encoding", "stray"])
def test_a_corrupted_compact_file_names_the_tensor(sparse_copy: Path, change, message: str) -> None:
    rewrite(sparse_copy, change)
    with pytest.raises(PrunedModelError, match=rf"{WEIGHTS_FILE}: tensor {NAME}.*({message}).*corrupted"):
        load_pruned(sparse_copy)


def test_compact_metadata_that_is_not_json(sparse_copy: Path) -> None:
    rewrite(sparse_copy, lambda tensors, metadata: metadata.update({METADATA_KEY: "{oops"}))
    with pytest.raises(PrunedModelError, match=rf"{WEIGHTS_FILE}: the '{METADATA_KEY}' metadata is not JSON"):
        load_pruned(sparse_copy)


def flip_a_bit(file: Path, stored_name: str) -> None:
    """Flip the lowest bit of the first byte of one stored tensor's data, found through the header."""
    data = bytearray(file.read_bytes())
    length = int.from_bytes(data[:8], "little")
    start = 8 + length + json.loads(data[8: 8 + length])[stored_name]["data_offsets"][0]
    data[start] ^= 0x01
    file.write_bytes(bytes(data))


def test_the_checksum_still_covers_a_compact_file(sparse_copy: Path, pruned90: nn.Module) -> None:
    flip_a_bit(sparse_copy / WEIGHTS_FILE, f"{NAME}::values")  # decodes fine: only the checksum sees it
    with pytest.raises(PrunedModelError, match=rf"{WEIGHTS_FILE}: its SHA-256 differs"):
        load_pruned(sparse_copy)
    changed = load_pruned(sparse_copy, verify=False).get_parameter(NAME)
    assert int((bits(changed) != bits(pruned90.get_parameter(NAME))).sum()) == 1


def test_a_flipped_mask_bit_names_the_tensor_even_unverified(sparse_copy: Path) -> None:
    flip_a_bit(sparse_copy / WEIGHTS_FILE, f"{NAME}::mask")
    with pytest.raises(PrunedModelError, match=rf"tensor {NAME}: part 'values' holds \d+ elements, expected"):
        load_pruned(sparse_copy, verify=False)


# --------------------------------------------------------------------------------------------- loading


def test_the_model_is_built_on_the_meta_device_before_the_weights_arrive(saved90: Path, monkeypatch) -> None:
    seen: list[set[str]] = []
    check = saving._check_weights

    def spy(model: nn.Module, *args) -> None:
        seen.append({p.device.type for p in model.parameters()})
        check(model, *args)

    monkeypatch.setattr(saving, "_check_weights", spy)
    loaded = load_pruned(saved90)
    assert seen == [{"meta"}]
    assert {t.device.type for t in [*loaded.parameters(), *loaded.buffers()]} == {"cpu"}
    assert all(p.requires_grad for p in loaded.parameters())


def test_writing_to_loaded_weights_never_changes_the_file(saved90: Path, pruned90: nn.Module) -> None:
    """Weights may stay mapped from the file: writes must be copy-on-write (training a loaded model is common)."""
    loaded = load_pruned(saved90)
    with torch.no_grad():
        for param in loaded.parameters():
            param.add_(1.0)
    again = load_pruned(saved90)  # the checksum is verified
    assert all(same_bits(t, pruned90.state_dict()[k]) for k, t in again.state_dict().items())


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama", "t5"])
def test_buffers_that_are_not_saved_are_rebuilt_exactly(model_type: str, tmp_path: Path) -> None:
    """Position ids, the GPT-2 causal mask, rotary frequencies: not in the file, built for real on load."""
    task = {"gpt2": "causal-lm", "llama": "causal-lm", "t5": "seq2seq"}.get(model_type, "seq-cls")
    model = tiny_model(model_type, task)
    loaded = load_pruned(save_pruned(model, tmp_path / model_type))
    buffers = dict(model.named_buffers())
    assert dict(loaded.named_buffers()).keys() == buffers.keys()
    assert all(same_bits(t, buffers[name]) for name, t in loaded.named_buffers())
    batch = {k: v for k, v in tiny_batch(model_type, task).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


def test_tied_weights_are_tied_again_after_assign_loading(tmp_path: Path) -> None:
    model = prune_at_random(tiny_model("bert", task="mlm"), "unstructured", sparsity=0.9)
    loaded = load_pruned(save_pruned(model, tmp_path / "mlm"))
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_inputs()).logits, model(**tiny_inputs()).logits)


def test_a_hub_repo_id_is_downloaded_then_loaded(saved90: Path, pruned90: nn.Module, monkeypatch) -> None:
    import huggingface_hub

    calls: list[dict] = []

    def fake_download(**kwargs) -> str:
        calls.append(kwargs)
        return str(saved90)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loaded = load_pruned("someone/tiny-bert-90")
    assert calls == [{"repo_id": "someone/tiny-bert-90"}]
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_inputs()).logits, pruned90(**tiny_inputs()).logits)


def test_local_paths_are_never_looked_up_on_the_hub(saved90: Path, monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub

    def refuse(**kwargs) -> str:
        raise AssertionError(f"downloaded {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.chdir(saved90.parent.parent)
    assert load_pruned(f"{saved90.parent.name}/{saved90.name}") is not None  # an existing relative folder
    with pytest.raises(PrunedModelError, match="no such folder"):
        load_pruned(Path("someone/not-here"))  # a Path is always local
    with pytest.raises(PrunedModelError, match="no such folder"):
        load_pruned(str(tmp_path / "someone" / "not-here"))  # absolute: not a repo id


@pytest.mark.parametrize("error", ["offline", "not-found"])
def test_a_repo_id_that_cannot_be_downloaded_is_one_clear_error(error: str, monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    def fail(**kwargs) -> str:
        if error == "offline":
            raise LocalEntryNotFoundError("cannot reach the Hub and the file is not in the local cache")
        raise OfflineModeIsEnabled("HF_HUB_OFFLINE=1")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(PrunedModelError, match=r"^someone/model: no such local folder, and cannot download it .*"
                                               r"\(offline\?\) \u2014 give a local folder written by save_pruned"):
        load_pruned("someone/model")


LOAD_OVERHEAD_MIB = 48
"""What a load adds besides the weights (lazy imports, allocator arenas): measured about 14 MiB for the tiny BERT."""


def test_the_load_benchmark_plumbing(saved90: Path, pruned90: nn.Module) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import load_memory
    finally:
        sys.path.pop(0)
    runs = load_memory.measure_load(saved90, Path(saving.__file__).resolve().parents[1], repeats=1)
    assert len(runs) == 1 and runs[0]["seconds"] > 0
    # the peak is in MiB (not KiB, not bytes): above zero, since the weights were loaded, and below the overhead
    # plus three copies of the dense fp32 model (the file's tensors, the model built at full width, the shrunk one)
    dense_mib = sum(p.numel() * 4 for p in pruned90.parameters()) / 2**20
    assert 0 < runs[0]["peak_added_mib"] < LOAD_OVERHEAD_MIB + 3 * dense_mib
    assert runs[0]["peak_added_used_mib"] >= runs[0]["peak_added_mib"]  # the peak never falls
    summary = load_memory.summary(runs * 3)
    assert summary["seconds_median"] == runs[0]["seconds"]


# --------------------------------------------------------------------------------------------- real model


@pytest.mark.real
def test_minilm_at_90_percent_unstructured_meets_the_linear_goal(tmp_path: Path) -> None:
    from blockprune.tasks import embedded_model_path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from load_memory import zero_by_magnitude
    finally:
        sys.path.pop(0)
    source = embedded_model_path()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).eval()
    zero_by_magnitude(model, 0.9)
    folder = save_pruned(model, tmp_path / "minilm90")
    size = size_report(folder)
    whole, linear = size["saved_bytes"] / size["dense_bytes"], size["linear_saved_bytes"] / size["linear_dense_bytes"]
    print(f"MiniLM 90% unstructured: file {size['saved_bytes'] / 1e6:.1f} MB of {size['dense_bytes'] / 1e6:.1f} MB "
          f"dense fp32 ({whole:.1%}); block linears {linear:.1%} of dense")
    assert linear <= 0.15
    assert 0.4 < whole < 0.65  # the embeddings (~half the parameters) stay dense
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    batch = tokenizer(["a compact file", "sparse weights"], padding=True, return_tensors="pt")
    loaded = load_pruned(folder)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)


# --------------------------------------------------------------------------------------------- pipeline


def test_the_pipeline_saves_an_unstructured_model_compactly_and_reports_its_size(tmp_path: Path) -> None:
    import csv

    from tiny import save_tiny_bert

    from blockprune.cli import main

    save_tiny_bert(tmp_path / "tiny")
    with open(tmp_path / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows([("good fine nice" if i % 2 else "bad dull awful", str(i % 2)) for i in range(32)])
    out = tmp_path / "run"
    assert main(["prune", "--model", str(tmp_path / "tiny"), "--train-file", str(tmp_path / "train.csv"),
                 "--validation-file", str(tmp_path / "train.csv"), "--preset", "unstructured", "--sparsity", "0.9",
                 "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "16", "--bench-repeats", "1",
                 "--max-length", "16", "--no-progress", "--output-dir", str(out)]) == 0
    assert METADATA_KEY in file_metadata(out / "model")  # compact although the dense embeddings dominate the file
    size = json.loads((out / "report.json").read_text())["size"]
    assert size == size_report(out / "model")
    # shrink has cut the rows and columns that emptied, so what is left is denser than 90%: the linears take their
    # non-zero values plus one bit per weight (the 90%-of-a-full-matrix goal is tested above on a linear alone)
    from blockprune.deploy.counts import block_linears

    weights = [w for layer in block_linears(load_pruned(out / "model")) for w in layer.values()]
    numel, nonzero = sum(w.numel() for w in weights), sum(int(torch.count_nonzero(w)) for w in weights)
    assert nonzero < numel
    assert size["linear_saved_bytes"] <= 4 * nonzero + numel / 8 + 64 * len(weights)
    assert size["saved_bytes"] < size["dense_bytes"]
    assert "Weights on disk" in (out / "report.md").read_text()
