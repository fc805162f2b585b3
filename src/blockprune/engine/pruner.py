"""``Pruner``: patch a model, step the schedule, regularize, report, finalize.

The life of a pruning run (vocabulary after torch.ao.pruning: prepare → step → squash):

1. ``Pruner(model, config)`` wraps every Q/K/V/O and FFN linear named by the architecture table in a
   :class:`~blockprune.engine.layers.MaskedLinear` and adds the score groups to the model as ``model.blockprune``,
   so checkpoints carry the scores and the controller state;
2. every optimizer step calls ``pruner.step(step, total_steps)`` (the Trainer callback does it for you)
   and adds ``pruner.regularization()`` to the loss;
3. ``pruner.finalize()`` bakes the masks into plain ``nn.Linear`` weights and returns the stock model.

With ``hidden_sparsity > 0`` one more score vector, over the residual width and shared by every layer, masks the
residual stream (:mod:`blockprune.engine.hidden_scores`); its keep count follows the same schedule, and
``finalize`` returns the model with its residual cut to the kept dimensions (there is no exact full-width form).

In head mode each attention unit gets one score: a head, or with grouped-query attention one key/value
head together with its query heads (see :mod:`blockprune.arch`). A model type with no table entry can
still be masked with ``fallback=True``: every linear of the base model gets its own block scores (FFN
method, block and sparsity), nothing is coupled, and nothing can be shrunk afterwards.

Soft movement (``sigmoid_threshold``) keeps blocks whose ``sigmoid(score)`` is above the threshold, and
at most as many as the schedule allows: the allowance of each kind (attention, FFN) is shared among all
its matrices by one global ranking of the scores (:func:`allocate_global_density`), so matrices end up
with uneven densities while the total follows the schedule and lands on the target without a λ sweep.
The L1 weight λ ramps up with the schedule; a controller backs it off whenever the penalty alone pushes
the density below the schedule (all blocks under the threshold), so the result does not overshoot.

Example:
    >>> pruner = Pruner(model, PruningConfig.preset("struct", sparsity=0.5))   # doctest: +SKIP
    >>> for step, batch in enumerate(loader):                                   # doctest: +SKIP
    ...     pruner.step(step, total_steps)
    ...     loss = model(**batch).loss + pruner.regularization()
    ...     loss.backward(); optimizer.step(); optimizer.zero_grad()
    >>> model = pruner.finalize()                                               # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Any

import torch
from torch import nn

from blockprune.engine.budget import FreedHeads
from blockprune.engine.config import HEAD, NEURON, PruningConfig
from blockprune.engine.hidden_scores import HiddenPruning, check_hidden_supported
from blockprune.engine.layers import Layout, MaskedLinear, ScoreGroup
from blockprune.engine.masks import BlockShapeError, grid_shape
from blockprune.engine.schedule import ramp_progress, sparsity_at
from blockprune.surgery.arch import (
    ArchSpec,
    AttentionSpec,
    UnsupportedModelError,
    features,
    get_arch,
    get_path,
    has_path,
    head_dim,
    is_linear_like,
    iter_blocks,
    model_type_of,
    num_heads,
    num_units,
    set_path,
)
from blockprune.surgery.hidden import HiddenResult

STATE_NAME = "blockprune"
UNDERSHOOT_TOLERANCE = 0.01
"""λ backs off while the soft groups are sparser than scheduled by more than this (density points)."""
TARGET_TOLERANCE = 0.05
"""Soft movement never ends more than this fraction below the scheduled density."""


class PatchError(ValueError):
    """The model cannot be patched (already patched, nothing to patch, ...)."""


class PrunerState(nn.Module):
    """Lives in the model as ``model.blockprune``: the score groups and the λ controller state."""

    def __init__(self) -> None:
        super().__init__()
        self.groups = nn.ModuleList()
        self.register_buffer("log_lambda_scale", torch.zeros(()))
        self.register_buffer("last_step", torch.full((), -1, dtype=torch.long))


@torch.no_grad()
def allocate_global_density(groups: list[ScoreGroup], density: float, threshold: float | None,
                            min_blocks: int = 0) -> None:
    """Share a density allowance among ``groups`` by one global ranking of their scores.

    Blocks are taken from the highest score down until they cover ``density`` of the groups' weights
    (each block weighs the number of weights it covers); each group's ``density`` is set to the fraction
    of its blocks taken. ``min_blocks`` of the best blocks of every group are taken first (a floor, e.g.
    one head per layer). For soft movement (``threshold`` given) the sigmoid threshold then drops taken
    blocks below it — unless that would leave less than ``1 - TARGET_TOLERANCE`` of the allowance, in which
    case the threshold is suspended (set to 0) for this step so the density never collapses below the
    schedule. Hard top-k groups (``threshold=None``) keep exactly the blocks taken.
    """
    if not groups:
        return
    scores = torch.cat([g.ranking_values().detach().reshape(-1).float().cpu() for g in groups])
    weights = torch.cat([torch.full((g.scores.numel(),), float(g.weights_per_block)) for g in groups])
    owner = torch.cat([torch.full((g.scores.numel(),), i) for i, g in enumerate(groups)])
    key = scores.clone()
    if min_blocks:
        start = 0
        for g in groups:
            n = g.scores.numel()
            best = torch.topk(scores[start:start + n], min(min_blocks, n)).indices
            key[start + best] = math.inf
            start += n
    order = torch.argsort(key, descending=True, stable=True)
    budget = density * float(weights.sum())
    taken = torch.cumsum(weights[order], 0) <= budget + 1e-6
    if min_blocks:
        taken |= torch.isinf(key[order])
    counts = torch.bincount(owner[order][taken], minlength=len(groups))
    keep_threshold = True
    if threshold is not None:
        above = torch.sigmoid(scores[order][taken]) > threshold
        keep_threshold = float(weights[order][taken][above].sum()) >= (1.0 - TARGET_TOLERANCE) * budget
    for group, count in zip(groups, counts.tolist(), strict=True):
        group.density = count / group.scores.numel()
        if threshold is not None:
            group.threshold = threshold if keep_threshold else 0.0


def is_patched(model: nn.Module) -> bool:
    """Whether ``model`` already carries blockprune masks."""
    return hasattr(model, STATE_NAME) or any(isinstance(m, MaskedLinear) for m in model.modules())


class Pruner:
    """Patches ``model`` in place according to ``config`` (see module docstring).

    Args:
        model: a Hugging Face model whose ``model_type`` is in :data:`blockprune.surgery.arch.ARCHITECTURES`.
        config: what to prune and how.
        controller_gain: speed of the λ controller for ``sigmoid_threshold`` (log-scale change per step
            per unit of density error).
        fallback: for a model type without a table entry, mask every linear of the base model (task heads
            and tied weights excluded) with the FFN method, block and sparsity, uncoupled, with a warning:
            no shrink, so no speedup. Ignored for supported types.

    Raises:
        PatchError: the model is already patched, or the configuration patches no module.
        UnsupportedModelError: the model type is not in the architecture table (and ``fallback`` is off), or
            ``hidden_sparsity > 0`` for a model type (or task head) whose residual width cannot be cut.
        BlockShapeError: a block shape does not tile a matrix (the message names the module).

    Example:
        >>> pruner = Pruner(model, PruningConfig.preset("unstructured"), fallback=True)   # doctest: +SKIP
        UserWarning: model_type 'gpt_neox' has no usable architecture table entry: ...
    """

    def __init__(self, model: nn.Module, config: PruningConfig, controller_gain: float = 0.5,
                 fallback: bool = False) -> None:
        if is_patched(model):
            raise PatchError("this model is already patched by blockprune; finalize() it or use a fresh model")
        self.model = model
        self.config = config
        self.controller_gain = controller_gain
        check_hidden_supported(model, config.hidden_sparsity)  # before anything is patched (no fallback for it)
        self.spec: ArchSpec | None = None
        try:
            self.spec = get_arch(model)
        except UnsupportedModelError:
            if not fallback:
                raise
        self.layers: dict[str, MaskedLinear] = {}
        self._sites: dict[str, tuple[nn.Module, str]] = {}
        self.state = PrunerState()
        self._lambda = 0.0
        self._target = {"attention": 1.0, "ffn": 1.0}
        # linears on the residual cost (1 - hidden_sparsity) of their dense FLOPs once the residual is cut
        self._freed = FreedHeads(config.seq_len, 1.0 - config.hidden_sparsity) if config.ffn_budget == "flops" \
            else None
        self._ffn_bonus = 0.0
        if self.spec is None:
            self._patch_fallback()
        else:
            self._patch()
        if not self.layers:
            raise PatchError(f"the configuration patched no module in {type(model).__name__}")
        # after the linears are wrapped: the hidden mask's output hooks go on the modules that run
        self.hidden: HiddenPruning | None = None
        self.hidden_result: HiddenResult | None = None
        self._hidden_target = 1.0
        if config.hidden_sparsity:
            self.hidden = HiddenPruning(model, self.state, config.hidden_sparsity, config.score_init)
            self.hidden.init("magnitude")  # a constant start ranks nothing; taylor replaces this once it has grads
        if config.score_init_from == "magnitude":
            self.init_scores("magnitude")
        device = next(iter(self.layers.values())).weight.device
        model.add_module(STATE_NAME, self.state.to(device))

    # ----------------------------------------------------------------------------------- patching
    def _patch(self) -> None:
        cfg = self.config
        blocks = list(iter_blocks(self.model, self.spec))
        outside = [i for i in cfg.ignored_layers if i >= len(blocks)]
        if outside:
            raise PatchError(f"ignored_layers {outside} do not exist: the model has {len(blocks)} transformer layers "
                             f"(0..{len(blocks) - 1})")
        for index, (stack, block) in enumerate(blocks):
            if index in cfg.ignored_layers:
                continue
            for attn in stack.attention:
                self._patch_attention(index, block, attn)
            ffn = stack.ffn
            ups = [p for p in (ffn.up, ffn.gate) if p]
            if cfg.ffn_block == NEURON:
                width = features(get_path(block, ffn.up))[0]
                group = self._new_group((width,), cfg.ffn_method, "ffn")
                for path in ups:
                    self._wrap(index, block, path, group, "rows", (1, -1))
                self._wrap(index, block, ffn.down, group, "cols", (-1, 1))
                if self._freed is not None:
                    self._freed.add_ffn(features(get_path(block, ffn.up))[1], width, len(ups) + 1)
            else:
                for path in [*ups, ffn.down]:
                    self._wrap_grid(index, block, path, cfg.ffn_method, cfg.ffn_block, "ffn")

    @torch.no_grad()
    def init_scores(self, criterion: str = "magnitude") -> None:
        """Add each block's importance, over the mean of its matrix, to the learned scores.

        ``criterion`` is ``magnitude`` (``sum |W|``; done on construction for ``score_init_from="magnitude"``)
        or ``taylor`` (``sum |W * dL/dW|``, from the gradients the weights hold: see
        :func:`blockprune.engine.taylor.init_scores_taylor`, which the training loop calls for
        ``score_init_from="taylor"``). Movement scores starting at one constant carry no ranking until they
        have moved; starting from an importance ranking (normalised per matrix so that every layer starts on
        one scale, around 1) lets a short schedule prune by that ranking first and by movement as the scores
        learn. The hidden scores (``hidden_sparsity > 0``) are set to their own ranking by the same criterion
        (:meth:`blockprune.engine.hidden_scores.HiddenPruning.init`).
        """
        for group in self.state.groups:
            if group.method.learned:
                values = group.importance(criterion)
                mean = values.mean()
                group.scores.add_(values / mean if float(mean) > 0 else values)
        if self.hidden is not None:
            self.hidden.init(criterion)

    def _patch_attention(self, index: int, block: nn.Module, attn: AttentionSpec) -> None:
        """One score per unit (head, or KV head with its query heads) in head mode; else block grids."""
        cfg = self.config
        extras = [p for p in attn.extra_rows if has_path(block, p)]
        if cfg.attention_block != HEAD:
            for path in dict.fromkeys([attn.q, attn.k, attn.v, *extras, attn.o]):
                self._wrap_grid(index, block, path, cfg.attention_method, cfg.attention_block, "attention")
            if cfg.head_pressure and num_units(block, attn):
                self._press_heads(index, attn, head_dim(block, attn))
            if self._freed is not None and num_units(block, attn):
                units, d = num_units(block, attn), head_dim(block, attn)
                self._freed.add_attention(self.layers[f"layer.{index}.{attn.v}"], 2 * units * d if attn.fused else 0,
                                          self.layers[f"layer.{index}.{attn.o}"], units,
                                          num_heads(block, attn) // units, d)
            return
        d, units = head_dim(block, attn), num_units(block, attn)
        q_rows = num_heads(block, attn) // units * d
        group = self._new_group((units,), cfg.attention_method, "attention")
        if attn.fused:
            self._wrap(index, block, attn.q, group, "rows", (d, -1), parts=3)
        else:
            self._wrap(index, block, attn.q, group, "rows", (q_rows, -1))
            self._wrap(index, block, attn.k, group, "rows", (d, -1))
            self._wrap(index, block, attn.v, group, "rows", (d, -1))
        for path in extras:
            self._wrap(index, block, path, group, "rows", (q_rows, -1))
        self._wrap(index, block, attn.o, group, "cols", (-1, q_rows))

    def _press_heads(self, index: int, attn: AttentionSpec, d: int) -> None:
        """``head_pressure``: V's tiles rank with their head's rows, O's with its columns (what shrink needs empty)."""
        for path, axis in ((attn.v, 0), (attn.o, 1)):  # a fused [Q; K; V] grid presses its Q and K heads too
            layer = self.layers[f"layer.{index}.{path}"]
            tile = layer.block[axis]
            if d % tile:
                raise PatchError(
                    f"head_pressure needs attention tiles that fit a head: layer.{index}.{path} has heads of {d} "
                    f"{'rows' if axis == 0 else 'columns'} and tiles of {tile}; use attention_block with sides that "
                    f"divide {d} (e.g. [{d}, {d}]) or head_pressure=0")
            layer.group.set_head_span(axis, d // tile, self.config.head_pressure)

    def _patch_fallback(self) -> None:
        """Mask every linear of the base model on its own block grid (no coupling, no shrink)."""
        cfg = self.config
        root = getattr(self.model, "base_model", self.model)
        owners = Counter(id(p) for m in self.model.modules() for p in m.parameters(recurse=False))
        get_out = getattr(self.model, "get_output_embeddings", None)
        output = get_out() if callable(get_out) else None
        skipped: list[str] = []
        for name, module in list(root.named_modules()):
            if not is_linear_like(module) or module is output or owners[id(module.weight)] > 1:
                continue
            try:
                grid = grid_shape(features(module), cfg.ffn_block, name)
            except BlockShapeError:
                skipped.append(name)
                continue
            wrapped = MaskedLinear.from_linear(module, self._new_group(grid, cfg.ffn_method, "ffn"), "grid",
                                               cfg.ffn_block)
            set_path(root, name, wrapped)
            self.layers[name] = wrapped
            self._sites[name] = (root, name)
        try:
            model_type = repr(model_type_of(self.model))
        except UnsupportedModelError:
            model_type = f"of {type(self.model).__name__}"
        note = f"; {len(skipped)} linears skipped because {cfg.ffn_block} does not tile them" if skipped else ""
        warnings.warn(
            f"model_type {model_type} has no usable architecture table entry: masking every linear of "
            f"{type(root).__name__} ({len(self.layers)} modules) with {cfg.ffn_method} on {cfg.ffn_block} blocks"
            f"{note}. No heads or neurons are coupled and shrink cannot remove anything, so expect no speedup; "
            "add an entry to blockprune.surgery.arch.ARCHITECTURES for structured pruning.",
            UserWarning,
            stacklevel=3,
        )

    def _new_group(self, shape: tuple[int, ...], method: str, kind: str) -> ScoreGroup:
        group = ScoreGroup(shape, method, kind, self.config.threshold, self.config.score_init)
        self.state.groups.append(group)
        return group

    def _wrap_grid(self, index: int, block: nn.Module, path: str, method: str, shape: Any, kind: str) -> None:
        linear = get_path(block, path)
        name = f"layer.{index}.{path}"
        if not is_linear_like(linear):
            raise PatchError(f"{name} is a {type(linear).__name__}, expected nn.Linear")
        grid = grid_shape(features(linear), shape, name)
        self._wrap(index, block, path, self._new_group(grid, method, kind), "grid", shape)

    def _wrap(self, index: int, block: nn.Module, path: str, group: ScoreGroup, layout: Layout, shape: Any,
              parts: int = 1) -> None:
        linear = get_path(block, path)
        name = f"layer.{index}.{path}"
        if not is_linear_like(linear):
            raise PatchError(f"{name} is a {type(linear).__name__}, expected nn.Linear")
        wrapped = MaskedLinear.from_linear(linear, group, layout, shape, parts)
        set_path(block, path, wrapped)
        self.layers[name] = wrapped
        self._sites[name] = (block, path)

    # ----------------------------------------------------------------------------------- training
    @property
    def groups(self) -> list[ScoreGroup]:
        return list(self.state.groups)

    def _regularized(self) -> list[ScoreGroup]:
        return [g for g in self.state.groups if g.method.regularized]

    def step(self, step: int, total_steps: int) -> dict[str, float]:
        """Set the scheduled density of every group for optimizer step ``step`` and update λ.

        Call it once per optimizer step, before the forward pass. Returns what it set (for logging).
        """
        cfg = self.config
        ffn_sparsity = sparsity_at(step, total_steps, cfg.sparsity, cfg.warmup, cfg.cooldown)
        attn_sparsity = sparsity_at(step, total_steps, cfg.final_attention_sparsity, cfg.warmup, cfg.cooldown)
        self._target = {"attention": 1.0 - attn_sparsity, "ffn": 1.0 - ffn_sparsity}
        before = [(g.density, g.threshold) for g in self.state.groups]
        for group in self.state.groups:
            group.density = self._target[group.kind]
        regularized = self._regularized()
        hard = [g for g in self.state.groups if not g.method.regularized] if cfg.allocation == "global" else []
        for kind in ("attention", "ffn"):
            if kind == "ffn" and self._freed is not None:  # attention's masks are set: the FFN gets the rest
                self._ffn_bonus = self._freed.ffn_bonus()
                self._target["ffn"] = self._freed.ffn_density(ffn_sparsity)
                for group in self.state.groups:
                    if group.kind == "ffn":
                        group.density = self._target["ffn"]
            allocate_global_density([g for g in regularized if g.kind == kind], self._target[kind], cfg.threshold)
            allocate_global_density([g for g in hard if g.kind == kind], self._target[kind], None, cfg.min_blocks)
        for group, (density, threshold) in zip(self.state.groups, before, strict=True):
            if (group.density, group.threshold) != (density, threshold):
                group.forget_last_mask()  # the mask of the last forward pass no longer follows the schedule
        if self.hidden is not None:
            hidden_sparsity = sparsity_at(step, total_steps, cfg.hidden_sparsity, cfg.warmup, cfg.cooldown)
            self._hidden_target = 1.0 - hidden_sparsity
            self.hidden.schedule(hidden_sparsity)
        progress = ramp_progress(step, total_steps, cfg.warmup, cfg.cooldown)
        if regularized and progress > 0.0:
            if step > int(self.state.last_step):  # each step updates the controller once, also after a resume
                error = self._density(regularized) - self._target_density(regularized)
                scale = float(self.state.log_lambda_scale) + self.controller_gain * (error + UNDERSHOOT_TOLERANCE)
                self.state.log_lambda_scale.fill_(min(0.0, max(-12.0, scale)))
                self.state.last_step.fill_(step)
            self._lambda = cfg.regularization * progress * math.exp(float(self.state.log_lambda_scale))
        else:
            self._lambda = 0.0
        return self.log_values()

    def has_last_masks(self) -> bool:
        """Whether every group (and the hidden mask) recorded the mask of a training forward pass since its
        density last changed."""
        hidden = self.hidden is None or bool(self.hidden.state.has_last_mask)
        return hidden and all(bool(g.has_last_mask) for g in self.state.groups)

    def log_values(self) -> dict[str, float]:
        """Numbers worth logging: scheduled density per kind, λ, threshold, measured density per kind."""
        stats = self.stats()
        out = {
            "prune/target_density_attention": round(self._target["attention"], 4),
            "prune/target_density_ffn": round(self._target["ffn"], 4),
            "prune/density_attention": round(stats["attention"], 4),
            "prune/density_ffn": round(stats["ffn"], 4),
        }
        if self._freed is not None:
            out["prune/ffn_bonus"] = round(self._ffn_bonus, 4)
        if self.hidden is not None:
            out["prune/target_density_hidden"] = round(self._hidden_target, 4)
            out["prune/density_hidden"] = round(stats["hidden"], 4)
        if self._regularized():
            out["prune/lambda"] = self._lambda
            out["prune/threshold"] = self.config.threshold
        return out

    def _target_density(self, groups: list[ScoreGroup]) -> float:
        total = sum(g.scores.numel() * g.weights_per_block for g in groups)
        return sum(self._target[g.kind] * g.scores.numel() * g.weights_per_block for g in groups) / total

    @torch.no_grad()
    def _density(self, groups: list[ScoreGroup]) -> float:
        total = sum(g.scores.numel() * g.weights_per_block for g in groups)
        kept = sum(float(g.mask().sum()) * g.weights_per_block for g in groups)
        return kept / total if total else 1.0

    def regularization(self) -> torch.Tensor:
        """λ times the expected density ``mean(sigmoid(scores))`` (weighted by the weights each score covers).

        Zero when no group uses a regularized method or during warm-up. Add it to the loss.
        """
        groups = self._regularized()
        if not groups or self._lambda == 0.0:
            return torch.zeros((), device=self.state.log_lambda_scale.device)
        total = sum(g.scores.numel() * g.weights_per_block for g in groups)
        expected = sum(torch.sigmoid(g.scores).sum() * g.weights_per_block for g in groups) / total
        return self._lambda * expected

    def score_parameters(self) -> list[nn.Parameter]:
        """The learned scores (empty for ``magnitude``), the hidden scores last when ``hidden_sparsity > 0``."""
        scores = [g.scores for g in self.state.groups if isinstance(g.scores, nn.Parameter)]
        return scores + ([self.hidden.state.scores] if self.hidden is not None else [])

    def param_groups(
        self, lr: float, weight_decay: float = 0.0, score_lr: float | None = None
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups: weights (decay), biases/norms (no decay), scores (own lr, no decay)."""
        score_ids = {id(p) for p in self.score_parameters()}
        decay, no_decay = [], []
        for name, param in self.model.named_parameters():
            if not param.requires_grad or id(param) in score_ids:
                continue
            is_no_decay = param.ndim < 2 or "norm" in name.lower()
            (no_decay if is_no_decay else decay).append(param)
        groups = [
            {"params": decay, "lr": lr, "weight_decay": weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        ]
        if score_ids:
            groups.append(
                {"params": self.score_parameters(), "lr": score_lr or self.config.score_lr, "weight_decay": 0.0}
            )
        return [g for g in groups if g["params"]]

    # ----------------------------------------------------------------------------------- reporting
    @torch.no_grad()
    def stats(self) -> dict[str, Any]:
        """Density (fraction of weights kept) per patched module, per kind and overall; with ``hidden_sparsity``
        also ``hidden`` (fraction of the residual dimensions kept) and ``hidden_width`` (``[before, after]``)."""
        modules: dict[str, float] = {}
        kept = {"attention": 0.0, "ffn": 0.0}
        total = {"attention": 0, "ffn": 0}
        masks = {id(g): g.final_mask() for g in self.state.groups}
        for name, layer in self.layers.items():
            weight_mask, _ = layer.masks(masks[id(layer.group)])
            n = layer.out_features * layer.in_features
            k = float(weight_mask.expand(layer.out_features, layer.in_features).sum())
            modules[name] = k / n
            kept[layer.group.kind] += k
            total[layer.group.kind] += n
        overall_total = sum(total.values())
        hidden = {} if self.hidden is None else {
            "hidden": self.hidden.density(),
            "hidden_width": [self.hidden.width, int(self.hidden.final_mask().sum())],
        }
        return {
            "modules": modules,
            "attention": kept["attention"] / total["attention"] if total["attention"] else 1.0,
            "ffn": kept["ffn"] / total["ffn"] if total["ffn"] else 1.0,
            "overall": sum(kept.values()) / overall_total if overall_total else 1.0,
            **hidden,
        }

    # ----------------------------------------------------------------------------------- finalize
    @torch.no_grad()
    def finalize(self, inputs: dict[str, torch.Tensor] | None = None, atol: float = 1e-4) -> nn.Module:
        """Bake the masks into the wrapped ``nn.Linear`` (or ``Conv1D``) weights, remove the scores; return the stock model.

        Under ``ffn_budget="flops"``, warns when the final masks land above the planned FLOPs (see
        :meth:`blockprune.engine.budget.FreedHeads.shortfall`: the message names the reachable target).

        With ``hidden_sparsity > 0`` the returned model's residual is cut to the kept dimensions, in this order:
        the hidden mask to keep is recorded, the block masks are baked in, and a fixed mask of those dimensions on
        the plain model is cut out (:meth:`blockprune.engine.hidden_scores.HiddenPruning.cut`). With ``inputs``
        (a batch without labels) the masked and the cut model must agree on them within ``atol`` in eval mode
        (``ShrinkError`` otherwise); :attr:`hidden_result` holds what was kept and the difference.
        """
        if STATE_NAME not in dict(self.model.named_children()):
            raise PatchError("finalize() was already called on this pruner")
        shortfall = self._freed.shortfall(self.config.sparsity) if self._freed is not None else None
        if shortfall is not None:
            warnings.warn(shortfall, UserWarning, stacklevel=3)  # the caller of the no_grad wrapper
        # masks first: baking one member changes the magnitudes the next member's mask would see
        masks = {id(g): g.final_mask() for g in self.state.groups}
        keep = self.hidden.final_mask() if self.hidden is not None else None
        for name, layer in self.layers.items():
            block, path = self._sites[name]
            set_path(block, path, layer.to_linear(masks[id(layer.group)]))
        if self.hidden is not None and keep is not None:
            self.hidden_result = self.hidden.cut(keep, inputs, atol)
        delattr(self.model, STATE_NAME)
        return self.model
