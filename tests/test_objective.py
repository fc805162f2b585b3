"""Trainer integration (one callback + param groups) and the distillation objective."""

import pytest
import torch
import transformers
from tiny import VOCAB, tiny_inputs, tiny_model

from blockprune import Pruner, PruningCallback, PruningConfig, PruningObjective, distillation_loss, make_optimizer


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n=64, seq_len=10, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, VOCAB, (n, seq_len), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": torch.tensor(int(self.ids[i, 0] > VOCAB // 2))}


def test_distillation_loss_is_zero_for_identical_logits_and_positive_otherwise():
    logits = torch.randn(4, 3)
    assert float(distillation_loss(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits, torch.randn(4, 3))) > 0


def test_objective_mixes_task_distillation_and_regularization():
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student, teacher = tiny_model("bert", seed=0, **no_dropout).train(), tiny_model("bert", seed=1)
    pruner = Pruner(student, PruningConfig.preset("hybrid", attention_block=(8, 8), sparsity=0.5))
    pruner.step(50, 100)
    inputs = tiny_inputs() | {"labels": torch.tensor([0, 1])}
    objective = PruningObjective(student, pruner, teacher=teacher, alpha=0.5, temperature=2.0).train()
    loss = objective(**inputs).loss
    task = student(**inputs).loss
    kd = distillation_loss(student(**inputs).logits, teacher(**tiny_inputs()).logits, 2.0)
    expected = 0.5 * task + 0.5 * kd + pruner.regularization()
    assert float(pruner.regularization().detach()) > 0
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert "teacher" not in dict(objective.named_modules())  # not trained, not checkpointed


@pytest.mark.parametrize("preset", ["struct", "hybrid"])
def test_trainer_with_the_callback_reaches_the_target(tmp_path, preset):
    model = tiny_model("bert").train()
    config = PruningConfig.preset(preset, sparsity=0.5, attention_block="head" if preset == "struct" else (8, 8))
    pruner = Pruner(model, config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=10, remove_unused_columns=False,
        label_names=["labels"], disable_tqdm=True,
    )
    callback = PruningCallback(pruner)
    trainer = transformers.Trainer(
        model=PruningObjective(model, pruner), args=args, train_dataset=ToyDataset(),
        optimizers=(make_optimizer(pruner, lr=1e-3), None), callbacks=[callback],
    )
    trainer.train()
    stats = pruner.stats()
    assert stats["overall"] == pytest.approx(0.5, abs=0.025)
    logged = [h for h in trainer.state.log_history if "prune/density_ffn" in h]
    assert logged, trainer.state.log_history
    final = pruner.finalize()
    assert type(final) is transformers.BertForSequenceClassification
