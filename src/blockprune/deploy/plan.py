"""Know before you train: the sparsities, per-layer shapes, size and speedup a pruning target implies.

:func:`planned_config` turns a preset and a target (``target_speedup`` or ``sparsity``) into the
:class:`~blockprune.engine.config.PruningConfig` a run would train with (the pipeline calls it too). :func:`make_plan`
then reads the dense model's structure from its config alone, built on the ``meta`` device (no weights are
read or allocated), and works out what shrink would leave of every layer:

* ``exact``: whole heads / whole neurons with a per-matrix method (``topk``, ``magnitude``): the
  :class:`~blockprune.engine.pruner.Pruner` keeps :func:`~blockprune.engine.masks.kept_count` units of every layer, so
  the shapes after shrink are known now (GQA: whole key/value heads with their query heads).
* ``budget``: whole heads / neurons with ``sigmoid_threshold`` (soft movement): the total is fixed, but one
  global ranking of the scores decides which layers keep what during training. Shown spread evenly.
* ``upper bound``: tiles inside a matrix (``block``/``hybrid`` attention, ``unstructured``): shrink removes a
  head only if training empties all its V tiles or all its O tiles, a neuron only if its up row or down
  column empties. Attention is shown with every head kept (any head
  emptied is extra speed, or with ``ffn_budget="flops"`` FFN width: the FFN shown is then its least); a tiled FFN
  is shown as if its weight budget went into whole neurons.

With ``hidden_sparsity = h`` the residual is cut to :func:`~blockprune.engine.hidden_scores.hidden_keep` dimensions
first (:func:`narrowed`): every linear reading or writing the residual (all of Q/K/V/O, up, down) costs ``1 - h`` of
its FLOPs, the attention matmuls are unchanged, and a speedup target is split: the cut gives its own factor, and
heads and neurons are planned for the rest (:func:`planned_config`). Exact shapes meet a speedup target in whole
units (:func:`met_in_whole_units`): heads round to the nearest count, FFN widths pad, and the FFN gives it back.

The planned model (the dense model resized with :func:`~blockprune.surgery.shrink.apply_shapes`) gives parameters,
FLOPs per token and the theoretical speedup through :mod:`blockprune.measure`; :func:`measure_plan` times a
randomly initialised model of those shapes against the dense one on this machine (a measured preview).
Nothing here imports the training side.

``speed_model="measured"`` (:func:`measured_config`) spends a measured latency budget instead of FLOPs: the
device's latency table (:mod:`blockprune.deploy.latency_model`) picks the uniform shape whose predicted speedup
meets the target, in the FLOPs planner's shape family (FFN kept at the heads' fraction), so the two speed models
differ only in what they count. The plan then shows the predicted and the FLOPs speedup of the same shapes.

Example:
    >>> p = make_plan(None, planned_config("struct", target_speedup=2.0))      # doctest: +SKIP
    >>> p["heads"], p["ffn"], round(p["theoretical_speedup"], 2)              # doctest: +SKIP
    ([6, 6, 6, 6, 6, 6], [768, 768, 768, 768, 768, 768], 2.0)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from blockprune.deploy.counts import count_params, flops_per_token
from blockprune.deploy.devices import check_bench_settings
from blockprune.deploy.latency_fit import ShapeTimer, fastest_even, fit_budget
from blockprune.deploy.latency_model import (
    BeyondTableError,
    LatencyModelError,
    Setting,
    Timer,
    cache_path,
    latency_table,
    uniform_budget,
)
from blockprune.deploy.measure import speedup
from blockprune.deploy.plan_text import to_json, to_text  # noqa: F401  (the plan's text forms, importable here)
from blockprune.engine.budget import MIN_FFN_DENSITY
from blockprune.engine.config import HEAD, NEURON, PRESETS, ConfigError, PruningConfig
from blockprune.engine.hidden_scores import hidden_keep
from blockprune.engine.masks import METHODS, kept_count
from blockprune.surgery.arch import UnsupportedModelError, features, get_path, iter_blocks, num_heads, num_units
from blockprune.surgery.hidden import hidden_width, resize_hidden
from blockprune.surgery.shrink import ShrinkError, apply_shapes, check_ffn_multiple, must_keep_one, shape_record

MAX_SPARSITY = 0.95
EXACT, BUDGET, UPPER_BOUND = "exact", "budget", "upper bound"
SPEED_MODELS = ("flops", "measured")


class PlanError(ValueError):
    """A target cannot be planned as asked; the message names the option and the fix."""


# ------------------------------------------------------------------------------------------ targets
def model_source(model: str | None) -> str:
    """The model a plan or run reads: the embedded MiniLM when ``None``; a missing local folder is an error."""
    if model is None:
        from blockprune.tasks.embedded import embedded_model_path

        return str(embedded_model_path())
    if (os.path.sep in model or model.startswith(".")) and not Path(model).is_dir():
        raise PlanError(f"--model {model} does not exist; give a local model folder or a hub name")
    return model


def dense_model(model_path: str, trust_remote_code: bool = False, device: str = "meta") -> nn.Module:
    """The base model of ``model_path`` built from its config alone (``meta``: no memory, no weights read)."""
    config = transformers.AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device(device):
        return transformers.AutoModel.from_config(config, trust_remote_code=trust_remote_code).eval()


def flops_split(model_path: str, seq_len: int, trust_remote_code: bool = False) -> tuple[int, int]:
    """FLOPs per token of the attention part (Q/K/V/O + matmuls) and of the FFN part of a dense model."""
    flops = flops_per_token(dense_model(model_path, trust_remote_code), seq_len)
    return flops["total"] - flops["ffn_linear"], flops["ffn_linear"]


def narrowed(model: nn.Module, hidden_sparsity: float) -> nn.Module:
    """``model`` itself at ``hidden_sparsity`` 0, else a copy with its residual cut to :func:`hidden_keep` dimensions.

    Raises:
        PlanError: the model type cannot lose residual dimensions (the message names the supported ones).
    """
    if not hidden_sparsity:
        return model
    small = copy.deepcopy(model)
    try:
        resize_hidden(small, hidden_keep(hidden_width(small), hidden_sparsity))
    except (UnsupportedModelError, ShrinkError) as err:
        raise PlanError(f"--set hidden_sparsity={hidden_sparsity}: {err}") from None
    return small


def hidden_split(model_path: str, seq_len: int, hidden_sparsity: float,
                 trust_remote_code: bool = False) -> tuple[int, int, float]:
    """FLOPs per token of attention and of the FFN once the residual is cut, and the speedup that cut gives alone."""
    dense = dense_model(model_path, trust_remote_code)
    before = flops_per_token(dense, seq_len)["total"]
    flops = flops_per_token(narrowed(dense, hidden_sparsity), seq_len)
    return flops["total"] - flops["ffn_linear"], flops["ffn_linear"], before / flops["total"]


def most_speedup(attention_flops: int, ffn_flops: int, head_pruning: bool, flops_budget: bool = False) -> float:
    """The largest speedup :func:`sparsities_for_speedup` can plan for these FLOPs (at most MAX_SPARSITY removed)."""
    keep = 1.0 - MAX_SPARSITY
    if head_pruning or flops_budget:
        return 1.0 / keep
    return min(1.0 / keep, (attention_flops + ffn_flops) / (attention_flops + keep * ffn_flops))


def sparsities_for_speedup(target: float, attention_flops: int, ffn_flops: int, head_pruning: bool,
                           flops_budget: bool = False) -> dict[str, float]:
    """Sparsities that give a theoretical ``target`` speedup of the transformer layers.

    With whole heads and neurons (``struct``), every pruned FLOP goes away after shrink, so both keep
    ``1 / target``. Tiles inside attention only pay off when a head empties completely, which cannot be
    planned; with ``flops_budget`` (``ffn_budget="flops"``, what :func:`planned_config` sets for a speedup
    target) ``sparsity`` is the FLOPs share of attention and FFN together, ``1 - 1/target``, and the FFN keeps
    what the heads still there leave of it (:mod:`blockprune.budget`). Without it the FFN alone is sized to
    reach the target (attention heads all kept), and attention is pruned at ``1 - 1/target``: every head it
    empties is extra speed, reported as achieved.
    """
    if target <= 1.0:
        raise PlanError(f"--target-speedup {target} must be greater than 1 (1 = the dense model)")
    dense_keep = 1.0 / target
    if head_pruning or flops_budget:
        ffn_keep = dense_keep
    else:
        ffn_keep = ((attention_flops + ffn_flops) / target - attention_flops) / ffn_flops
    if 1.0 - dense_keep > MAX_SPARSITY or 1.0 - ffn_keep > MAX_SPARSITY:
        hint = ("" if head_pruning or flops_budget else " with tiles in attention and ffn_budget=fixed (drop it: "
                "ffn_budget=flops lets emptied heads pay; or try --preset struct, which removes whole heads)")
        raise PlanError(
            f"--target-speedup {target} cannot be reached{hint}: it needs more than {MAX_SPARSITY:.0%} of the "
            "prunable weights removed. Ask for less."
        )
    return {"sparsity": round(1.0 - ffn_keep, 4), "attention_sparsity": round(1.0 - dense_keep, 4)}


def target_without_ignored(target: float, ignored: int, layers: int) -> float:
    """The speedup the pruned layers need so that the whole model reaches ``target`` with ``ignored`` dense layers.

    Layers of one model cost the same, so the dense ones keep ``ignored / layers`` of the FLOPs.
    """
    dense = ignored / layers
    keep = (1.0 / target - dense) / (1.0 - dense) if dense < 1 else 0.0
    if keep <= 0:
        raise PlanError(f"--target-speedup {target} cannot be reached with {ignored} of {layers} layers left dense "
                        "(ignored_layers); ask for less or leave fewer layers out")
    return 1.0 / keep


def planned_config(preset: str, target_speedup: float | None = None, sparsity: float | None = None,
                   overrides: dict[str, Any] | None = None, ffn_multiple: int = 16, model_path: str | None = None,
                   max_length: int = 128, trust_remote_code: bool = False) -> PruningConfig:
    """The preset with the sparsities its target implies and any ``overrides`` (validated).

    A ``target_speedup`` is turned into sparsities from the FLOPs split of ``model_path`` at ``max_length``
    tokens (see :func:`sparsities_for_speedup`); with neither target, ``sparsity`` stays the preset's. With tiles
    in attention an ``attention_sparsity`` override is kept (the FFN alone is sized to the target, so it does not
    change the plan; with ``ffn_budget="flops"`` a higher one empties more heads to pay for FFN width). A speedup
    target with tiled attention and neuron FFN sets ``ffn_budget="flops"`` unless overridden: the target counts
    FLOPs, so every head the tiles empty gives its FLOPs back to FFN neurons; a ``sparsity`` target counts weights,
    so the FFN keeps its scheduled sparsity (``ffn_budget="flops"`` without a speedup target is a :class:`PlanError`:
    the bonus neurons would keep more weights than the target allows).
    """
    if preset not in PRESETS:
        raise PlanError(f"--preset {preset!r} is unknown; choose one of {sorted(PRESETS)}")
    if target_speedup is not None and sparsity is not None:
        raise PlanError("give either --target-speedup or --sparsity, not both")
    try:
        check_ffn_multiple(ffn_multiple, "--ffn-multiple ")
    except ShrinkError as err:
        raise PlanError(str(err)) from err
    overrides = dict(overrides or {})
    known = sorted(f.name for f in fields(PruningConfig))
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise PlanError(f"--set {', '.join(unknown)}: not a PruningConfig field; choose among {known}")
    config = PruningConfig.preset(preset, **overrides)
    if target_speedup is not None and "ffn_budget" not in overrides and config.tiles_with_neurons:
        config = config.replace(ffn_budget="flops")  # a speedup target is in FLOPs: emptied heads buy FFN neurons
    if config.ffn_budget == "flops" and target_speedup is None:
        raise PlanError(
            "ffn_budget=flops gives the FLOPs of every head the attention tiles empty to FFN neurons, so the run "
            "keeps more weights than a --sparsity target allows; give a --target-speedup (a FLOPs target), or drop "
            "--set ffn_budget=flops (a sparsity target counts weights: ffn_budget=fixed)")
    if config.ffn_budget == "flops" and "seq_len" not in overrides:
        config = config.replace(seq_len=max_length)  # heads' FLOPs counted at the length the target is solved at
    if target_speedup is None:
        return config if sparsity is None else config.replace(sparsity=sparsity)
    source = model_source(model_path)
    split = flops_split(source, max_length, trust_remote_code)
    remaining, hidden = target_speedup, config.hidden_sparsity
    if hidden:  # the residual cut gives its own factor; heads and neurons plan the rest, on the narrowed FLOPs
        attention, ffn, alone = hidden_split(source, max_length, hidden, trust_remote_code)
        split = (attention, ffn)
        remaining = target_speedup / alone
        if remaining <= 1.0:
            raise PlanError(f"--set hidden_sparsity={hidden} alone gives {alone:.2f}x, which meets --target-speedup "
                            f"{target_speedup} without pruning a head or a neuron; lower hidden_sparsity or raise "
                            "the target")
    dense_share = 0.0
    if config.ignored_layers:
        layers = len(list(iter_blocks(dense_model(source, trust_remote_code))))
        dense_share = len(config.ignored_layers) / layers
        remaining = target_without_ignored(remaining, len(config.ignored_layers), layers)
    head_pruning, budget = config.attention_block == HEAD, config.ffn_budget == "flops"
    try:
        sparsities = sparsities_for_speedup(remaining, *split, head_pruning, budget)
    except PlanError:
        if not hidden:
            raise
        keep = 1.0 / most_speedup(*split, head_pruning, budget)
        reachable = math.floor(100 * alone / (keep * (1.0 - dense_share) + dense_share)) / 100
        raise PlanError(f"--target-speedup {target_speedup} cannot be reached with hidden_sparsity={hidden}: the "
                        f"residual cut gives {alone:.2f}x and heads and neurons at most {1.0 / keep:.2f}x more "
                        f"({MAX_SPARSITY:.0%} of their FLOPs removed); the reachable target is {reachable:.2f}x. "
                        "Ask for at most that, or raise hidden_sparsity.") from None
    if config.attention_block != HEAD and "attention_sparsity" in overrides:
        sparsities.pop("attention_sparsity")  # tiles: the target does not depend on it, so the user's value stands
    return met_in_whole_units(config.replace(**sparsities), source, target_speedup, max_length, ffn_multiple,
                              trust_remote_code)


def met_in_whole_units(config: PruningConfig, source: str, target: float, seq_len: int, ffn_multiple: int,
                       trust_remote_code: bool = False) -> PruningConfig:
    """``config`` with exact shapes that meet ``target``: whole units round.

    Every layer keeps the nearest whole number of heads (8x on MiniLM's 12: 2, not 1.5) and shrink pads each FFN
    to a multiple of ``ffn_multiple``, so sparsities solved on fractions can leave the shapes short of the target
    (7.12x for 8x). The FFN then gives the difference back: it keeps the widest multiple of ``ffn_multiple`` whose
    plan meets the target; where no width can, one head (unit) fewer per layer, and the widest FFN again. Only for
    exact shapes (uniform top-k heads and neurons); the others are decided in training and counted in FLOPs there.
    """
    def planned(candidate: PruningConfig) -> dict[str, Any]:
        return make_plan(source, candidate, seq_len=seq_len, ffn_multiple=ffn_multiple,
                         trust_remote_code=trust_remote_code)

    first = planned(config)
    met = target * (1 - 1e-9)
    if first["kind"] != {"attention": EXACT, "ffn": EXACT} or first["theoretical_speedup"] >= met:
        return config
    pruned = next(i for i in range(len(first["ffn_total"])) if i not in set(config.ignored_layers))
    total, step, before = first["ffn_total"][pruned], max(1, ffn_multiple), first["flops_per_token"]["before"]
    widths = list(range(step, total + 1, step)) or [total]
    closest = first

    def widest(candidate: PruningConfig) -> PruningConfig | None:
        """The widest FFN meeting the target with ``candidate``'s heads (FLOPs are linear in the width: the two
        extreme widths give the line, up to three plans around its answer check it), else None."""
        nonlocal closest
        at: dict[int, dict[str, Any]] = {}

        def after(width: int) -> dict[str, Any]:
            if width not in at:
                at[width] = planned(candidate.replace(sparsity=1.0 - width / total))
            return at[width]

        low, high = widths[0], widths[-1]
        slope = (after(high)["flops_per_token"]["after"] - after(low)["flops_per_token"]["after"]) / max(1, high - low)
        guess = low + (before / target - after(low)["flops_per_token"]["after"]) / slope if slope > 0 else low
        for width in sorted((w for w in widths if w <= guess + step), reverse=True)[:3]:
            if after(width)["theoretical_speedup"] >= met:
                return candidate.replace(sparsity=1.0 - width / total)
        closest = after(low)
        return None

    for candidate in (config, _one_unit_fewer(config, source, trust_remote_code)):
        fitted = widest(candidate) if candidate is not None else None
        if fitted is not None:
            return fitted
    raise PlanError(f"--target-speedup {target} cannot be reached in whole units: {closest['heads'][pruned]} heads and "
                    f"{closest['ffn'][pruned]} FFN neurons per layer give {closest['theoretical_speedup']:.2f}x; ask "
                    "for at most that")


def _one_unit_fewer(config: PruningConfig, source: str, trust_remote_code: bool) -> PruningConfig | None:
    """``config`` keeping one attention unit (head; GQA: key/value head) fewer per layer; None when none is left."""
    model = narrowed(dense_model(source, trust_remote_code), config.hidden_sparsity)
    for index, (stack, block) in enumerate(iter_blocks(model)):
        if index in config.ignored_layers or not stack.attention:
            continue
        units = num_units(block, stack.attention[0])
        kept = kept_count(units, 1.0 - config.final_attention_sparsity)
        return config.replace(attention_sparsity=1.0 - (kept - 1) / units) if kept > 1 else None
    return None


# ------------------------------------------------------------------------------------------ shapes
def _kind(block: Any, method: str, unit: Any, allocation: str = "uniform") -> str:
    """How well the shapes of one part are known: ``exact``, ``budget`` or ``upper bound`` (module docstring).

    Global allocation (and soft movement) decide per layer during training: only the total is planned.
    """
    if block != unit:
        return UPPER_BOUND
    return BUDGET if METHODS[method].regularized or allocation == "global" else EXACT


def _padded(width: int, multiple: int) -> int:
    return width + (-width % multiple if width else 0)


def planned_shapes(model: nn.Module, config: PruningConfig, ffn_multiple: int = 16) -> dict[str, Any]:
    """Heads and FFN widths per layer that shrink would leave after pruning ``model`` with ``config``.

    Returns:
        ``heads`` / ``heads_total`` (query heads per layer, attention groups summed), ``heads_by_attention``
        (per attention group, for :func:`~blockprune.surgery.shrink.apply_shapes`), ``ffn_kept`` (neurons kept),
        ``ffn`` (width after padding to ``ffn_multiple``), ``ffn_total`` and ``kind`` (``attention`` and
        ``ffn``: ``exact`` | ``budget`` | ``upper bound``).
    """
    attention_kind = _kind(config.attention_block, config.attention_method, HEAD, config.allocation)
    ffn_kind = _kind(config.ffn_block, config.ffn_method, NEURON, config.allocation)
    attention_keep = 1.0 - config.final_attention_sparsity if attention_kind != UPPER_BOUND else 1.0
    ffn_keep = 1.0 - config.sparsity
    if config.ffn_budget == "flops":  # sparsity is a FLOPs share: the FFN's least is what every head kept leaves
        flops = flops_per_token(model, config.seq_len)
        share = flops["total"] / flops["ffn_linear"]
        ffn_keep = max(MIN_FFN_DENSITY, 1.0 - config.sparsity * share)
    by_attention: list[list[int]] = []
    totals: list[int] = []
    kept: list[int] = []
    ffn_totals: list[int] = []
    for index, (stack, block) in enumerate(iter_blocks(model)):
        dense = index in config.ignored_layers
        layer = []
        for attn in stack.attention:
            units, heads = num_units(block, attn), num_heads(block, attn)
            keep = units if dense else kept_count(units, attention_keep)
            if keep == 0 and units and must_keep_one(block, attn):
                keep = 1
            layer.append(keep * (heads // units if units else 0))
        by_attention.append(layer)
        totals.append(sum(num_heads(block, attn) for attn in stack.attention))
        width = features(get_path(block, stack.ffn.up))[0]
        ffn_totals.append(width)
        kept.append(width if dense else kept_count(width, ffn_keep) or (1 if stack.ffn.keep_one and width else 0))
    return {
        "heads": [sum(layer) for layer in by_attention], "heads_total": totals, "heads_by_attention": by_attention,
        "ffn_kept": kept, "ffn": [_padded(w, ffn_multiple) for w in kept], "ffn_total": ffn_totals,
        "kind": {"attention": attention_kind, "ffn": ffn_kind},
    }


def resized(model: nn.Module, shapes: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` cut to the planned ``shapes`` (first heads / neurons kept: the values do not matter)."""
    small = copy.deepcopy(model)
    record = shape_record(small)
    for layer, heads, ffn in zip(record["layers"], shapes["heads_by_attention"], shapes["ffn"], strict=True):
        layer["heads"], layer["ffn"] = list(heads), ffn
    return apply_shapes(small, record)


