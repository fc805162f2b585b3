"""Image-classification task: folder scanning, processors, pixel values, evaluate, training, one error per bad input.

Images are small PNGs written with Pillow into ``tmp_path`` (``write_image_folder``: one solid colour per class
plus a little seeded noise, so a tiny ViT learns them in a few steps); the model is a tiny ViT config built in code
(``tiny_vit_folder`` saves it, with or without a ``preprocessor_config.json``).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
import transformers
from PIL import Image

from blockprune.app.finetune import TrainSettings, train
from blockprune.tasks import DataError, ImageDataset, ImageTask, default_image_processor, load_task, scan_image_folder

COLOURS = {"blue": (0, 0, 255), "red": (255, 0, 0)}
IMAGE_SIZE = 16


def write_image_folder(root: Path, per_class: int = 6, colours: dict[str, tuple[int, int, int]] = COLOURS,
                       seed: int = 0, noise: int = 30) -> Path:
    """``root/<colour name>/<i>.png``: solid colour images of varied sizes with seeded noise."""
    generator = torch.Generator().manual_seed(seed)
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            height, width = 10 + 2 * (i % 3), 12 + i % 4
            base = torch.tensor(rgb, dtype=torch.int16).view(1, 1, 3).expand(height, width, 3)
            jitter = torch.randint(-noise, noise + 1, (height, width, 3), generator=generator, dtype=torch.int16)
            pixels = (base + jitter).clamp(0, 255).to(torch.uint8).numpy()
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")
    return root


def tiny_vit_config(**overrides: object) -> transformers.ViTConfig:
    """A 2-layer, hidden-32, 4-head ViT on 16x16 images in 8x8 patches (4 patches + CLS)."""
    fields: dict[str, object] = dict(image_size=IMAGE_SIZE, patch_size=8, num_channels=3, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    fields.update(overrides)
    return transformers.ViTConfig(**fields)


def tiny_vit_folder(path: Path, processor: bool = True, seed: int = 0) -> Path:
    """Save a seeded tiny ViT classifier (2 labels) into ``path``, with a ViT image processor when asked."""
    torch.manual_seed(seed)
    transformers.ViTForImageClassification(tiny_vit_config(num_labels=2)).save_pretrained(path)
    if processor:
        default_image_processor(tiny_vit_config()).save_pretrained(path)
    return path


@pytest.fixture
def folders(tmp_path):
    return write_image_folder(tmp_path / "train"), write_image_folder(tmp_path / "val", per_class=3, seed=1)


@pytest.fixture
def vit(tmp_path):
    folder = tiny_vit_folder(tmp_path / "vit")
    torch.manual_seed(0)
    return folder, transformers.ViTForImageClassification.from_pretrained(folder).eval()


# ---------------------------------------------------------------- reading folders


def test_scan_sorts_classes_and_files_and_skips_hidden_and_non_images(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    (root / "red" / ".hidden.png").write_bytes(b"junk")
    (root / "red" / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    classes = scan_image_folder(root)
    assert list(classes) == ["blue", "red"]
    assert [p.name for p in classes["red"]] == ["0.png", "1.png"]


def test_load_task_with_validation_folder(folders):
    train, val = folders
    task = load_task("image-classification", train_file=train, validation_file=val)
    assert isinstance(task, ImageTask) and task.name == "image-classification"
    assert task.label_names == ["blue", "red"] and (task.num_train, task.num_eval) == (12, 6)
    assert [e.label for e in task.eval_examples] == [0, 0, 0, 1, 1, 1]
    assert task.metric_name == "accuracy" and task.higher_is_better is True
    assert task.model_class() is transformers.AutoModelForImageClassification
    kwargs = task.model_kwargs()
    assert kwargs["num_labels"] == 2 and kwargs["id2label"] == {0: "blue", 1: "red"}
    described = task.describe()
    assert described["label_names"] == ["blue", "red"] and "max_length" not in described
    assert described["higher_is_better"] is True


def test_seeded_holdout_fixed_label_order_and_numeric_class_names(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=10)
    a = load_task("image", train_file=root, seed=1)
    b = load_task("image", train_file=root, seed=1)
    assert (a.num_train, a.num_eval) == (18, 2)
    assert [e.path for e in a.eval_examples] == [e.path for e in b.eval_examples]
    assert not {e.path for e in a.eval_examples} & {e.path for e in a.train_examples}
    fixed = load_task("image", train_file=root, label_names=["red", "blue"], seed=1)
    assert fixed.label_names == ["red", "blue"]
    assert {(e.path.parent.name, e.label) for e in fixed.train_examples} == {("red", 0), ("blue", 1)}
    numeric = write_image_folder(tmp_path / "n", per_class=1, colours={"10": (0, 0, 0), "9": (9, 9, 9), "2": (2, 2, 2)})
    assert load_task("image", train_file=numeric, validation_file=numeric).label_names == ["2", "9", "10"]
    small = load_task("image", train_file=root, max_train_samples=4, max_eval_samples=1, seed=1)
    assert (small.num_train, small.num_eval) == (4, 1)


# ---------------------------------------------------------------- processors and pixels


def test_processor_from_the_model_folder_or_from_the_config(tmp_path, folders):
    task = load_task("image", train_file=folders[0], validation_file=folders[1])
    with_file = task.load_processor(tiny_vit_folder(tmp_path / "a", processor=True))
    without = task.load_processor(tiny_vit_folder(tmp_path / "b", processor=False))
    image = Image.new("RGB", (30, 20), (255, 0, 0))
    for processor in (with_file, without):
        pixels = processor(image, return_tensors="pt")["pixel_values"]
        assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        assert torch.allclose(pixels[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))  # mean = std = 0.5
    without.save_pretrained(tmp_path / "saved")
    again = transformers.AutoImageProcessor.from_pretrained(tmp_path / "saved")
    assert torch.equal(again(image, return_tensors="pt")["pixel_values"],
                       without(image, return_tensors="pt")["pixel_values"])


def test_a_text_model_is_refused_as_an_image_model(tmp_path, folders):
    task = load_task("image", train_file=folders[0], validation_file=folders[1])
    transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                            intermediate_size=64, vocab_size=50).save_pretrained(tmp_path / "bert")
    with pytest.raises(DataError, match=r"model_type 'bert'.*not an image model.*ViT"):
        task.load_processor(tmp_path / "bert")
    tiny_vit_config(num_channels=1).save_pretrained(tmp_path / "gray")
    with pytest.raises(DataError, match="1-channel"):
        task.load_processor(tmp_path / "gray")


def test_dataset_items_and_collated_batches(folders, vit):
    folder, _ = vit
    task = load_task("image", train_file=folders[0], validation_file=folders[1])
    processor = task.load_processor(folder)
    dataset = task.eval_dataset(processor)
    assert isinstance(dataset, ImageDataset) and len(dataset) == 6
    item = dataset[4]
    assert item["pixel_values"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["labels"] == 1
    assert item["pixel_values"][0].mean() > 0.5 > item["pixel_values"][2].mean()  # red
    batch = task.collate(processor)([dataset[i] for i in range(6)])
    assert batch["pixel_values"].shape == (6, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert batch["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    assert len(task.train_dataset(processor, max_length=7)) == 12  # max_length is ignored for images


# ---------------------------------------------------------------- evaluate and train


def test_evaluate_matches_the_models_own_predictions_and_loss(folders, vit):
    folder, model = vit
    task = load_task("image", train_file=folders[0], validation_file=folders[1])
    processor = task.load_processor(folder)
    metrics = task.evaluate(model, processor, batch_size=4, progress=False)
    batch = task.collate(processor)(list(task.eval_dataset(processor)))
    with torch.no_grad():
        out = model(**batch)
    predictions = out.logits.argmax(-1)
    assert metrics["accuracy"] == pytest.approx(float((predictions == batch["labels"]).float().mean()))
    assert metrics["loss"] == pytest.approx(float(out.loss), rel=1e-5)
    assert 0.0 <= metrics["macro_f1"] <= 1.0


def test_training_with_distillation_learns_the_colours(tmp_path, folders, vit):
    folder, model = vit
    task = load_task("image", train_file=folders[0], validation_file=folders[1])
    processor = task.load_processor(folder)
    before = task.evaluate(model, processor, progress=False)
    settings = TrainSettings(epochs=10, learning_rate=3e-3, batch_size=4, progress=False, save_steps=10_000, alpha=0.3)
    train(model, task, processor, tmp_path / "run", settings, teacher=copy.deepcopy(model))
    after = task.evaluate(model, processor, progress=False)
    assert after["accuracy"] == 1.0 and after["loss"] < before["loss"], (before, after)


# ---------------------------------------------------------------- one clear error per bad input


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(DataError, match=r"Image folder not found: .*nope"):
        load_task("image", train_file=tmp_path / "nope")
    (tmp_path / "a.csv").write_text("x\n")
    with pytest.raises(DataError, match=r"a\.csv is a file.*<label>/<image files>"):
        load_task("image", train_file=tmp_path / "a.csv")


def test_empty_folder_and_loose_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_task("image", train_file=tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "x.png")
    with pytest.raises(DataError, match=r"holds image files directly \(\[x\.png\]\)"):
        load_task("image", train_file=flat)


def test_class_folder_without_images_lists_what_it_holds(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=2)
    (root / "green").mkdir()
    (root / "green" / "readme.txt").write_text("oops")
    with pytest.raises(DataError, match=r"green has no image files \(it holds \[readme\.txt\]\)"):
        load_task("image", train_file=root)


def test_fewer_than_two_classes(tmp_path):
    root = write_image_folder(tmp_path / "data", per_class=3, colours={"red": (255, 0, 0)})
    with pytest.raises(DataError, match=r"fewer than 2 classes \(\['red'\]\)"):
        load_task("image", train_file=root)


@pytest.mark.parametrize("content", [b"not a png at all", None])
def test_unreadable_image_names_the_file(tmp_path, content):
    root = write_image_folder(tmp_path / "data", per_class=2)
    broken = root / "red" / "1.png"
    data = broken.read_bytes()
    broken.write_bytes(content if content is not None else data[: len(data) // 2])  # garbage, or truncated
    with pytest.raises(DataError, match=r"Cannot read image .*red/1\.png.*replace or remove it"):
        load_task("image", train_file=root, validation_file=root)


def test_an_image_broken_after_loading_names_the_file_when_decoded(folders, vit):
    task = load_task("image", train_file=folders[0], validation_file=folders[1])
    processor = task.load_processor(vit[0])
    task.eval_examples[0].path.write_bytes(b"gone bad")
    with pytest.raises(DataError, match=r"Cannot read image .*blue/0\.png"):
        task.eval_dataset(processor)[0]


def test_validation_class_not_in_training(tmp_path, folders):
    val = write_image_folder(tmp_path / "val2", per_class=1, colours={"red": (255, 0, 0), "green": (0, 255, 0)})
    with pytest.raises(DataError, match=r"class folders \['green'\] that are not in the label set \['blue', 'red'\]"):
        load_task("image", train_file=folders[0], validation_file=val)


def test_bad_options(tmp_path, folders):
    with pytest.raises(DataError, match="reads a local image folder"):
        load_task("image-classification")
    with pytest.raises(DataError, match="reads a local image folder"):
        load_task("image-classification", dataset="beans")
    with pytest.raises(DataError, match=r"\['text_column'\] do\(es\) not apply"):
        load_task("image", train_file=folders[0], text_column="text")
    with pytest.raises(DataError, match="duplicates"):
        load_task("image", train_file=folders[0], label_names=["red", "red"])
    with pytest.raises(DataError, match="Unknown metric 'perplexity'"):
        load_task("image", train_file=folders[0], metric="perplexity")


def test_missing_pillow_names_the_install(monkeypatch, folders):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match="pip install pillow"):
        load_task("image", train_file=folders[0], validation_file=folders[1])
