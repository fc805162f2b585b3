"""Image classification from a local image folder (``root/<label>/<image files>``), read with Pillow.

Every sub-folder of the root is a class (sorted by name, unless ``label_names`` fixes the order) and every
image file inside it (``.png``, ``.jpg``, ...) an example; names starting with ``.`` are ignored. All images
are opened and verified when the task is loaded, so a broken file fails in seconds with its name, before
any training. Pixels are decoded lazily, one image per feature, and turned into ``pixel_values`` by the
model's image processor (``preprocessor_config.json`` in the model folder) or, when the folder has none, by
a plain resize to the config's ``image_size`` + rescale to [0, 1] + normalize with mean = std = 0.5 (the
ViT convention).

Example:
    >>> task = load_task("image-classification", train_file="pets/train", validation_file="pets/val")  # doctest: +SKIP
    >>> processor = task.load_processor("my-vit")                                                       # doctest: +SKIP
    >>> task.evaluate(model, processor, progress=False)                                                 # doctest: +SKIP
    {'accuracy': 0.91, 'macro_f1': 0.9, 'loss': 0.27}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from blockprune.tasks.base import DataError
from blockprune.tasks.classification import LabelTask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
PILLOW_HINT = "Image classification reads images with Pillow: install it with `pip install pillow`."
DEFAULT_MEAN_STD = 0.5
MAX_LISTED = 5


@dataclass(frozen=True)
class ImageExample:
    """One image file and its label id."""

    path: Path
    label: int


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise DataError(PILLOW_HINT) from None
    return Image


def _listed(items: Sequence[Any]) -> str:
    shown = ", ".join(str(x) for x in items[:MAX_LISTED])
    return f"[{shown}{', ...' if len(items) > MAX_LISTED else ''}]"


def scan_image_folder(root: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """Map each class folder name under ``root`` to its image files (both sorted by name).

    Raises:
        DataError: ``root`` missing or not a folder, no class folders, image files loose in ``root``, or a
            class folder without image files.

    Example:
        >>> scan_image_folder("pets/train")        # doctest: +SKIP
        {'cat': [PosixPath('pets/train/cat/1.png'), ...], 'dog': [...]}
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"Image folder not found: {root}. Check the path (train_file / validation_file).")
    if not root.is_dir():
        raise DataError(
            f"{root} is a file; image classification needs a folder laid out as {root}/<label>/<image files>."
        )
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(
            f"{root} holds image files directly ({_listed(loose)}); put each image in a sub-folder named after its "
            f"label: {root}/<label>/<image>."
        )
    classes = {}
    for folder in (p for p in entries if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            found = f" (it holds {_listed([p.name for p in files])})" if files else ""
            raise DataError(
                f"Class folder {folder} has no image files{found}; give it images with one of the extensions "
                f"{list(IMAGE_SUFFIXES)} or remove it."
            )
        classes[folder.name] = images
    if not classes:
        raise DataError(f"{root} has no class sub-folders; lay it out as {root}/<label>/<image files>.")
    return classes


def verify_images(paths: Sequence[Path]) -> None:
    """Open every image and check its data with Pillow; the first unreadable file raises, by name."""
    image_module = _pil()
    for path in paths:
        try:
            with image_module.open(path) as image:
                image.verify()
        except Exception as err:  # noqa: BLE001 - Pillow raises many types for a broken file
            raise DataError(f"Cannot read image {path} ({type(err).__name__}: {err}); replace or remove it.") from None


def folder_examples(classes: dict[str, list[Path]], index: dict[str, int], where: str) -> list[ImageExample]:
    """Examples of a scanned folder, labelled by ``index``; a class not in ``index`` is an error."""
    unknown = sorted(set(classes) - set(index))
    if unknown:
        raise DataError(
            f"{where} has class folders {unknown} that are not in the label set {list(index)}. Rename or remove "
            "them, or train on data that has those classes."
        )
    return [ImageExample(path, index[name]) for name, paths in classes.items() for path in paths]


def load_image(path: Path, mode: str = "RGB") -> Any:
    """Decode one image into a Pillow image of ``mode``; a decoding failure names the file."""
    image_module = _pil()
    try:
        with image_module.open(path) as image:
            return image.convert(mode)
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for a broken file
        raise DataError(f"Cannot read image {path} ({type(err).__name__}: {err}); replace or remove it.") from None


class ImageDataset(Dataset):
    """Images decoded and processed on access: item ``i`` is ``{"pixel_values": (C, H, W), "labels": int}``.

    Example:
        >>> ds = ImageDataset(task.eval_examples, processor)     # doctest: +SKIP
        >>> ds[0]["pixel_values"].shape                          # doctest: +SKIP
        torch.Size([3, 224, 224])
    """

    def __init__(self, examples: Sequence[ImageExample], processor: Any) -> None:
        self.examples = list(examples)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.examples[index]
        pixels = self.processor(load_image(example.path), return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, "labels": example.label}


def collate_images(features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ``pixel_values`` and ``labels`` of a batch (all images have the processor's size)."""
    return {
        "pixel_values": torch.stack([f["pixel_values"] for f in features]),
        "labels": torch.tensor([int(f["labels"]) for f in features]),
    }


def default_image_processor(config: Any) -> Any:
    """Resize to ``config.image_size``, rescale to [0, 1], normalize with mean = std = 0.5 (a ViT processor).

    Used when the model folder has no ``preprocessor_config.json``; it is saved with the models the pipeline
    writes, so later loads find it.
    """
    import transformers

    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    mean = [DEFAULT_MEAN_STD] * 3
    return cls(size={"height": int(height), "width": int(width)}, image_mean=mean, image_std=mean,
               do_resize=True, do_rescale=True, do_normalize=True)


class ImageTask(LabelTask):
    """Image classification on :class:`ImageExample` files; accuracy (or macro-F1) is the primary metric.

    Build it with :func:`blockprune.tasks.load_task` (``task="image-classification"``). The ``tokenizer``
    argument of the task methods is the image processor from :meth:`load_processor`.

    Example:
        >>> task = load_task("image-classification", train_file="pets/train")   # doctest: +SKIP
        >>> task.label_names                                                    # doctest: +SKIP
        ['cat', 'dog']
    """

    name = "image-classification"
    max_length = 0  # unused: images have the processor's size

    def __init__(self, train: list[ImageExample], eval: list[ImageExample], label_names: list[str],
                 metric: str | None = None, source: str = "") -> None:
        super().__init__(train, eval, label_names, metric, source)

    def model_class(self) -> type:
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def model_kwargs(self) -> dict[str, Any]:
        """Labels of the head; a checkpoint's head for another label count (e.g. ImageNet) is replaced."""
        return super().model_kwargs() | {"ignore_mismatched_sizes": True}

    def load_processor(self, model_path: str | os.PathLike[str], trust_remote_code: bool = False) -> Any:
        """The model's image processor, or :func:`default_image_processor` when its folder has none.

        Raises:
            DataError: the model is not a 3-channel vision model (its config has no ``image_size``).
        """
        import transformers

        config = transformers.AutoConfig.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
        if getattr(config, "image_size", None) is None:
            raise DataError(
                f"Model {model_path} (model_type {config.model_type!r}) is not an image model: its config has no "
                "image_size. Give a vision model such as ViT with --model for image-classification."
            )
        channels = getattr(config, "num_channels", 3)
        if channels != 3:
            raise DataError(f"Model {model_path} takes {channels}-channel images; only RGB (3 channels) is supported.")
        _pil()
        try:
            return transformers.AutoImageProcessor.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
        except OSError:
            return default_image_processor(config)

    def train_dataset(self, tokenizer: Any, max_length: int | None = None) -> ImageDataset:
        return ImageDataset(self.train_examples, tokenizer)

    def eval_dataset(self, tokenizer: Any, max_length: int | None = None) -> ImageDataset:
        return ImageDataset(self.eval_examples, tokenizer)

    def collate(self, tokenizer: Any) -> Any:
        return collate_images

    def describe(self) -> dict[str, Any]:
        summary = super().describe() | {"num_labels": self.num_labels, "label_names": list(self.label_names)}
        summary.pop("max_length", None)
        return summary