# ------------------------------------------------------------------------------------------ the plan
def _sizes(model: nn.Module, seq_len: int) -> tuple[dict[str, int], int]:
    params = count_params(model)
    return {k: params[k] for k in ("linear", "non_embedding", "total")}, flops_per_token(model, seq_len)["total"]


def make_plan(model_path: str | None, config: PruningConfig, *, preset: str | None = None,
              target: dict[str, Any] | None = None, seq_len: int = 128, ffn_multiple: int = 16,
              trust_remote_code: bool = False) -> dict[str, Any]:
    """What pruning ``model_path`` with ``config`` implies, without training (a JSON-ready dict).

    Keys: ``model``, ``preset``, ``target``, ``seq_len``, ``ffn_multiple``, ``sparsity``,
    ``attention_sparsity``, ``ffn_budget``, the per-layer shapes of :func:`planned_shapes`, ``params`` and
    ``flops_per_token`` (``before``/``after``; base model without a task head), ``theoretical_speedup``
    (FLOPs ratio of the transformer blocks) and ``notes`` (how far the shapes are known). With
    ``hidden_sparsity``, ``hidden``: the residual width ``before``/``after``, the ``sparsity`` and the
    ``speedup`` the cut gives alone (heads and neurons give ``theoretical_speedup / speedup``).
    """
    source = model_source(model_path)
    dense = dense_model(source, trust_remote_code)
    base = narrowed(dense, config.hidden_sparsity)  # heads and neurons are planned on the cut residual
    shapes = planned_shapes(base, config, ffn_multiple)
    small = resized(base, shapes)
    params_before, flops_before = _sizes(dense, seq_len)
    params_after, flops_after = _sizes(small, seq_len)
    hidden = {}
    if config.hidden_sparsity:
        hidden = {"hidden": {"before": hidden_width(dense), "after": hidden_width(base),
                             "sparsity": config.hidden_sparsity,
                             "speedup": flops_before / flops_per_token(base, seq_len)["total"]}}
    return hidden | {
        "model": source, "preset": preset, "target": target, "seq_len": seq_len, "ffn_multiple": ffn_multiple,
        "sparsity": config.sparsity, "attention_sparsity": config.final_attention_sparsity,
        "ffn_budget": config.ffn_budget, **shapes,
        "params": {k: {"before": params_before[k], "after": params_after[k]} for k in params_before},
        "flops_per_token": {"before": flops_before, "after": flops_after},
        "theoretical_speedup": flops_before / flops_after if flops_after else float("inf"),
        "notes": _notes(shapes["kind"], config.ffn_budget == "flops"),
    }


