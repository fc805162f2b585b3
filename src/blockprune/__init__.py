"""blockprune: block movement pruning for transformers, then exact shrinking into a smaller dense model.

Public API (everything else is internal):

>>> from blockprune import PruningConfig, Pruner          # doctest: +SKIP
>>> pruner = Pruner(model, PruningConfig.preset("hybrid", sparsity=0.6))   # doctest: +SKIP
"""

from .arch import ARCHITECTURES, ArchSpec, AttentionSpec, FFNSpec, UnsupportedModelError, get_arch
from .config import PRESETS, ConfigError, PruningConfig
from .masks import METHODS, BlockShapeError, register_method
from .pruner import PatchError, Pruner
from .schedule import sparsity_at
from .trainer import PruningCallback, PruningObjective, distillation_loss, make_optimizer

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "AttentionSpec",
    "BlockShapeError",
    "ConfigError",
    "FFNSpec",
    "METHODS",
    "PRESETS",
    "PatchError",
    "Pruner",
    "PruningCallback",
    "PruningConfig",
    "PruningObjective",
    "UnsupportedModelError",
    "distillation_loss",
    "get_arch",
    "make_optimizer",
    "register_method",
    "sparsity_at",
]
