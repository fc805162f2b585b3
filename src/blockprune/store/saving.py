"""Save and load a shrunk model: stock config + small-shape safetensors + a per-layer shape record.

A shrunk model has per-layer head counts and FFN widths that a stock ``config.json`` cannot express, so
``transformers``' ``from_pretrained`` cannot rebuild it. :func:`save_pruned` writes, atomically, a folder
holding ``config.json`` (unchanged: the full-size architecture), ``model.safetensors`` at the small shapes
and ``pruned_shapes.json`` (see :func:`blockprune.surgery.shrink.shape_record`). Tensors with many exact zeros
(unstructured or block pruning) are stored compactly in that same file (:mod:`blockprune.compact`).
:func:`load_pruned` builds the model from the config with its parameters on the meta device, resizes it with
:func:`blockprune.surgery.shrink.apply_shapes`, and loads the weights into it with strict key and shape checks, so
the full-size model is never allocated. Nothing is padded back with zeros, and nothing is unpickled; a Hub
repo id is downloaded only when asked for.

``save_pruned(..., quantize="int8")`` adds ``quantization.json`` (``{"scheme": "int8", ...}``) beside the fp32
weights; :func:`load_pruned` then quantizes the model as it loads (:mod:`blockprune.quantize`; deterministic,
so every load gives the same int8 model). The weights stay fp32 on disk: one file format, loadable without
quantizing too (``quantize=None``), and no pickled quantized modules.

Example:
    >>> save_pruned(model, "out/small", tokenizer)   # doctest: +SKIP
    >>> small = load_pruned("out/small")              # doctest: +SKIP
    >>> small = load_pruned("user/pruned-minilm")     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from blockprune.atomic import atomic_dir, write_text
from blockprune.deploy.quantize import QuantizeError, check_scheme, is_quantized, quantization_record, quantize_model
from blockprune.store.compact import METADATA_KEY, CompactError, decode_state, encode_state, parse_index
from blockprune.surgery.arch import UnsupportedModelError
from blockprune.surgery.shrink import ShrinkError, ShrinkResult, apply_shapes, shape_record

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
                result: ShrinkResult | None = None, quantize: str | None = None,
                compact: bool | str = "auto") -> Path:
    """Save a (shrunk) model so that :func:`load_pruned` rebuilds it exactly.

    The folder is written to a temporary path and renamed into place, replacing any previous one whole.

    Args:
        model: a supported model, usually after :func:`blockprune.surgery.shrink.shrink`.
        path: the folder to write.
        tokenizer: saved alongside with ``tokenizer.save_pretrained`` when given.
        result: the :class:`ShrinkResult` of the shrink; when given, the shape record also lists the
            original head/neuron indices kept (for reports).
        quantize: a scheme of :data:`blockprune.deploy.quantize.SCHEMES` (``"int8"``) that :func:`load_pruned` applies
            at load; ``model`` must still be fp32 (its weights are what is saved).
        compact: store tensors with many exact zeros (unstructured / block pruning) compactly, see
            :mod:`blockprune.compact`: ``"auto"`` (default) does so when it saves more than 10% of the bytes,
            ``True`` always (each tensor in its smallest form), ``False`` never (a plain safetensors file).
            :func:`load_pruned` reads both forms.

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
    tensors, index = encode_state(tensors, compact)
    metadata = {"format": "pt", _ALIASES_KEY: json.dumps(aliases)} | ({METADATA_KEY: json.dumps(index)} if index else {})
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    path = Path(path)
    with atomic_dir(path) as tmp:
        config.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata=metadata)
        record[_CHECKSUM_KEY] = file_sha256(tmp / WEIGHTS_FILE)
        write_text(tmp / SHAPES_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if quantize is not None:
            write_text(tmp / QUANTIZATION_FILE, json.dumps(quantization_record(quantize), indent=1) + "\n")
    return path


# --------------------------------------------------------------------------------------------- load


def file_sha256(file: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (the saved weights' checksum; the frontier's pinned teacher)."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_checksum(record: dict[str, Any], weights: Path, shapes: Path) -> None:
    """A byte changed anywhere in the weights (which safetensors would load silently) is caught here."""
    expected = record.get(_CHECKSUM_KEY)
    if expected is not None and file_sha256(weights) != expected:
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
    """Read every stored tensor and the file's metadata; any read failure names the file."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            stored = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise PrunedModelError(
            f"{file}: cannot read the safetensors file ({err}); it is truncated or corrupted, save the model again."
        ) from err
    return stored, metadata


def _decode_weights(file: Path, stored: dict[str, torch.Tensor], metadata: dict[str, str]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The dense tensors (compact ones decoded, see :mod:`blockprune.compact`) and the alias map."""
    try:
        tensors = decode_state(stored, parse_index(metadata))
    except CompactError as err:
        raise PrunedModelError(f"{file}: {err}; the file is corrupted, save the model again.") from err
    try:
        aliases = json.loads(metadata.get(_ALIASES_KEY, "{}"))
    except json.JSONDecodeError as err:
        raise PrunedModelError(f"{file}: the '{_ALIASES_KEY}' metadata is not JSON ({err}).") from err
    if not isinstance(aliases, dict) or any(target not in tensors for target in aliases.values()):
        raise PrunedModelError(f"{file}: the '{_ALIASES_KEY}' metadata names tensors the file does not hold.")
    return tensors, aliases


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def local_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or for a string like ``user/repo`` that is no local path, its Hub snapshot folder."""
    folder = Path(path)
    if not isinstance(path, str) or folder.exists() or not _REPO_ID.fullmatch(path):
        return folder
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id=path))
    except (OSError, ValueError) as err:  # offline / no cache (LocalEntryNotFoundError), HTTP errors, bad id
        raise PrunedModelError(
            f"{path}: no such local folder, and cannot download it as a Hugging Face Hub repo ({err}) "
            "(offline?) \u2014 give a local folder written by save_pruned, or check the repo id and the connection."
        ) from err


def _resolve_class(config: transformers.PretrainedConfig, model_class: type | None) -> type:
    if model_class is not None:
        return model_class
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    return transformers.AutoModel


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters registered inside go to the meta device as they are registered; buffers stay real.

    Each parameter exists in memory only between its creation and its registration (one at a time), and the
    model's weight initialisation then runs on meta tensors (no work). The engine does this itself rather than
    through ``accelerate``, which only the training side needs.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def _build(folder: Path, model_class: type | None, attn_implementation: str | None,
           record: dict[str, Any]) -> nn.Module:
    """The model of ``config.json`` at the recorded shapes, its parameters on the meta device (no memory, no
    random init); buffers are built for real, so those not saved (position ids, rotary frequencies) are right."""
    try:
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise PrunedModelError(f"{folder / CONFIG_FILE}: not a usable transformers config ({err}).") from err
    cls = _resolve_class(config, model_class)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with _parameters_on_meta():
        model = cls._from_config(config, **kwargs) if hasattr(cls, "_from_config") else cls.from_config(config, **kwargs)
        try:
            apply_shapes(model, record)
        except (ShrinkError, UnsupportedModelError) as err:
            raise PrunedModelError(f"{folder / SHAPES_FILE}: {err}") from err
    return model


def _tie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Make each alias the very tensor of its target again (``assign=True`` loading gives each name its own)."""
    for alias, target in aliases.items():
        owner, _, attr = alias.rpartition(".")
        module = model.get_submodule(owner)
        target_owner, _, target_attr = target.rpartition(".")
        value = getattr(model.get_submodule(target_owner), target_attr)
        if isinstance(value, nn.Parameter):
            setattr(module, attr, value)
        else:
            module._buffers[attr] = value


def _check_materialized(model: nn.Module, weights: Path) -> None:
    """Every parameter and buffer holds data after loading (a tensor left on the meta device was never saved)."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_meta:
            raise PrunedModelError(f"{weights}: tensor {name} was not saved and cannot be rebuilt; save the model "
                                   "again with this version of blockprune.")


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

    The model is built from the saved ``config.json`` with its parameters on the meta device, resized with
    :func:`blockprune.surgery.shrink.apply_shapes`, then the saved tensors (compact ones decoded) are checked by key
    and shape and become the parameters (``load_state_dict(assign=True)``): no full-size model is allocated
    or randomly initialized first, and the weights of a dense file stay mapped from it (copy-on-write: the
    file never changes). Loading the dense 87 MiB MiniLM file added a peak of 179 MiB when the full-size model
    was built first; now 12 MiB when this returns and 97 MiB once every weight has been read, in 0.12 s instead
    of 1.1 s (``benchmarks/load_memory.py``, medians of 3 fresh processes on a shared 2-core machine).

    Args:
        path: the folder written by :func:`save_pruned`, or a Hugging Face Hub repo id (``"user/repo"``, when
            no local path of that name exists) holding one: it is downloaded with
            ``huggingface_hub.snapshot_download`` (cached; honours ``HF_HUB_OFFLINE``).
        model_class: the class to build (e.g. ``BertForSequenceClassification`` or an auto class); default:
            the class named in ``config.architectures``, else ``transformers.AutoModel``.
        attn_implementation: e.g. ``"eager"`` or ``"sdpa"``; default: transformers' choice.
        verify: check the weights file against the SHA-256 that :func:`save_pruned` recorded (folders saved
            before checksums were recorded load without the check).
        quantize: ``"auto"``: quantize with the scheme of the folder's ``quantization.json``, if it has one;
            ``"int8"``: quantize (:func:`blockprune.deploy.quantize.quantize_model`; CPU, inference only); ``None``:
            load the fp32 weights as they are.

    Raises:
        PrunedModelError: the folder or a file is missing, a repo id that cannot be downloaded, a plain
            (unshrunk) save, a corrupted file, a shape record newer than this version or inconsistent with the
            config or the weights, weights that differ from the checksum recorded at save time. The message
            names the file and, for weights, the tensor.
        QuantizeError: ``quantize`` is not ``"auto"``, ``None`` nor a known scheme.

    Example:
        >>> model = load_pruned("out/small")                       # doctest: +SKIP
        >>> model(**tokenizer("hello", return_tensors="pt")).logits  # doctest: +SKIP
    """
    folder = local_folder(path)
    if quantize not in ("auto", None):
        check_scheme(quantize, "quantize=")
    _check_folder(folder)
    shapes, weights = folder / SHAPES_FILE, folder / WEIGHTS_FILE
    record = _read_record(shapes)
    stored, metadata = _read_weights(weights)
    if verify:
        _check_checksum(record, weights, shapes)
    tensors, aliases = _decode_weights(weights, stored, metadata)
    model = _build(folder, model_class, attn_implementation, record)
    full = dict(tensors)
    full.update({alias: tensors[target] for alias, target in aliases.items()})
    _check_weights(model, full, weights, shapes)
    _match_dtype(model, tensors)
    model.load_state_dict(full, strict=True, assign=True)
    _tie(model, aliases)
    _check_materialized(model, weights)
    scheme = read_quantization(folder) if quantize == "auto" else quantize
    return quantize_model(model, scheme) if scheme is not None else model.eval()