def _notes(kind: dict[str, str], flops_budget: bool = False) -> list[str]:
    notes = []
    if flops_budget:
        notes.append("ffn_budget=flops: the sparsity is a share of attention and FFN FLOPs together; every head "
                     "training empties gives its FLOPs to FFN neurons, so the model lands on the planned FLOPs "
                     "(shown: every head kept and the FFN at its least)")
    for part, what in (("attention", "heads"), ("ffn", "FFN neurons")):
        if kind[part] == BUDGET:
            notes.append(f"{part}: the total of {what} is the budget; training decides which layers keep them "
                         "(shown spread evenly)")
        elif kind[part] == UPPER_BOUND:
            shown = "every head kept" if part == "attention" else "the weight budget as whole neurons"
            notes.append(f"{part}: tiles, not whole {what}; shrink removes only what training empties completely "
                         f"(shown: {shown})")
    return notes


def measure_plan(plan: dict[str, Any], batch_sizes: tuple[int, ...] = (1, 32), repeats: int = 10,
                 device: str = "cpu", threads: int | None = None, trust_remote_code: bool = False,
                 dtype: str | None = None) -> dict[str, Any]:
    """Time a randomly initialised model of the planned shapes against the dense one (:func:`measure.speedup`).

    Returns the ``speedup`` dict: ``theoretical``, ``device``, ``threads``, ``seq_len`` and ``batches``
    (``reference_ms``, ``model_ms``, ``measured`` per batch size).
    """
    dense = dense_model(plan["model"], trust_remote_code, device="cpu")
    small = resized(narrowed(dense, (plan.get("hidden") or {}).get("sparsity", 0.0)), plan)
    return speedup(dense, small, seq_len=plan["seq_len"], batch_sizes=batch_sizes, repeats=repeats, device=device,
                   threads=threads, dtype=dtype)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def device_shape_timer(source: str, setting: Setting, hidden_sparsity: float = 0.0, repeats: int = 10,
                       trust_remote_code: bool = False) -> ShapeTimer:
    """The real :data:`~blockprune.deploy.latency_fit.ShapeTimer`: random weights of ``source`` cut to the shape,
    timed against the dense model alternately in this process (:func:`measure.speedup`), in ``setting``."""
    dense = dense_model(source, trust_remote_code, device="cpu")
    base = narrowed(dense, hidden_sparsity)
    layers = len(list(iter_blocks(base)))

    def timed(heads: int, ffn: int, width: int) -> float:
        if width != hidden_width(base):
            raise PlanError(f"the shape timer cuts the residual to {hidden_width(base)}, not {width}")
        small = resized(base, {"heads_by_attention": [[heads]] * layers, "ffn": [ffn] * layers})
        result = speedup(dense, small, seq_len=setting.seq_len, batch_sizes=(setting.batch_size,), repeats=repeats,
                         device=setting.device, threads=setting.threads, dtype=setting.dtype)
        return result["batches"][0]["measured"]

    return timed


