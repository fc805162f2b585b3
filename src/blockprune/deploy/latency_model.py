"""A measured latency model: what each layer shape costs on one device, so a budget can spend milliseconds.

FLOPs do not predict speed past about 3x: a layer keeps paying its LayerNorms, residual and bias adds and kernel
launches however few heads and neurons it keeps, and a FLOP of attention and a FLOP of the FFN cost differently
per device. Following ZipLM's idea, this module *times* one transformer layer at a grid of shapes on the device
setting a model will run in (device, dtype, threads, sequence length, batch), once, caches the table, and then
predicts the latency of any per-layer shape from it.

What is timed (one :class:`Probe` each), for every residual width ``d`` of the grid:

* ``layer``: one block, built at ``heads`` heads, ``ffn`` neurons and width ``d``, called directly on the inputs
  the model hands it. Attention and FFN are separable within a block, so the grid runs along two axes only:
  ``(0, 0)`` gives the block's fixed cost (LayerNorms, residual and bias adds), ``(h, 0)`` minus it the
  attention sublayer's cost at ``h`` heads, ``(0, f)`` minus it the FFN's cost at ``f`` neurons;
* ``stem``: a one-layer model with that empty block: minus the empty block, the embeddings and the pooler;
* ``model`` (full width only): the dense model itself, the reference every speedup is measured against.

Within a width all probes are timed round-robin (every round times each probe once, alternate rounds in reverse
order, warm-up rounds first) and each keeps its median, so drift of a shared machine hits all shapes alike. Threads
are pinned and passes timed by :mod:`blockprune.deploy.devices` (CUDA events on GPUs).

:func:`predict_ms` interpolates attention cost over heads and FFN cost over width (piecewise linear), sums the
layers, adds the stem, and scales by ``calibration`` (the dense model's measured latency over its prediction, so the
dense shapes predict exactly what was measured); between two residual widths it interpolates linearly too.
:func:`uniform_budget` and :func:`global_budget` find shapes whose predicted speedup meets a target.

Tables are cached as JSON (:func:`cache_dir`), one file per key: model type and dimensions, device and its name
(the CPU model or the GPU), threads, dtype, sequence length, batch, torch version and the grid. A stale or
unreadable file is measured again, with one line saying so. The timer is injectable (``timer=``): tests pass a
fake whose cost is a known function of the shape. Covered: model types with one attention per layer that can lose
every head (encoders, ViT); residual widths below the full one only where the type can be cut there.

Example:
    >>> table = latency_table("sentence-transformers/all-MiniLM-L6-v2", Setting(batch_size=32))  # doctest: +SKIP
    >>> budget = uniform_budget(table, 4.0)                                                       # doctest: +SKIP
    >>> budget["heads"], budget["ffn"], round(budget["predicted_speedup"], 2)                     # doctest: +SKIP
    ([4, 4, 4, 4, 4, 4], [320, 320, 320, 320, 320, 320], 4.02)
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import nn

from blockprune.atomic import write_text
from blockprune.deploy.devices import check_bench_settings, device_name, dtype_name, pass_timer
from blockprune.deploy.measure import pinned_threads, random_inputs
from blockprune.surgery.arch import features, find_blocks, get_path, iter_blocks, num_heads, num_units
from blockprune.surgery.hidden import hidden_dims_supported, resize_hidden
from blockprune.surgery.shrink import apply_shapes, must_keep_one, shape_record

FORMAT, VERSION = "blockprune-latency", 1
CACHE_ENV = "BLOCKPRUNE_LATENCY_CACHE"


class LatencyModelError(ValueError):
    """A latency table cannot be built, read or used as asked; the message says what to change."""


class BeyondTableError(LatencyModelError):
    """A target faster than every shape the table predicts (a budget's message names the most it reaches)."""


@dataclass(frozen=True)
class Setting:
    """Where and how the model will run: each field changes latency, so each is part of the cache key."""

    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None  # None: torch's current setting (resolved into the key)
    seq_len: int = 128
    batch_size: int = 1


@dataclass(frozen=True)
class Probe:
    """One thing timed: a ``layer`` block, the ``stem`` (one-layer model with an empty block) or the whole ``model``."""

    kind: str
    heads: int
    ffn: int
    hidden: int


Timer = Callable[[Sequence[Probe]], Callable[[int], float]]
"""Prepares the probes of one residual width and returns a function timing probe ``i`` once, in milliseconds."""


@dataclass(frozen=True)
class Grid:
    """The shapes timed: head counts and FFN widths (each from 0 to full) and residual widths (full first)."""

    heads: tuple[int, ...]
    ffn: tuple[int, ...]
    hidden: tuple[int, ...]


# --------------------------------------------------------------------------------------------- the model's dims
def _config(model: str | transformers.PretrainedConfig | nn.Module, trust_remote_code: bool = False) -> Any:
    if isinstance(model, str):
        return transformers.AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    config = getattr(model, "config", model)
    if not isinstance(config, transformers.PretrainedConfig):
        raise LatencyModelError(f"expected a model path, a config or a model with .config; got {type(model).__name__}")
    return config


def _build(config: Any, layers: int | None, device: str | torch.device) -> nn.Module:
    """The base model of ``config`` (with ``layers`` blocks, when given) built on ``device`` in eval mode."""
    if layers is not None:
        config = copy.deepcopy(config)
        config.num_hidden_layers = layers
    with torch.device(device):
        return transformers.AutoModel.from_config(config).eval()


def model_dims(config: Any) -> dict[str, Any]:
    """The dimensions a table depends on, read from the modules of a model built on ``meta`` (no memory).

    Raises:
        LatencyModelError: a type with several stacks or attentions per block, or one that keeps a last head.
    """
    model = _build(config, None, "meta")
    blocks = iter_blocks(model)
    stack, block = blocks[0]
    if len(stack.attention) != 1 or len({id(s) for s, _ in blocks}) != 1 or must_keep_one(block, stack.attention[0]) \
            or stack.ffn.keep_one:
        raise LatencyModelError(f"the measured latency model covers models with one stack of blocks, one attention "
                                f"each, that can lose every head and neuron (encoders, ViT); {config.model_type!r} "
                                "is not one: plan it with the FLOPs model")
    attn = stack.attention[0]
    units = num_units(block, attn)
    heads = num_heads(block, attn)
    return {"model_type": config.model_type, "layers": len(blocks), "heads": heads, "head_step": heads // units,
            "ffn": features(get_path(block, stack.ffn.up))[0], "hidden": features(get_path(block, stack.ffn.down))[0],
            "vocab_size": getattr(config, "vocab_size", None), "hidden_act": str(getattr(config, "hidden_act", "")),
            "attention": str(getattr(config, "_attn_implementation", None)),
            "hidden_cut": hidden_dims_supported(model)}


def default_grid(dims: dict[str, Any], hidden_fractions: Sequence[float] = (1.0, 0.75, 0.5, 0.25)) -> Grid:
    """A grid small enough to time in a few minutes: heads ``0, s, 2s, 4s, ..., H/2, H`` (``s``: heads per unit),
    FFN ``0, 16, 32, 64, 128`` and every eighth of the width (multiples of 16), residual widths at
    ``hidden_fractions`` (multiples of 16; the full width only where the type cannot be cut)."""
    full_heads, step, full_ffn, width = dims["heads"], dims["head_step"], dims["ffn"], dims["hidden"]
    heads = {0, full_heads, step * (full_heads // step // 2)}
    heads |= {step * 2 ** k for k in range(full_heads.bit_length()) if step * 2 ** k < full_heads}
    eighth = max(16, 16 * round(full_ffn / 8 / 16))
    ffn = {0, full_ffn} | {f for f in (16, 32, 64, 128) if f < full_ffn} | set(range(eighth, full_ffn, eighth))
    fractions = hidden_fractions if dims["hidden_cut"] else (1.0,)
    hidden = {width} | {min(width, max(16, 16 * round(width * q / 16))) for q in fractions}
    return Grid(tuple(sorted(heads)), tuple(sorted(ffn)), tuple(sorted(hidden, reverse=True)))


def _check_grid(grid: Grid, dims: dict[str, Any]) -> None:
    for name, values, full in (("heads", grid.heads, dims["heads"]), ("ffn", grid.ffn, dims["ffn"])):
        if not values or values[0] != 0 or values[-1] != full or list(values) != sorted(set(values)):
            raise LatencyModelError(f"grid {name} {list(values)} must rise from 0 to {full} without repeats")
    if any(h % dims["head_step"] for h in grid.heads):
        raise LatencyModelError(f"grid heads {list(grid.heads)} must be multiples of {dims['head_step']}")
    if not grid.hidden or grid.hidden[0] != dims["hidden"] or list(grid.hidden) != sorted(set(grid.hidden))[::-1] \
            or grid.hidden[-1] < 1 or (len(grid.hidden) > 1 and not dims["hidden_cut"]):
        raise LatencyModelError(f"grid hidden {list(grid.hidden)} must fall from the full width {dims['hidden']} "
                                "(narrower ones only where the type can be cut)")


def _probes(grid: Grid, width: int) -> list[Probe]:
    """The probes of one residual width: the empty block, each head count, each FFN width, the stem (and the model)."""
    probes = [Probe("layer", 0, 0, width)]
    probes += [Probe("layer", h, 0, width) for h in grid.heads[1:]]
    probes += [Probe("layer", 0, f, width) for f in grid.ffn[1:]]
    probes.append(Probe("stem", 0, 0, width))
    if width == grid.hidden[0]:
        probes.append(Probe("model", grid.heads[-1], grid.ffn[-1], width))
    return probes


def _layer_params(config: Any, dims: dict[str, Any], width: int) -> dict[str, float]:
    """Parameters of one block at ``width``: fixed, per head and per neuron (exactly linear in both)."""
    def count(heads: int, ffn: int) -> int:
        model = _build(config, 1, "meta")
        _reshape(model, heads, ffn, width, dims["hidden"])
        return sum(p.numel() for p in find_blocks(model)[0].parameters())

    fixed = count(0, 0)
    return {"fixed": fixed, "per_head": (count(dims["heads"], 0) - fixed) / dims["heads"],
            "per_neuron": (count(0, dims["ffn"]) - fixed) / dims["ffn"]}


def _reshape(model: nn.Module, heads: int, ffn: int, width: int, full: int) -> nn.Module:
    """Cut a one-layer model to ``heads``, ``ffn`` and residual ``width`` in place (first units kept)."""
    if width < full:
        resize_hidden(model, width)
    record = shape_record(model)
    record["layers"][0].update(heads=[heads], ffn=ffn)
    return apply_shapes(model, record)


# --------------------------------------------------------------------------------------------- real timing
class _DeviceTimer:
    """The real :data:`Timer`: builds each probe's module on the device in the dtype and times it with ``pass_timer``.

    A ``layer`` probe times the block alone, called on the arguments its one-layer model hands it (captured by a
    forward pre-hook), so the same code serves every type of the architecture table.
    """

    def __init__(self, config: Any, dims: dict[str, Any], setting: Setting, dev: torch.device, dtype: torch.dtype):
        self.config, self.dims, self.setting, self.dev, self.dtype = config, dims, setting, dev, dtype

    def __call__(self, probes: Sequence[Probe]) -> Callable[[int], float]:
        one = _build(self.config, 1, "cpu")
        inputs = random_inputs(one, self.setting.batch_size, self.setting.seq_len, self.dev, dtype=self.dtype)
        runs = []
        for probe in probes:
            if probe.kind == "model":
                runs.append(pass_timer(_build(self.config, None, "cpu").to(self.dev, self.dtype), inputs, self.dev))
                continue
            model = _reshape(copy.deepcopy(one), probe.heads, probe.ffn, probe.hidden, self.dims["hidden"])
            model.to(self.dev, self.dtype)
            if probe.kind == "stem":
                runs.append(pass_timer(model, inputs, self.dev))
                continue
            runs.append(pass_timer(_called_block(model, inputs), {}, self.dev))
        return lambda i: runs[i]()


def _called_block(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], Any]:
    """The first block of ``model``, bound to the arguments ``model(**inputs)`` hands it (seen by a pre-hook)."""
    block, seen = find_blocks(model)[0], {}

    def keep(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.update(args=args, kwargs=kwargs)

    hook = block.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        hook.remove()
    return functools.partial(block, *seen["args"], **seen["kwargs"])


# --------------------------------------------------------------------------------------------- measuring
def _round_robin(run: Callable[[int], float], count: int, warmup: int, repeats: int) -> list[list[float]]:
    """Time probes ``0..count-1`` round by round (odd rounds in reverse order): ``repeats`` times per probe."""
    times: list[list[float]] = [[] for _ in range(count)]
    for r in range(warmup + repeats):
        for i in (range(count) if r % 2 == 0 else reversed(range(count))):
            elapsed = run(i)
            if r >= warmup:
                times[i].append(elapsed)
    return times


def measure_table(model: str | transformers.PretrainedConfig | nn.Module, setting: Setting | None = None, *,
                  grid: Grid | None = None, timer: Timer | None = None, warmup: int = 2, repeats: int = 11,
                  log: Callable[[str], None] = print, trust_remote_code: bool = False) -> dict[str, Any]:
    """Time the grid (no cache; see :func:`latency_table`) and return the table, a JSON-ready dict.

    ``timer`` replaces the device timing (tests). The full width gets two extra warm-up rounds: the first is cold
    (kernels are set up), the second gives the estimate of the whole measurement, logged before the rest runs.

    Raises:
        LatencyModelError: an unsupported model, a bad grid, setting or repeat count.
        ValueError: a device or dtype this machine cannot time in (from :mod:`blockprune.deploy.devices`).
    """
    config, setting = _config(model, trust_remote_code), setting or Setting()
    key = table_key(config, setting, grid)
    dims, grid = key["dims"], _grid(key)
    if warmup < 1 or repeats < 1:
        raise LatencyModelError(f"warmup and repeats must be >= 1, got {warmup} and {repeats}")
    dev, dtype = check_bench_settings(setting.device, setting.dtype, setting.threads)
    timer = timer or _DeviceTimer(config, dims, setting, dev, dtype)
    start, widths, model_ms = time.perf_counter(), [], math.nan
    with pinned_threads(setting.threads), torch.inference_mode():
        for width in grid.hidden:
            probes = _probes(grid, width)
            run = timer(probes)
            if width == grid.hidden[0]:
                for _ in range(2):  # two extra warm-up rounds: the first is cold (kernel setup), the second estimates
                    first = [run(i) for i in range(len(probes))]
                share = sum(grid.hidden) / width
                estimate = (warmup + repeats) * (first[-1] + share * sum(first[:-1])) / 1000.0
                log(f"latency table for {dims['model_type']} ({len(grid.hidden)} widths x {len(probes) - 1} "
                    f"probes, {warmup + repeats} rounds) on {key['device_name']}: about {estimate:.0f} s")
            medians = [statistics.median(t) for t in _round_robin(run, len(probes), warmup, repeats)]
            by_probe = dict(zip(probes, medians, strict=True))
            fixed = by_probe[probes[0]]
            widths.append({
                "hidden": width, "fixed_ms": fixed,
                "attention_ms": [0.0] + [max(0.0, by_probe[Probe("layer", h, 0, width)] - fixed)
                                         for h in grid.heads[1:]],
                "ffn_ms": [0.0] + [max(0.0, by_probe[Probe("layer", 0, f, width)] - fixed) for f in grid.ffn[1:]],
                "stem_ms": max(0.0, by_probe[Probe("stem", 0, 0, width)] - fixed),
                "params": _layer_params(config, dims, width)})
            if width == grid.hidden[0]:
                model_ms = by_probe[probes[-1]]
    table = {"format": FORMAT, "version": VERSION, "key": key, "widths": widths, "model_ms": model_ms,
             "calibration": 1.0, "warmup": warmup, "repeats": repeats,
             "seconds": round(time.perf_counter() - start, 2)}
    raw = _raw_ms(table, [dims["heads"]] * dims["layers"], [dims["ffn"]] * dims["layers"], dims["hidden"])
    table["calibration"] = model_ms / raw if raw > 0 else 1.0
    return table


# --------------------------------------------------------------------------------------------- the cache
def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where tables live: ``override``, else ``$BLOCKPRUNE_LATENCY_CACHE``, else ``$XDG_CACHE_HOME/blockprune/latency``
    (``~/.cache/blockprune/latency`` when unset)."""
    if override is not None:
        return Path(override)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "blockprune" / "latency"


def table_key(model: str | transformers.PretrainedConfig | nn.Module, setting: Setting | None = None,
              grid: Grid | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Everything a table's numbers depend on, as it reads back from JSON: the model's dims, the device setting
    (threads resolved, the device's own name), the torch version and the grid (default: :func:`default_grid`)."""
    config, setting = _config(model, trust_remote_code), setting or Setting()
    dims = model_dims(config)
    grid = grid or default_grid(dims)
    _check_grid(grid, dims)
    for name in ("seq_len", "batch_size"):
        value = getattr(setting, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LatencyModelError(f"{name} {value!r} must be a whole number >= 1")
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and setting.seq_len > positions:
        raise LatencyModelError(f"seq_len {setting.seq_len} is longer than the model's {positions} positions")
    dev, dtype = check_bench_settings(setting.device, setting.dtype, setting.threads)
    key = {"dims": dims, "device": str(dev), "device_name": device_name(dev), "dtype": dtype_name(dtype),
           "threads": setting.threads or torch.get_num_threads(), "seq_len": setting.seq_len,
           "batch_size": setting.batch_size, "torch": torch.__version__, "grid": asdict(grid)}
    return json.loads(json.dumps(key))


def _grid(key: dict[str, Any]) -> Grid:
    return Grid(**{name: tuple(values) for name, values in key["grid"].items()})


def cache_path(key: dict[str, Any], folder: str | os.PathLike[str] | None = None) -> Path:
    """The file of the table with ``key``: the model type and a hash of the whole key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(folder) / f"{key['dims']['model_type']}-{digest}.json"


def latency_table(model: str | transformers.PretrainedConfig | nn.Module, setting: Setting | None = None, *,
                  grid: Grid | None = None, folder: str | os.PathLike[str] | None = None, refresh: bool = False,
                  timer: Timer | None = None, warmup: int = 2, repeats: int = 11, log: Callable[[str], None] = print,
                  trust_remote_code: bool = False) -> dict[str, Any]:
    """The table of ``model`` in ``setting``: from the cache when it holds a valid one for the same key, else measured
    (:func:`measure_table`) and written there. ``refresh`` measures again whatever the cache holds."""
    key = table_key(model, setting, grid, trust_remote_code)
    path = cache_path(key, folder)
    if path.exists() and not refresh:
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
            check_table(table)
            if table["key"] != key:
                raise LatencyModelError("it was measured for other settings")
            return table
        except (OSError, ValueError, KeyError, TypeError) as err:
            log(f"latency table {path} is stale or unreadable ({str(err).splitlines()[0][:120]}); measuring again")
    table = measure_table(model, setting, grid=_grid(key), timer=timer, warmup=warmup, repeats=repeats,
                          log=log, trust_remote_code=trust_remote_code)
    try:
        write_text(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
        log(f"latency table measured in {table['seconds']:.0f} s, cached in {path}")
    except OSError as err:  # a read-only cache costs a measurement next time, not this result
        log(f"latency table measured in {table['seconds']:.0f} s, not cached ({err})")
    return table


def check_table(table: Any) -> None:
    """Raise :class:`LatencyModelError` unless ``table`` is a complete table of this version."""
    try:
        if table.get("format") != FORMAT or table.get("version") != VERSION:
            raise LatencyModelError(f"not a {FORMAT} table of version {VERSION}")
        grid, dims = table["key"]["grid"], table["key"]["dims"]
        widths = [w["hidden"] for w in table["widths"]]
        if widths != list(grid["hidden"]):
            raise LatencyModelError(f"its widths {widths} are not the grid's {grid['hidden']}")
        for entry in table["widths"]:
            numbers = [entry["fixed_ms"], entry["stem_ms"], *entry["attention_ms"], *entry["ffn_ms"],
                       *entry["params"].values()]
            if len(entry["attention_ms"]) != len(grid["heads"]) or len(entry["ffn_ms"]) != len(grid["ffn"]) or \
                    not all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in numbers):
                raise LatencyModelError(f"width {entry['hidden']} is incomplete or holds a bad number")
        if not (table["model_ms"] > 0 and table["calibration"] > 0 and dims["layers"] >= 1):
            raise LatencyModelError("it has no positive model latency")
    except (KeyError, TypeError, AttributeError) as err:
        raise LatencyModelError(f"not a complete latency table ({type(err).__name__}: {err})") from None


# --------------------------------------------------------------------------------------------- prediction
def _at_width(table: dict[str, Any], width: int) -> dict[str, Any]:
    entry = next((w for w in table["widths"] if w["hidden"] == width), None)
    if entry is None:
        raise LatencyModelError(f"hidden width {width} is not one the table timed: {[w['hidden'] for w in table['widths']]}")
    return entry


def _layer_ms(table: dict[str, Any], entry: dict[str, Any], heads: float, ffn: float) -> float:
    grid = table["key"]["grid"]
    return entry["fixed_ms"] + float(np.interp(heads, grid["heads"], entry["attention_ms"])) + \
        float(np.interp(ffn, grid["ffn"], entry["ffn_ms"]))


def _raw_ms(table: dict[str, Any], heads: Sequence[int], ffn: Sequence[int], hidden: int) -> float:
    """Stem plus every layer at residual ``hidden`` (interpolated between the two timed widths around it)."""
    widths = [w["hidden"] for w in table["widths"]]
    upper = min((w for w in widths if w >= hidden), default=None)
    lower = max((w for w in widths if w <= hidden), default=None)
    if upper is None or lower is None:
        raise LatencyModelError(f"hidden width {hidden} is outside the widths the table timed ({min(widths)} to "
                                f"{max(widths)}); measure a grid that reaches it")

    def at(width: int) -> float:
        entry = _at_width(table, width)
        return entry["stem_ms"] + sum(_layer_ms(table, entry, h, f) for h, f in zip(heads, ffn, strict=True))

    if upper == lower:
        return at(upper)
    weight = (hidden - lower) / (upper - lower)
    return (1 - weight) * at(lower) + weight * at(upper)


def predict_ms(table: dict[str, Any], heads_per_layer: Sequence[int], ffn_per_layer: Sequence[int],
               hidden: int | None = None) -> float:
    """Predicted latency (ms) of the model with these heads and FFN widths per layer at residual ``hidden``
    (``None``: full), in the table's setting.

    Raises:
        LatencyModelError: a bad table, another layer count, or a count outside what the table timed.
    """
    check_table(table)
    dims = table["key"]["dims"]
    hidden = dims["hidden"] if hidden is None else hidden
    heads, ffn = list(heads_per_layer), list(ffn_per_layer)
    counts = [*heads, *ffn, hidden]
    if len(heads) != dims["layers"] or len(ffn) != dims["layers"] or \
            not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
        raise LatencyModelError(f"give {dims['layers']} whole head counts and {dims['layers']} FFN widths (and a whole "
                                f"hidden width); got {heads}, {ffn}, {hidden!r}")
    if not (all(0 <= h <= dims["heads"] for h in heads) and all(0 <= f <= dims["ffn"] for f in ffn)):
        raise LatencyModelError(f"heads must lie in 0..{dims['heads']} and FFN widths in 0..{dims['ffn']}; "
                                f"got {heads}, {ffn}")
    return table["calibration"] * _raw_ms(table, heads, ffn, hidden)


def predicted_speedup(table: dict[str, Any], shapes: dict[str, Any]) -> float:
    """The dense model's measured latency over the predicted latency of ``shapes``: a plan (``heads``, ``ffn``, an
    optional ``hidden`` width or ``{"after": width}``) or a shape record (``layers`` of ``heads``/``ffn``)."""
    if "layers" in shapes:
        heads = [sum(layer["heads"]) for layer in shapes["layers"]]
        ffn = [layer["ffn"] for layer in shapes["layers"]]
    else:
        heads, ffn = shapes.get("heads"), shapes.get("ffn")
    if heads is None or ffn is None:
        raise LatencyModelError("shapes need 'heads' and 'ffn' per layer (a plan) or 'layers' (a shape record)")
    hidden = shapes.get("hidden")
    hidden = hidden.get("after") if isinstance(hidden, dict) else hidden
    return table["model_ms"] / predict_ms(table, heads, ffn, hidden)


# --------------------------------------------------------------------------------------------- budgets
def shape_budget(table: dict[str, Any], kind: str, target: float, heads: list[int], ffn: list[int], hidden: int
                 ) -> dict[str, Any]:
    """The budget record of these per-layer shapes at residual ``hidden``: shapes, predicted ms and speedup."""
    dims, entry = table["key"]["dims"], _at_width(table, hidden)
    ms = predict_ms(table, heads, ffn, hidden)
    p = entry["params"]
    full = _at_width(table, dims["hidden"])["params"]
    kept = sum(p["fixed"] + p["per_head"] * h + p["per_neuron"] * f for h, f in zip(heads, ffn, strict=True))
    return {"kind": kind, "target": target, "heads": heads, "heads_by_attention": [[h] for h in heads], "ffn": ffn,
            "hidden": hidden, "predicted_ms": ms, "model_ms": table["model_ms"],
            "predicted_speedup": table["model_ms"] / ms, "layer_params": round(kept),
            "layer_params_dense": round(dims["layers"] * (full["fixed"] + full["per_head"] * dims["heads"]
                                                          + full["per_neuron"] * dims["ffn"]))}


def _check_target(target: float) -> None:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 1:
        raise LatencyModelError(f"target speedup {target!r} must be a number greater than 1 (1 = the dense model)")


def ffn_steps(full: int, multiple: int) -> list[int]:
    """The FFN widths a budget may choose: multiples of ``multiple`` below ``full``, and ``full``."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise LatencyModelError(f"ffn_multiple {multiple!r} must be a whole number >= 1")
    return sorted({*range(0, full, multiple), full})


def even_ffn(dims: dict[str, Any], heads: int, multiple: int) -> int:
    """The FFN width at the fraction ``heads`` keep of all heads, rounded to ``multiple`` (the even family)."""
    return min(dims["ffn"], multiple * round(dims["ffn"] * heads / dims["heads"] / multiple))


def uniform_budget(table: dict[str, Any], target: float, *, hidden: bool | int = False, ffn_multiple: int = 16,
                   min_heads: int = 1, even: bool = False) -> dict[str, Any]:
    """The same shape in every layer whose predicted speedup meets ``target`` with the most layer parameters kept.

    Searches every head count from ``min_heads`` (in whole units; by default every layer keeps some attention, as
    heads often cost more per parameter than neurons and a model without any mixes no tokens), every FFN width in
    multiples of ``ffn_multiple`` and, with ``hidden=True``, every residual width the table timed (an int: that one
    width, which the table must have timed; False: the full width). Returns heads, ffn,
    hidden, predicted ms and speedup, parameters kept. ``even`` keeps the FFN at the fraction the heads keep (the
    FLOPs planner's shape family, rounded to ``ffn_multiple``): a drop-in whose only change is the speed model.

    Raises:
        LatencyModelError: a bad target, or one beyond every shape (the message names the most reachable speedup).
    """
    check_table(table)
    _check_target(target)
    dims = table["key"]["dims"]
    widths = [w["hidden"] for w in table["widths"]] if hidden is True else [hidden or dims["hidden"]]
    best, fastest = None, math.inf
    for width in widths:
        entry = _at_width(table, width)
        p = entry["params"]
        for h in range(0, dims["heads"] + 1, dims["head_step"]):
            if h < min_heads:
                continue
            for f in ffn_steps(dims["ffn"], ffn_multiple):
                if even and f != even_ffn(dims, h, ffn_multiple):
                    continue
                ms = table["calibration"] * (entry["stem_ms"] + dims["layers"] * _layer_ms(table, entry, h, f))
                fastest = min(fastest, ms)
                params = p["fixed"] + p["per_head"] * h + p["per_neuron"] * f
                if table["model_ms"] / ms >= target and (best is None or (params, -ms) > best[0]):
                    best = ((params, -ms), h, f, width)
    if best is None:
        raise BeyondTableError(f"target speedup {target}x is beyond the table: uniform shapes reach at most "
                                f"{table['model_ms'] / fastest:.2f}x at residual width {', '.join(map(str, widths))}")
    _, h, f, width = best
    return shape_budget(table, "uniform", target, [h] * dims["layers"], [f] * dims["layers"], width)


def global_budget(table: dict[str, Any], target: float, importance: Callable[[int, str], Sequence[float]], *,
                  hidden: int | None = None, ffn_multiple: int = 16) -> dict[str, Any]:
    """Per-layer shapes (layers may end uneven) whose predicted speedup meets ``target``, removing units greedily by
    least importance per millisecond saved.

    ``importance(layer, "heads")`` gives one score per attention unit (``heads / head_step`` of them) and
    ``importance(layer, "ffn")`` one per FFN neuron; in each layer the least important go first. Each step removes,
    across all layers, the next head unit or the next ``ffn_multiple`` neurons whose summed score per millisecond
    saved (from the table) is smallest, until the target is met. ``hidden`` fixes a residual width the table timed.

    Raises:
        LatencyModelError: a bad target or scores, or a target beyond every shape at that width.
    """
    check_table(table)
    _check_target(target)
    dims = table["key"]["dims"]
    width = dims["hidden"] if hidden is None else hidden
    entry, step, layers = _at_width(table, width), dims["head_step"], dims["layers"]
    ffn_steps(dims["ffn"], ffn_multiple)
    scores = {}
    for layer in range(layers):
        for kind, count in (("heads", dims["heads"] // step), ("ffn", dims["ffn"])):
            values = [float(v) for v in importance(layer, kind)]
            if len(values) != count or not all(math.isfinite(v) for v in values):
                raise LatencyModelError(f"importance({layer}, {kind!r}) must give {count} finite scores, got "
                                        f"{len(values)}")
            scores[layer, kind] = sorted(values)
    heads, ffn = [dims["heads"]] * layers, [dims["ffn"]] * layers
    removed = {key: 0 for key in scores}
    ms = predict_ms(table, heads, ffn, width)
    while table["model_ms"] / ms < target:
        candidates = []  # (importance lost per ms saved, layer, part, units removed, width removed)
        for layer in range(layers):
            now = _layer_ms(table, entry, heads[layer], ffn[layer])
            if heads[layer]:
                loss = scores[layer, "heads"][removed[layer, "heads"]]
                saved = now - _layer_ms(table, entry, heads[layer] - step, ffn[layer])
                candidates.append((loss / max(saved, 1e-9), layer, "heads", 1, step))
            if ffn[layer]:
                chunk = ffn[layer] % ffn_multiple or ffn_multiple
                start = removed[layer, "ffn"]
                loss = sum(scores[layer, "ffn"][start:start + chunk])
                saved = now - _layer_ms(table, entry, heads[layer], ffn[layer] - chunk)
                candidates.append((loss / max(saved, 1e-9), layer, "ffn", chunk, chunk))
        if not candidates:
            raise BeyondTableError(f"target speedup {target}x is beyond the table at hidden width {width}: every "
                                    f"layer emptied reaches {table['model_ms'] / ms:.2f}x")
        _, layer, kind, units, cut = min(candidates)
        removed[layer, kind] += units
        if kind == "heads":
            heads[layer] -= cut
        else:
            ffn[layer] -= cut
        ms = predict_ms(table, heads, ffn, width)
    return shape_budget(table, "global", target, heads, ffn, width)
