"""Load any model folder: a ``save_pruned`` folder (shrunk shapes) or a plain ``save_pretrained`` one, and the
input processors (tokenizer, image processor) saved beside the weights.

Example:
    >>> model = load_model("runs/demo/model")                          # doctest: +SKIP
    >>> folder_processors("runs/demo/model").parts                     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers
from safetensors import SafetensorError
from torch import nn


class ModelFolderError(ValueError):
    """A plain ``save_pretrained`` folder cannot be loaded (missing, truncated or corrupted file)."""


def load_model(path: str, task_class: type | None = None, quantize: str | None = "auto") -> nn.Module:
    """Load a model folder in either format: ``save_pruned`` (has ``pruned_shapes.json``) or ``save_pretrained``.

    ``path`` may also be a Hugging Face Hub repo id (``user/repo``, no such local folder): its snapshot is
    downloaded (or taken from the cache) first. ``quantize`` is passed to :func:`blockprune.store.saving.load_pruned`
    (``None``: fp32 even if the folder says int8).
    """
    from blockprune.store.saving import SHAPES_FILE, load_pruned, local_folder

    folder = local_folder(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    if (folder / SHAPES_FILE).is_file():
        return load_pruned(folder, model_class=task_class, quantize=quantize)
    try:  # never run code shipped in a model folder from these commands
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
        names = getattr(config, "architectures", None) or []
        cls = task_class or (getattr(transformers, names[0], None) if names else None) or transformers.AutoModel
        return cls.from_pretrained(folder, trust_remote_code=False).eval()
    except (OSError, SafetensorError) as err:
        raise ModelFolderError(
            f"cannot load the model in {path} ({type(err).__name__}: {err}); a file is missing, truncated or "
            "corrupted: save the model there again"
        ) from err


# A model folder's input processors: the file that marks each one and the auto class that loads it.
PROCESSOR_FILES = {"tokenizer_config.json": "AutoTokenizer", "preprocessor_config.json": "AutoImageProcessor"}


class Processors:
    """Several input processors (e.g. a tokenizer and an image processor) saved together into one folder.

    Example:
        >>> Processors([tokenizer, image_processor]).save_pretrained("out/small")   # doctest: +SKIP
    """

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def save_pretrained(self, path: str | Path) -> None:
        """Save every processor into ``path`` (their files do not overlap)."""
        for part in self.parts:
            part.save_pretrained(path)


def folder_processors(path: str | Path) -> Processors | None:
    """The tokenizer and/or image processor saved in a model folder, or ``None`` when it has neither.

    Example:
        >>> folder_processors("runs/demo/teacher/model").parts     # doctest: +SKIP
        [BertTokenizerFast(...)]
    """
    folder = Path(path)
    parts = []
    for file, name in PROCESSOR_FILES.items():
        if not (folder / file).is_file():
            continue
        try:  # never run code shipped in a model folder
            parts.append(getattr(transformers, name).from_pretrained(str(folder), trust_remote_code=False))
        except OSError as err:
            raise ModelFolderError(
                f"cannot load the processor of {path} ({file}; {type(err).__name__}: {err}); a file is missing, "
                "truncated or corrupted: save the processor there again"
            ) from err
    return Processors(parts) if parts else None