def measured_config(preset: str, target_speedup: float, overrides: dict[str, Any] | None, ffn_multiple: int,
                    source: str, setting: Setting, *, folder: str | os.PathLike[str] | None = None,
                    timer: Timer | None = None, log: Callable[[str], None] = _stderr, fit: bool = True,
                    shape_timer: ShapeTimer | None = None,
                    trust_remote_code: bool = False) -> tuple[PruningConfig, dict[str, Any], dict[str, Any]]:
    """The config, latency table and budget of a ``target_speedup`` planned on measured latency (``setting``).

    The budget is :func:`~blockprune.deploy.latency_model.uniform_budget` with ``even=True`` at the residual width
    ``hidden_sparsity`` keeps (one the table timed: 3/4, 1/2 or 1/4 of it; full without a cut): ``h`` of ``H`` heads
    and ``f`` of ``F`` neurons in every layer, ``f`` the heads' fraction of ``F`` rounded to ``ffn_multiple``. They
    become ``attention_sparsity = 1 - h/H`` and ``sparsity = 1 - f/F``, checked to round back (the Pruner keeps
    :func:`~blockprune.engine.masks.kept_count` units of a density) to exactly ``h`` and ``f``. With ``fit`` (the
    default) that shape is then timed on the device and corrected until it *measures* within 5% of the target
    (:func:`~blockprune.deploy.latency_fit.fit_budget`; ``shape_timer`` replaces the device in tests); the FFN then
    no longer follows the heads' fraction.

    Raises:
        PlanError: tiles (only whole heads and neurons are planned on latency), dense layers (not
            covered yet), a model the table cannot cover, or a target beyond the table.
    """
    flag = "--speed-model measured"
    config = planned_config(preset, None, None, overrides, ffn_multiple, source, setting.seq_len, trust_remote_code)
    if config.attention_block != HEAD or config.ffn_block != NEURON:
        raise PlanError(f"{flag} plans whole heads and neurons (--preset struct); --preset {preset} prunes tiles "
                        f"(attention_block={config.attention_block!r}, ffn_block={config.ffn_block!r}), whose "
                        "shapes are not known before training: use --speed-model flops")
    if config.ignored_layers:
        raise PlanError(f"{flag} does not plan ignored_layers yet; drop them or use --speed-model flops")
    try:
        table = latency_table(source, setting, folder=folder, timer=timer, log=log,
                              trust_remote_code=trust_remote_code)
        dims = table["key"]["dims"]
        width = hidden_keep(dims["hidden"], config.hidden_sparsity) if config.hidden_sparsity else dims["hidden"]
        timed = [w["hidden"] for w in table["widths"]]
        if width not in timed:
            raise PlanError(f"{flag}: hidden_sparsity={config.hidden_sparsity} keeps {width} residual dimensions, a "
                            f"width the latency table did not time ({timed}); choose hidden_sparsity among "
                            f"{sorted({round(1 - w / dims['hidden'], 4) for w in timed} - {0.0})}")
        try:
            budget, beyond = uniform_budget(table, target_speedup, hidden=width, ffn_multiple=ffn_multiple,
                                            even=True), None
        except BeyondTableError as err:  # the fit may still get there: the table errs on both sides
            if not fit:
                raise
            budget, beyond = fastest_even(table, target_speedup, width, ffn_multiple=ffn_multiple), err
        if fit:
            timer_ = shape_timer or device_shape_timer(source, setting, config.hidden_sparsity,
                                                       trust_remote_code=trust_remote_code)
            budget = fit_budget(table, target_speedup, timer_, budget, ffn_multiple=ffn_multiple, log=log)
            timed = budget["fit"]["best_measured"]
            if beyond is not None and not budget["fit"]["met"] and timed < target_speedup:
                raise LatencyModelError(f"{beyond}; the fastest uniform shapes timed on this device reach "
                                        f"{timed:.2f}x") from None
    except LatencyModelError as err:
        raise PlanError(f"{flag}: {err}") from None
    heads, ffn = budget["heads"][0], budget["ffn"][0]
    try:
        config = config.replace(attention_sparsity=1.0 - heads / dims["heads"], sparsity=1.0 - ffn / dims["ffn"])
    except ConfigError as err:
        raise PlanError(f"{flag}: {heads} heads and {ffn} FFN neurons per layer cannot be trained to ({err}); "
                        "ask for less") from None
    units = dims["heads"] // dims["head_step"]
    kept = (kept_count(units, 1.0 - config.final_attention_sparsity) * dims["head_step"],
            kept_count(dims["ffn"], 1.0 - config.sparsity))
    if kept != (heads, ffn):  # the sparsities must name the shapes the table priced, not their neighbours
        raise PlanError(f"{flag}: sparsities round to {kept}, not the planned ({heads}, {ffn}) heads and neurons")
    return config, table, budget


