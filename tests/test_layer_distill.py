"""Layer-wise (hidden-state) distillation: the mapping, the loss, narrower students, and the --layer-distill flag."""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import transformers
from tiny import HIDDEN, VOCAB, save_tiny_bert, tiny_batch, tiny_inputs, tiny_model, write_review_csvs
from torch import nn

from blockprune import HiddenMask, Pruner, PruningConfig, PruningObjective, distillation_loss, make_optimizer
from blockprune.engine.layerwise import LayerDistiller, LayerDistillError, hidden_state_loss, layer_map
from blockprune.engine.objective import DistillLogCallback

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
KEPT = torch.arange(0, HIDDEN, 2)  # every other residual dimension
REMOVED = torch.arange(1, HIDDEN, 2)


def hidden_term(objective: PruningObjective, inputs: dict) -> float:
    """The hidden-state term of one training forward pass, as the objective logs it."""
    objective.train()(**inputs)
    return objective.pop_log_values()["distill/hidden_loss"]


def states(*shapes_and_seeds):
    return [torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) for shape, seed in shapes_and_seeds]


class LoudRemovedDims(nn.Module):
    """A teacher whose reported hidden states are huge in the REMOVED dimensions (its computation is untouched)."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, **inputs):
        out = self.teacher(**inputs)
        if out.hidden_states is not None:
            loud = torch.zeros(HIDDEN)
            loud[REMOVED] = 1e6
            out.hidden_states = tuple(h + loud for h in out.hidden_states)
        return out


# ------------------------------------------------------------------------------------------- the mapping
def test_layer_map_equal_depths_and_evenly_spaced_for_a_shallower_student():
    # layer_map(student_layers, teacher_layers): 6 -> 6 and 6 -> 3 teacher -> student layers
    assert layer_map(6, 6) == [(i, i) for i in range(1, 7)]
    assert layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert layer_map(4, 6) == [(1, 2), (2, 3), (3, 5), (4, 6)]  # halves round up; the last maps to the last
    assert layer_map(1, 2) == [(1, 2)]
    with pytest.raises(LayerDistillError, match="more than the teacher"):
        layer_map(6, 3)


def test_the_distiller_follows_the_mapping():
    teacher = [torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(i)) for i in range(7)]  # 6 layers
    distiller = LayerDistiller(nn.Identity(), nn.Identity())  # widths unknown: no projection
    mapped = SimpleNamespace(hidden_states=[teacher[0], teacher[2], teacher[4], teacher[6]])  # 3 layers
    shifted = SimpleNamespace(hidden_states=[teacher[0], teacher[1], teacher[2], teacher[3]])
    assert float(distiller(mapped, SimpleNamespace(hidden_states=teacher))) == 0.0
    assert float(distiller(shifted, SimpleNamespace(hidden_states=teacher))) > 0.1


# ------------------------------------------------------------------------------------------- the loss
def test_loss_is_exactly_zero_for_the_teacher_itself_and_grows_with_a_perturbation():
    teacher = tiny_model("bert", **NO_DROPOUT)
    inputs = tiny_batch("bert")
    losses = []
    for scale in (0.0, 1e-3, 1e-2, 1e-1):
        student = copy.deepcopy(teacher)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in student.parameters():
                param.add_(scale * torch.randn(param.shape, generator=generator))
        losses.append(hidden_term(PruningObjective(student, teacher=teacher, layer_distill=1.0), inputs))
    assert losses[0] == 0.0
    assert 0 < losses[1] < losses[2] < losses[3]


def test_loss_is_a_mean_over_dims_tokens_and_layers_and_leaves_padding_out():
    s, t = states(((2, 4, 6), 0), ((2, 4, 6), 1))
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool()
    expected = ((s - t).pow(2).mean(-1) * valid).sum() / valid.sum()
    assert torch.allclose(hidden_state_loss([s, s], [t, t], [(1, 1)], valid), expected)
    wide_s, wide_t = torch.cat([s, s], -1), torch.cat([t, t], -1)  # twice as wide: the same scale
    assert torch.allclose(hidden_state_loss([s, wide_s], [t, wide_t], [(1, 1)], valid), expected)
    s[1, 2:] = 1e6  # padded tokens never count
    assert torch.allclose(hidden_state_loss([s, s], [t, t], [(1, 1)], valid), expected)


def test_weight_zero_leaves_the_objective_bit_for_bit_as_before():
    student, teacher = tiny_model("bert", seed=0, **NO_DROPOUT), tiny_model("bert", seed=1)
    pruner = Pruner(student, PruningConfig.preset("hybrid", attention_block=(8, 8), sparsity=0.5))
    pruner.step(50, 100)
    inputs = tiny_inputs() | {"labels": torch.tensor([0, 1])}
    objective = PruningObjective(student, pruner, teacher=teacher, alpha=0.7, temperature=2.0, layer_distill=0.0)
    out = objective.train()(**inputs)
    assert objective.layer_distiller is None and out.hidden_states is None  # no hidden states even asked for
    # today's objective, operation by operation
    plain = student(**inputs)
    with torch.no_grad():
        teacher_out = teacher(**tiny_inputs())
    kd = sum(distillation_loss(getattr(plain, f), getattr(teacher_out, f), 2.0, None) for f in ["logits"]) / 1
    expected = (1.0 - 0.7) * plain.loss + 0.7 * kd + pruner.regularization()
    assert torch.equal(out.loss, expected)
    # with a weight, the same plus W times the logged hidden term
    layered = PruningObjective(student, pruner, teacher=teacher, alpha=0.7, temperature=2.0, layer_distill=3.0)
    loss = layered.train()(**inputs).loss
    hidden = layered.pop_log_values()["distill/hidden_loss"]
    assert hidden > 0 and float(loss.detach()) == pytest.approx(float(expected.detach()) + 3.0 * hidden, rel=1e-5)


def test_gradients_of_the_hidden_term_reach_the_student_and_its_scores():
    student, teacher = tiny_model("bert", seed=0).train(), tiny_model("bert", seed=1)
    pruner = Pruner(student, PruningConfig.preset("hybrid", attention_block=(8, 8), sparsity=0.5))
    pruner.step(0, 100)  # nothing masked yet: a masked block rightly gets no gradient
    objective = PruningObjective(student, pruner, teacher=teacher, layer_distill=1.0).train()
    inputs = tiny_inputs()
    outputs = student(**inputs, output_hidden_states=True)
    with torch.no_grad():
        teacher_out = teacher(**inputs, output_hidden_states=True)
    objective.hidden_loss(outputs, teacher_out, inputs).backward()
    matrices = [p for n, p in student.named_parameters() if "encoder" in n and p.ndim == 2 and "score" not in n]
    assert matrices and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in matrices)
    assert all(float(p.grad.abs().sum()) > 0 for p in pruner.score_parameters())


# ------------------------------------------------------------------------------------------- narrower students
def masked_pair():
    teacher = tiny_model("bert", seed=1, **NO_DROPOUT)
    student = copy.deepcopy(teacher)
    mask = torch.zeros(HIDDEN)
    mask[KEPT] = 1
    return student, teacher, HiddenMask(student, mask)


def test_a_masked_student_is_compared_in_its_kept_dims_only():
    student, teacher, _ = masked_pair()
    inputs = tiny_batch("bert")
    loss = hidden_term(PruningObjective(student, teacher=teacher, layer_distill=1.0), inputs)
    loud = hidden_term(PruningObjective(student, teacher=LoudRemovedDims(teacher), layer_distill=1.0), inputs)
    assert loss == loud  # the removed dims (1e6 apart) are never seen
    s = student.train()(**inputs, output_hidden_states=True).hidden_states
    t = teacher(**inputs, output_hidden_states=True).hidden_states
    assert all(float(h[..., REMOVED].detach().abs().max()) == 0 for h in s)  # the student carries nothing there
    valid = inputs["attention_mask"].bool()
    expected = hidden_state_loss([h[..., KEPT] for h in s], [h[..., KEPT] for h in t], layer_map(2, 2), valid)
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5) and loss > 0


def test_a_cut_student_is_compared_with_the_teachers_kept_dims():
    student, teacher, hidden = masked_pair()
    inputs = tiny_batch("bert")
    masked = hidden_term(PruningObjective(student, teacher=teacher, layer_distill=1.0), inputs)
    hidden.bake(inputs={k: v for k, v in inputs.items() if k != "labels"})  # cut to 16 dims, exactly
    assert student.bert.encoder.layer[0].output.dense.out_features == HIDDEN // 2
    objective = PruningObjective(student, teacher=teacher, layer_distill=1.0, hidden_kept=KEPT.tolist())
    assert objective.layer_distiller.projection is None
    cut = hidden_term(objective, inputs)
    loud = hidden_term(PruningObjective(student, teacher=LoudRemovedDims(teacher), layer_distill=1.0,
                                        hidden_kept=KEPT), inputs)
    assert cut == loud and cut == pytest.approx(masked, rel=1e-4, abs=1e-8)  # same as before the cut
    with pytest.raises(LayerDistillError, match="16 wide"):
        PruningObjective(student, teacher=teacher, layer_distill=1.0, hidden_kept=list(range(HIDDEN)))


def test_a_cut_student_without_its_kept_dims_learns_a_projection():
    student, teacher, hidden = masked_pair()
    inputs = tiny_batch("bert")
    hidden.bake()
    objective = PruningObjective(student, teacher=teacher, layer_distill=1.0)
    projection = objective.layer_distiller.projection
    assert tuple(projection.weight.shape) == (HIDDEN, HIDDEN // 2) and float(projection.weight.detach().abs().sum()) == 0
    assert objective.own_parameters() == [projection.weight]
    assert "layer_distiller.projection.weight" in objective.state_dict()  # checkpointed and resumed with the run
    assert hidden_term(objective, inputs) > 0
    objective.train()(**inputs).loss.backward()
    assert float(projection.weight.grad.abs().sum()) > 0  # trained with the student


def test_make_optimizer_takes_the_objectives_own_parameters():
    student = tiny_model("bert").train()
    pruner = Pruner(student, PruningConfig.preset("struct", sparsity=0.5))
    extra = nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer(pruner, lr=1e-3, extra=[extra])
    assert optimizer.param_groups[-1]["params"] == [extra] and optimizer.param_groups[-1]["weight_decay"] == 0
    assert len(make_optimizer(pruner, lr=1e-3).param_groups) == len(optimizer.param_groups) - 1


# ------------------------------------------------------------------------------------------- depths, tasks, errors
def test_a_shallower_student_learns_from_evenly_spaced_teacher_layers():
    teacher = tiny_model("bert", seed=1, num_hidden_layers=6, **NO_DROPOUT)
    student = tiny_model("bert", seed=0, num_hidden_layers=3, **NO_DROPOUT)
    inputs = tiny_batch("bert")
    loss = hidden_term(PruningObjective(student, teacher=teacher, layer_distill=1.0), inputs)
    s = student.train()(**inputs, output_hidden_states=True).hidden_states
    t = teacher(**inputs, output_hidden_states=True).hidden_states
    expected = hidden_state_loss(s, t, [(1, 2), (2, 4), (3, 6)], inputs["attention_mask"].bool())
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)


@pytest.mark.parametrize("model_type, task", [("gpt2", "causal-lm"), ("vit", "image-cls"), ("bert", "qa")])
def test_other_tasks_distil_layer_by_layer(model_type, task):
    student, teacher = tiny_model(model_type, task, seed=0), tiny_model(model_type, task, seed=1)
    inputs = tiny_batch(model_type, task if task != "qa" else "seq-cls")
    if task == "qa":
        inputs = {k: v for k, v in inputs.items() if k != "labels"} | {"start_positions": torch.tensor([1, 2, 0, 3]),
                                                                        "end_positions": torch.tensor([2, 3, 1, 3])}
    objective = PruningObjective(student, teacher=teacher, layer_distill=1.0)
    loss = objective.train()(**inputs).loss
    hidden = objective.pop_log_values()["distill/hidden_loss"]
    assert math.isfinite(float(loss.detach())) and hidden > 0


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), True])
def test_bad_weights_are_refused(weight):
    with pytest.raises(ValueError, match="layer_distill=.* must be a finite number >= 0"):
        PruningObjective(tiny_model("bert"), teacher=tiny_model("bert"), layer_distill=weight)


def test_without_a_teacher_the_term_is_off():
    objective = PruningObjective(tiny_model("bert"), layer_distill=1.0)
    assert objective.layer_distiller is None and objective.layer_distill == 0.0


def test_an_encoder_decoder_is_refused_with_one_clear_error():
    objective = PruningObjective(tiny_model("t5", "seq2seq", seed=0), teacher=tiny_model("t5", "seq2seq", seed=1),
                                 layer_distill=1.0)
    with pytest.raises(LayerDistillError, match="encoder-decoder models are not supported"):
        objective.train()(**tiny_batch("t5"))


# ------------------------------------------------------------------------------------------- the Trainer and the CLI
class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n=32, seq_len=8):
        self.ids = torch.randint(5, VOCAB, (n, seq_len), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]),
                "labels": torch.tensor(int(self.ids[i, 0] > VOCAB // 2))}


def test_the_hidden_loss_is_logged(tmp_path):
    objective = PruningObjective(tiny_model("bert", seed=0).train(), teacher=tiny_model("bert", seed=1),
                                 layer_distill=1.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3, report_to=[],
        use_cpu=True, save_strategy="no", logging_steps=2, remove_unused_columns=False, label_names=["labels"],
        disable_tqdm=True)
    trainer = transformers.Trainer(model=objective, args=args, train_dataset=ToyDataset(),
                                   callbacks=[DistillLogCallback(objective)])
    trainer.train()
    logged = [h["distill/hidden_loss"] for h in trainer.state.log_history if "distill/hidden_loss" in h]
    assert len(logged) == 2 and all(v > 0 for v in logged)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("tinybert"))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return write_review_csvs(tmp_path_factory.mktemp("data"), {"train.csv": 48, "dev.csv": 16},
                             ["great", "wonderful", "sharp"], ["dull", "boring", "flat"])


def prune_args(tiny_dir, data_files, out, *extra):
    return ["prune", "--model", str(tiny_dir), "--train-file", str(data_files / "train.csv"),
            "--validation-file", str(data_files / "dev.csv"), "--text-column", "review", "--label-column",
            "sentiment", "--epochs", "1", "--teacher-epochs", "1", "--fill-epochs", "1", "--batch-size", "16",
            "--bench-repeats", "1", "--bench-batch-sizes", "1", "--no-progress", "--max-length", "16",
            "--output-dir", str(out), *extra]


def test_the_flag_reaches_both_stages_and_is_pinned(tiny_dir, data_files, tmp_path, monkeypatch):
    from blockprune.app import finetune
    from blockprune.cli import main

    made = []

    class Recording(finetune.PruningObjective):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(finetune, "PruningObjective", Recording)
    out = tmp_path / "run"
    assert main(prune_args(tiny_dir, data_files, out, "--fill", "--layer-distill", "0.5")) == 0
    distilled = [o for o in made if o.teacher is not None]  # the prune and fill stages (the teacher has none)
    assert len(distilled) == 2 and all(o.layer_distill == 0.5 and o.layer_distiller is not None for o in distilled)
    assert distilled[0].pruner is not None and distilled[1].pruner is None
    assert json.loads((out / "run_config.json").read_text())["layer_distill"] == 0.5


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_flag_values_are_one_clear_error(tiny_dir, data_files, tmp_path, value, capsys):
    from blockprune.cli import main

    assert main(prune_args(tiny_dir, data_files, tmp_path / "bad", f"--layer-distill={value}")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("blockprune prune: error: --layer-distill")
    assert "must be a finite number >= 0" in err[0]
    assert not (tmp_path / "bad" / "teacher").exists()
