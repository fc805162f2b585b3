"""blockprune: block movement pruning for transformers, then exact shrinking into a smaller dense model.

Public API (everything else is internal). Names are imported on first use, so ``import blockprune.shrink``
or ``blockprune.load_pruned`` never loads the training side.

>>> from blockprune import PruningConfig, Pruner              # doctest: +SKIP
>>> pruner = Pruner(model, PruningConfig.preset("hybrid", sparsity=0.6))   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "arch": ["ARCHITECTURES", "ArchSpec", "AttentionSpec", "FFNSpec", "UnsupportedModelError", "get_arch"],
    "config": ["PRESETS", "ConfigError", "PruningConfig"],
    "masks": ["METHODS", "BlockShapeError", "register_method"],
    "schedule": ["sparsity_at"],
    "pruner": ["PatchError", "Pruner"],
    "objective": ["PruningCallback", "PruningObjective", "distillation_loss", "make_optimizer"],
    "shrink": ["ShrinkResult", "shrink"],
    "saving": ["PrunedModelError", "load_pruned", "save_pruned"],
    "quantize": ["QuantizeError", "quantize_model"],
    "measure": ["MeasureReport", "measure", "speedup"],
    "export": ["check_onnx", "export_onnx"],
    "tasks": ["DataError", "Task", "load_task", "embedded_model_path"],
    "pipeline": ["RunError", "RunOptions", "run"],
    "report": ["render_report"],
    "plan": ["PlanError", "make_plan", "planned_config"],
    "card": ["write_run_card"],
    "hub": ["HubError", "push"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'blockprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