def table_summary(table: dict[str, Any], folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What a plan records of its latency table: the cache file, the dense ms, the calibration and the setting."""
    key = table["key"]
    return {"cache": str(cache_path(key, folder)), "model_ms": table["model_ms"], "calibration": table["calibration"],
            **{k: key[k] for k in ("device", "device_name", "dtype", "threads", "seq_len", "batch_size")}}


def plan(model: str | None = None, preset: str = "struct", target_speedup: float | None = None,
         sparsity: float | None = None, max_length: int = 128, overrides: dict[str, Any] | None = None,
         ffn_multiple: int = 16, trust_remote_code: bool = False, *, speed_model: str = "flops",
         setting: Setting | None = None, latency_cache: str | os.PathLike[str] | None = None,
         timer: Timer | None = None, log: Callable[[str], None] = _stderr, fit: bool = True,
         shape_timer: ShapeTimer | None = None) -> dict[str, Any]:
    """Plan a run like ``blockprune prune`` would make it (default target: a 2x theoretical speedup).

    ``speed_model="measured"`` plans the speedup target on the latency table of ``setting`` (its ``seq_len`` is
    ``max_length``; the table is measured once and cached in ``latency_cache``; ``timer`` replaces the device in
    tests) with :func:`measured_config`, then fitted on the device (``fit``; ``shape_timer`` replaces it in tests);
    the plan adds ``predicted_speedup``, ``latency_table`` and ``latency_fit``.

    Example:
        >>> plan(preset="struct", target_speedup=2.0)["heads"]     # doctest: +SKIP
        [6, 6, 6, 6, 6, 6]
    """
    if speed_model not in SPEED_MODELS:
        raise PlanError(f"--speed-model {speed_model!r} is unknown; choose one of {list(SPEED_MODELS)}")
    if target_speedup is None and sparsity is None:
        target_speedup = 2.0
    source = model_source(model)
    target = {"kind": "speedup", "value": target_speedup} if target_speedup is not None else \
        {"kind": "sparsity", "value": sparsity}
    if speed_model == "flops":
        config = planned_config(preset, target_speedup, sparsity, overrides, ffn_multiple, source, max_length,
                                trust_remote_code)
        return make_plan(source, config, preset=preset, target=target, seq_len=max_length, ffn_multiple=ffn_multiple,
                         trust_remote_code=trust_remote_code) | {"speed_model": speed_model}
    if target_speedup is None:
        raise PlanError("--speed-model measured plans a --target-speedup, not a --sparsity")
    setting = dataclasses.replace(setting or Setting(), seq_len=max_length)
    check_bench_settings(setting.device, setting.dtype, setting.threads, flags=("--device", "--dtype", "--threads"))
    return measured_plan(source, preset, target_speedup, overrides, ffn_multiple, setting, latency_cache=latency_cache,
                         timer=timer, log=log, fit=fit, shape_timer=shape_timer,
                         trust_remote_code=trust_remote_code)[1]


def measured_plan(source: str, preset: str, target_speedup: float, overrides: dict[str, Any] | None,
                  ffn_multiple: int, setting: Setting, *, latency_cache: str | os.PathLike[str] | None = None,
                  timer: Timer | None = None, log: Callable[[str], None] = _stderr, fit: bool = True,
                  shape_timer: ShapeTimer | None = None,
                  trust_remote_code: bool = False) -> tuple[PruningConfig, dict[str, Any]]:
    """The config and the plan of ``target_speedup`` spent on the measured latency of ``setting`` (its sequence
    length and batch size are the table's and the FLOPs count's): what ``plan(speed_model="measured")`` shows and
    what ``blockprune prune --speed-model measured`` trains to. The plan adds ``predicted_speedup``,
    ``predicted_ms``, ``latency_table`` (:func:`table_summary`) and, with ``fit``, ``latency_fit`` (the shapes
    timed on the way and the chosen one's ``measured_speedup``: :func:`measured_config`)."""
    config, table, budget = measured_config(preset, target_speedup, overrides, ffn_multiple, source, setting,
                                            folder=latency_cache, timer=timer, log=log, fit=fit,
                                            shape_timer=shape_timer, trust_remote_code=trust_remote_code)
    result = make_plan(source, config, preset=preset, target={"kind": "speedup", "value": target_speedup},
                       seq_len=setting.seq_len, ffn_multiple=ffn_multiple, trust_remote_code=trust_remote_code)
    if (result["heads"], result["ffn"]) != (budget["heads"], budget["ffn"]):
        raise PlanError(f"--speed-model measured: the planned shapes {result['heads']}, {result['ffn']} are not the "
                        f"budget's {budget['heads']}, {budget['ffn']}")
    return config, result | {"speed_model": "measured", "predicted_speedup": budget["predicted_speedup"],
                             "predicted_ms": budget["predicted_ms"],
                             "latency_table": table_summary(table, latency_cache)} | \
        ({"latency_fit": budget["fit"]} if "fit" in budget else {})


