"""Save and load a shrunk model: stock config + small-shape safetensors + a per-layer shape record.

A shrunk model has per-layer head counts and FFN widths that a stock ``config.json`` cannot express, so
``transformers``' ``from_pretrained`` cannot rebuild it. :func:`save_pruned` writes, atomically, a folder
holding ``config.json`` (unchanged: the full-size architecture), ``model.safetensors`` at the small shapes
and ``pruned_shapes.json`` (see :func:`blockprune.shrink.shape_record`). :func:`load_pruned` builds the
full-size model from the config without downloading anything, resizes it with
:func:`blockprune.shrink.apply_shapes`, and loads the weights with strict key and shape checks. Nothing is
padded back with zeros, and nothing is unpickled.

``save_pruned(..., quantize="int8")`` adds ``quantization.json`` (``{"scheme": "int8", ...}``) beside the fp32
weights; :func:`load_pruned` then quantizes the model as it loads (:mod:`blockprune.quantize`; deterministic,
so every load gives the same int8 model). The weights stay fp32 on disk: one file format, loadable without
quantizing too (``quantize=None``), and no pickled quantized modules.

Example:
    >>> save_pruned(model, "out/small", tokenizer)   # doctest: +SKIP
    >>> small = load_pruned("out/small")              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .arch import UnsupportedModelError
from .atomic import atomic_dir, write_text
from .quantize import QuantizeError, check_scheme, is_quantized, quantization_record, quantize_model
from .shrink import ShrinkError, ShrinkResult, apply_shapes, shape_record

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SHAPES_FILE = "pruned_shapes.json"
QUANTIZATION_FILE = "quantization.json"
_CHECKSUM_KEY = "weights_sha256"  # in the shape record: the weights file as saved
_ALIASES_KEY = "blockprune_aliases"


class PrunedModelError(ValueError):
    """A saved pruned-model folder is missing, incomplete, corrupted or inconsistent."""


# --------------------------------------------------------------------------------------------- save


def _split_tied(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each tensor once: names that alias an earlier tensor (tied weights) map to that name.

    Returns the CPU, contiguous tensors to write and ``{alias: saved name}``.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    storages: set[int] = set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel():
            key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype)
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        tensor = tensor.cpu().contiguous()
        if tensor.numel():
            storage = tensor.untyped_storage().data_ptr()
            if storage in storages:  # a distinct view of shared memory: safetensors needs its own copy
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors, aliases


def save_pruned(model: nn.Module, path: str | os.PathLike[str], tokenizer: Any = None,
                result: ShrinkResult | None = None, quantize: str | None = None) -> Path:
    """Save a (shrunk) model so that :func:`load_pruned` rebuilds it exactly.

    The folder is written to a temporary path and renamed into place, replacing any previous one whole.

    Args:
        model: a supported model, usually after :func:`blockprune.shrink.shrink`.
        path: the folder to write.
        tokenizer: saved alongside with ``tokenizer.save_pretrained`` when given.
        result: the :class:`ShrinkResult` of the shrink; when given, the shape record also lists the
            original head/neuron indices kept (for reports).
        quantize: a scheme of :data:`blockprune.quantize.SCHEMES` (``"int8"``) that :func:`load_pruned` applies
            at load; ``model`` must still be fp32 (its weights are what is saved).

    Returns:
        The folder path.

    Example:
        >>> save_pruned(model, "out/small", tokenizer, result=shrink(model))   # doctest: +SKIP
        PosixPath('out/small')
    """
    if quantize is not None:
        check_scheme(quantize, "quantize=")
    if is_quantized(model):
        raise PrunedModelError(f"{type(model).__name__} is quantized; save the fp32 model, with quantize='int8' "
                               "to have load_pruned quantize it at load")
    record = shape_record(model, result)
    tensors, aliases = _split_tied(model.state_dict())
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    path = Path(path)
    with atomic_dir(path) as tmp:
        config.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", _ALIASES_KEY: json.dumps(aliases)})
        record[_CHECKSUM_KEY] = _sha256(tmp / WEIGHTS_FILE)
        write_text(tmp / SHAPES_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if quantize is not None:
            write_text(tmp / QUANTIZATION_FILE, json.dumps(quantization_record(quantize), indent=1) + "\n")
    return path


# --------------------------------------------------------------------------------------------- load


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_checksum(record: dict[str, Any], weights: Path, shapes: Path) -> None:
    """A byte changed anywhere in the weights (which safetensors would load silently) is caught here."""
    expected = record.get(_CHECKSUM_KEY)
    if expected is not None and _sha256(weights) != expected:
        raise PrunedModelError(
            f"{weights}: its SHA-256 differs from the one {shapes.name} recorded when it was saved; the file was "
            "changed or damaged since. Save the model again (or pass verify=False to load it anyway)."
        )


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise PrunedModelError(f"{folder}: no such folder; save a pruned model there with save_pruned first.")
    if not (folder / SHAPES_FILE).is_file():
        if (folder / WEIGHTS_FILE).is_file() or (folder / "pytorch_model.bin").is_file():
            raise PrunedModelError(
                f"{folder} has no {SHAPES_FILE}: it is a plain (unshrunk) save. Load it with transformers' "
                "from_pretrained, or save a shrunk model with blockprune's save_pruned."
            )
        raise PrunedModelError(f"{folder / SHAPES_FILE} is missing; save the model with save_pruned.")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise PrunedModelError(f"{folder / name} is missing; the folder is incomplete, save it again.")


def _read_record(file: Path) -> dict[str, Any]:
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PrunedModelError(f"{file}: not readable JSON ({err}); save the model again.") from err
    if not isinstance(record, dict):
        raise PrunedModelError(f"{file}: expected a JSON object, found {type(record).__name__}.")
    return record


def _read_weights(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the alias map; any read failure names the file."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise PrunedModelError(
            f"{file}: cannot read the safetensors file ({err}); it is truncated or corrupted, save the model again."
        ) from err
    try:
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except json.JSONDecodeError as err:
        raise PrunedModelError(f"{file}: the '{_ALIASES_KEY}' metadata is not JSON ({err}).") from err
    if not isinstance(aliases, dict) or any(target not in tensors for target in aliases.values()):
        raise PrunedModelError(f"{file}: the '{_ALIASES_KEY}' metadata names tensors the file does not hold.")
    return tensors, aliases


def _resolve_class(config: transformers.PretrainedConfig, model_class: type | None) -> type:
    if model_class is not None:
        return model_class
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    return transformers.AutoModel


def _build(folder: Path, model_class: type | None, attn_implementation: str | None) -> nn.Module:
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise PrunedModelError(f"{folder / CONFIG_FILE}: not a usable transformers config ({err}).") from err
    cls = _resolve_class(config, model_class)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    if hasattr(cls, "_from_config"):
        return cls._from_config(config, **kwargs)
    return cls.from_config(config, **kwargs)


def _check_weights(model: nn.Module, tensors: dict[str, torch.Tensor], weights: Path, shapes: Path) -> None:
    """Strict key and shape comparison between the resized model and the file, naming the first difference."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise PrunedModelError(
            f"{weights}: tensor names do not match the model built from {CONFIG_FILE} and {SHAPES_FILE}; "
            f"missing: {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected: {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    for name, want in expected.items():
        have = tensors[name]
        if tuple(have.shape) != tuple(want.shape):
            raise PrunedModelError(
                f"{weights}: tensor {name} has shape {tuple(have.shape)}, but {shapes} (with {CONFIG_FILE}) "
                f"says {tuple(want.shape)}."
            )


