"""blockprune: block movement pruning for transformers, then exact shrinking into a smaller dense model.

Public API (everything else is internal). Names are imported on first use, so ``import blockprune.surgery.shrink``
or ``blockprune.load_pruned`` never loads the training side.

The layers, each importing only those below it:

    app/      the ``blockprune prune`` run: stages, training loop, progress, hub upload
    report/   report.json/md/html, figures, model card
    store/    save and load shrunk models, compact sparse files (atomic.py: every write is atomic)
    deploy/   counts, latency, devices, int8, ONNX export, plans
    engine/   prune while training: config, masks, masked linears, schedule, budget, Pruner, objective (with
              layer-wise distillation)
    surgery/  the model-type table and exact shrink
    tasks/    data and metrics per task

>>> from blockprune import PruningConfig, Pruner              # doctest: +SKIP
>>> pruner = Pruner(model, PruningConfig.preset("hybrid", sparsity=0.6))   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "surgery.arch": ["ARCHITECTURES", "ArchSpec", "AttentionSpec", "FFNSpec", "UnsupportedModelError", "get_arch"],
    "engine.config": ["PRESETS", "ConfigError", "PruningConfig"],
    "engine.masks": ["METHODS", "BlockShapeError", "register_method"],
    "engine.schedule": ["sparsity_at"],
    "engine.pruner": ["PatchError", "Pruner"],
    "engine.objective": ["DistillLogCallback", "PruningCallback", "PruningObjective", "distillation_loss",
                         "make_optimizer"],
    "engine.layerwise": ["LayerDistillError", "layer_map"],
    "engine.taylor": ["init_scores_taylor"],
    "surgery.shrink": ["ShrinkResult", "shrink"],
    "surgery.hidden": ["HiddenResult", "shrink_hidden"],
    "engine.hidden": ["HiddenMask"],
    "store.saving": ["PrunedModelError", "load_pruned", "save_pruned"],
    "store.size": ["size_report"],
    "deploy.quantize": ["QuantizeError", "quantize_model"],
    "deploy.measure": ["MeasureReport", "measure", "speedup"],
    "deploy.export": ["check_onnx", "export_onnx"],
    "deploy.plan": ["PlanError", "make_plan", "planned_config"],
    "tasks": ["DataError", "Task", "load_task", "embedded_model_path"],
    "app.pipeline": ["RunError", "RunOptions", "run"],
    "app.hub": ["HubError", "push"],
    "report.render": ["render_report"],
    "report.card": ["write_run_card"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)

# Where each module of the flat layout lives now: ``import blockprune.shrink`` (or any other old path) still
# loads the module, under its new name, so code written against the flat layout keeps working.
MOVED = {
    "config": "engine.config", "masks": "engine.masks", "layers": "engine.layers", "schedule": "engine.schedule",
    "budget": "engine.budget", "pruner": "engine.pruner", "taylor": "engine.taylor", "objective": "engine.objective",
    "arch": "surgery.arch", "headbias": "surgery.headbias", "shrink": "surgery.shrink",
    "compact": "store.compact", "saving": "store.saving",
    "devices": "deploy.devices", "measure": "deploy.measure", "quantize": "deploy.quantize",
    "export": "deploy.export", "onnx_int8": "deploy.onnx_int8", "plan": "deploy.plan",
    "report_doc": "report.doc", "report_sections": "report.sections", "plots": "report.plots", "card": "report.card",
    "pipeline": "app.pipeline", "finetune": "app.finetune", "run_progress": "app.progress", "hub": "app.hub",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``blockprune.<old name>`` and hands back the module at its new place (one module, two names)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, name = fullname.partition(".")
        if prefix != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return importlib.import_module(f"{__name__}.{MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module: Any) -> None:
        """The module ran at its new place already."""


sys.meta_path.append(_MovedFinder())


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'blockprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
