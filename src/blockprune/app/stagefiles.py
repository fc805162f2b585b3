"""What a pipeline stage leaves on disk, written by one process: ``done.json`` files and saved models.

Under ``torchrun`` every rank runs the training stages, but only rank 0 writes shared files
(:func:`is_main_process`); :func:`barrier` lets the other ranks wait until they are there. Kept apart from
:mod:`blockprune.app.pipeline` so that the stages split into their own modules (:mod:`blockprune.app.teacher`)
share them without importing the pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockprune import atomic


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the process that writes shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every rank when running under ``torchrun``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def read_done(stage_dir: Path) -> dict[str, Any] | None:
    """The results of a completed stage, or ``None``."""
    done = stage_dir / "done.json"
    return json.loads(done.read_text()) if done.is_file() else None


def write_done(stage_dir: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Mark a stage complete (atomically); only rank 0 writes."""
    if is_main_process():
        atomic.write_text(stage_dir / "done.json", json.dumps(results, indent=1, sort_keys=True, default=str) + "\n")
    return results


def save_hf_model(model: nn.Module, path: Path, tokenizer: Any) -> None:
    """``save_pretrained`` of model and tokenizer into ``path``, atomically (rank 0 only)."""
    if is_main_process():
        with atomic.atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