def _match_dtype(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Cast the model to the saved floating dtype when the file holds a single one that differs."""
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and params != dtypes:
        model.to(dtypes.pop())


def read_quantization(folder: str | os.PathLike[str]) -> str | None:
    """The scheme recorded in ``folder/quantization.json``, or ``None`` when the folder has no such file."""
    file = Path(folder) / QUANTIZATION_FILE
    if not file.is_file():
        return None
    record = _read_record(file)
    try:
        return check_scheme(record.get("scheme"), f"{file}: scheme ")
    except QuantizeError as err:
        raise PrunedModelError(f"{err}; save the model again") from err


def load_pruned(path: str | os.PathLike[str], model_class: type | None = None,
                attn_implementation: str | None = None, verify: bool = True,
                quantize: str | None = "auto") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`, at its small shapes, in eval mode.

    Nothing is downloaded: the model is built from the saved ``config.json``, resized with
    :func:`blockprune.shrink.apply_shapes`, then its weights are loaded with strict key and shape checks.

    Args:
        path: the folder written by :func:`save_pruned`.
        model_class: the class to build (e.g. ``BertForSequenceClassification`` or an auto class); default:
            the class named in ``config.architectures``, else ``transformers.AutoModel``.
        attn_implementation: e.g. ``"eager"`` or ``"sdpa"``; default: transformers' choice.
        verify: check the weights file against the SHA-256 that :func:`save_pruned` recorded (folders saved
            before checksums were recorded load without the check).
        quantize: ``"auto"``: quantize with the scheme of the folder's ``quantization.json``, if it has one;
            ``"int8"``: quantize (:func:`blockprune.quantize.quantize_model`; CPU, inference only); ``None``:
            load the fp32 weights as they are.

    Raises:
        PrunedModelError: the folder or a file is missing, a plain (unshrunk) save, a corrupted file, a shape
            record newer than this version or inconsistent with the config or the weights, weights that differ
            from the checksum recorded at save time. The message names
            the file and, for weights, the tensor.
        QuantizeError: ``quantize`` is not ``"auto"``, ``None`` nor a known scheme.

    Example:
        >>> model = load_pruned("out/small")                       # doctest: +SKIP
        >>> model(**tokenizer("hello", return_tensors="pt")).logits  # doctest: +SKIP
    """
    folder = Path(path)
    if quantize not in ("auto", None):
        check_scheme(quantize, "quantize=")
    _check_folder(folder)
    shapes, weights = folder / SHAPES_FILE, folder / WEIGHTS_FILE
    record = _read_record(shapes)
    tensors, aliases = _read_weights(weights)
    if verify:
        _check_checksum(record, weights, shapes)
    model = _build(folder, model_class, attn_implementation)
    try:
        apply_shapes(model, record)
    except (ShrinkError, UnsupportedModelError) as err:
        raise PrunedModelError(f"{shapes}: {err}") from err
    full = dict(tensors)
    full.update({alias: tensors[target] for alias, target in aliases.items()})
    _check_weights(model, full, weights, shapes)
    _match_dtype(model, tensors)
    model.load_state_dict(full, strict=True)
    scheme = read_quantization(folder) if quantize == "auto" else quantize
    return quantize_model(model, scheme) if scheme is not None else model.eval()
