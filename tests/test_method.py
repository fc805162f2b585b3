"""Method details: global top-k allocation, floors, ignored layers, score init, gradients, last-step masks."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny import FFN, HEADS, LAYERS, tiny_batch, tiny_inputs, tiny_model

from blockprune import Pruner, PruningConfig
from blockprune.app.finetune import TrainSettings, optimizer_steps, training_arguments
from blockprune.deploy.counts import ffn_per_layer, heads_per_layer
from blockprune.deploy.plan import PlanError, target_without_ignored
from blockprune.engine.config import ConfigError
from blockprune.engine.objective import distillation_loss
from blockprune.engine.pruner import PatchError
from blockprune.engine.taylor import TaylorInitError, init_scores_taylor
from blockprune.surgery.shrink import shrink


def struct(**changes) -> PruningConfig:
    return PruningConfig.preset("struct", **{"sparsity": 0.5, **changes})


def groups_of(pruner: Pruner, kind: str) -> list:
    return [g for g in pruner.groups if g.kind == kind]


@torch.no_grad()
def set_layer_scores(pruner: Pruner, kind: str, per_layer: list[float]) -> None:
    for group, base in zip(groups_of(pruner, kind), per_layer, strict=True):
        group.scores.copy_(base + 0.01 * torch.arange(group.scores.numel(), dtype=torch.float32))


def test_global_topk_gives_heads_and_neurons_to_the_layers_that_score_higher():
    model = tiny_model("bert")
    pruner = Pruner(model, struct(allocation="global"))
    set_layer_scores(pruner, "attention", [5.0, -5.0])
    set_layer_scores(pruner, "ffn", [-5.0, 5.0])
    pruner.step(100, 100)
    pruner.finalize()
    shrink(model)
    # the same total as uniform top-k (half of all heads and neurons), but where the scores are
    assert heads_per_layer(model) == [HEADS, 0]
    assert ffn_per_layer(model) == [0, FFN]


def test_uniform_topk_keeps_the_same_fraction_in_every_layer_whatever_the_scores():
    model = tiny_model("bert")
    pruner = Pruner(model, struct())
    set_layer_scores(pruner, "attention", [5.0, -5.0])
    pruner.step(100, 100)
    pruner.finalize()
    shrink(model)
    assert heads_per_layer(model) == [HEADS // 2] * LAYERS


def test_global_floor_keeps_at_least_min_blocks_per_matrix_and_the_total():
    model = tiny_model("bert")
    pruner = Pruner(model, struct(allocation="global", min_blocks=1, sparsity=0.75))
    set_layer_scores(pruner, "attention", [5.0, -5.0])
    pruner.step(100, 100)
    kept = [round(g.density * g.scores.numel()) for g in groups_of(pruner, "attention")]
    assert kept == [HEADS // 2 - 1, 1]  # 2 of 8 heads in all; the losing layer keeps its best one


def test_global_magnitude_ranks_blocks_across_layers_by_their_weights():
    model = tiny_model("bert")
    with torch.no_grad():  # layer 1's FFN weights are 10x larger: global magnitude keeps its neurons first
        model.bert.encoder.layer[1].intermediate.dense.weight.mul_(10)
        model.bert.encoder.layer[1].output.dense.weight.mul_(10)
    pruner = Pruner(model, PruningConfig.preset("struct", sparsity=0.5, attention_method="magnitude",
                                                ffn_method="magnitude", allocation="global"))
    pruner.step(100, 100)
    pruner.finalize()
    shrink(model)
    assert ffn_per_layer(model) == [0, FFN]


def test_ignored_layers_stay_dense_and_unknown_layers_are_refused():
    model = tiny_model("bert")
    pruner = Pruner(model, struct(ignored_layers=[1]))
    assert pruner.layers and all(name.startswith("layer.0.") for name in pruner.layers)
    with pytest.raises(PatchError, match=r"ignored_layers \[7\] do not exist: the model has 2"):
        Pruner(tiny_model("bert"), struct(ignored_layers=[7]))
    with pytest.raises(ConfigError, match="ignored_layers"):
        struct(ignored_layers=["first"])


def test_target_with_ignored_layers_asks_more_of_the_pruned_ones():
    # 2 of 6 layers dense, whole model 2x: the other 4 must keep (1/2 - 1/3) / (2/3) = 1/4 of their FLOPs
    assert target_without_ignored(2.0, 2, 6) == pytest.approx(4.0)
    with pytest.raises(PlanError, match="cannot be reached with 3 of 6 layers left dense"):
        target_without_ignored(2.0, 3, 6)


def test_scores_initialised_from_magnitude_rank_blocks_as_magnitude_does():
    model = tiny_model("bert")
    pruner = Pruner(model, PruningConfig.preset("unstructured", sparsity=0.5))  # unstructured's default start
    for group in pruner.groups:
        magnitude = group.importance()
        assert torch.allclose(group.scores.detach(), magnitude / magnitude.mean())
    constant = Pruner(tiny_model("bert"), PruningConfig.preset("unstructured", sparsity=0.5,
                                                               score_init_from="constant"))
    assert all(bool((g.scores == 0).all()) for g in constant.groups)  # the old start stays one override away
    with pytest.raises(ConfigError, match="score_init_from='weights' is unknown"):
        PruningConfig(score_init_from="weights")


def test_scores_initialised_from_taylor_are_weight_times_gradient_summed_per_head_and_neuron():
    model, reference = tiny_model("bert"), tiny_model("bert")
    batches = [tiny_batch("bert", seed=s) for s in range(3)]
    for batch in batches:  # the same gradients, summed, on the unpatched copy (eval mode: no dropout)
        reference.eval()(**batch).loss.backward()
    pruner = Pruner(model, struct(score_init_from="taylor"))
    assert all(float(g.scores.detach().abs().sum()) == 0 for g in pruner.groups)  # taylor needs data: nothing yet
    assert init_scores_taylor(pruner, model, iter(batches)) == 3
    layer = reference.bert.encoder.layer[0]
    up, down = layer.intermediate.dense.weight, layer.output.dense.weight
    neurons = (up * up.grad).abs().sum(1) + (down * down.grad).abs().sum(0)
    attn = layer.attention
    per_row = sum((lin.weight * lin.weight.grad).abs().sum(1) for lin in (attn.self.query, attn.self.key,
                                                                       attn.self.value))
    per_head = per_row.reshape(HEADS, -1).sum(1) + (attn.output.dense.weight * attn.output.dense.weight.grad
                                                    ).abs().sum(0).reshape(HEADS, -1).sum(1)
    ffn, heads = groups_of(pruner, "ffn")[0], groups_of(pruner, "attention")[0]
    assert torch.allclose(ffn.scores.detach(), neurons / neurons.mean(), rtol=1e-4)
    assert torch.allclose(heads.scores.detach(), per_head / per_head.mean(), rtol=1e-4)
    assert all(p.grad is None for p in model.parameters())  # training starts from clean gradients


def test_hybrid_scores_start_from_the_taylor_ranking_of_each_tile():
    from tiny import HEAD_DIM

    model, reference = tiny_model("bert"), tiny_model("bert")
    batches = [tiny_batch("bert", seed=s) for s in range(2)]
    for batch in batches:
        reference.eval()(**batch).loss.backward()
    config = PruningConfig.preset("hybrid", sparsity=0.5, attention_block=(HEAD_DIM, HEAD_DIM))
    assert config.score_init_from == "taylor"  # tiles learn from the task gradient's ranking, not from 0
    pruner = Pruner(model, config)
    assert init_scores_taylor(pruner, model, iter(batches)) == 2
    value = reference.bert.encoder.layer[0].attention.self.value.weight
    side = HEAD_DIM
    tiles = (value * value.grad).abs().reshape(value.shape[0] // side, side, value.shape[1] // side, side).sum((1, 3))
    group = next(g for g in groups_of(pruner, "attention")
                 if any(m is model.bert.encoder.layer[0].attention.self.value for m in g.members))
    assert torch.allclose(group.scores.detach(), tiles / tiles.mean(), rtol=1e-4)
    assert float(group.scores.detach().std()) > 0  # a ranking, not a constant


def test_taylor_of_a_conv1d_equals_that_of_the_same_linear():
    from transformers.pytorch_utils import Conv1D

    from blockprune.engine.layers import MaskedLinear, ScoreGroup

    torch.manual_seed(0)
    conv, linear = Conv1D(6, 4), torch.nn.Linear(4, 6)  # (in, out) storage vs (out, in)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
    conv.weight.grad = torch.randn(4, 6)
    linear.weight.grad = conv.weight.grad.t().clone()
    values = [MaskedLinear(m, ScoreGroup((6,), "topk", "ffn"), "rows", (1, -1)).block_taylor() for m in (conv, linear)]
    assert torch.allclose(values[0], values[1])


def test_taylor_init_without_labels_names_the_fix():
    model = tiny_model("bert")
    pruner = Pruner(model, struct(score_init_from="taylor"))
    with pytest.raises(TaylorInitError, match="give the batches labels, or use score_init_from=magnitude"):
        init_scores_taylor(pruner, model, iter([tiny_inputs()]))


def test_straight_sigmoid_passes_the_gradient_unscaled_while_the_sigmoid_version_scales_it():
    scores = torch.tensor([4.0, -4.0, 0.5], requires_grad=True)
    from blockprune.engine.masks import get_method

    get_method("sigmoid_threshold_straight").fn(scores, 1.0, 0.1).sum().backward()
    assert torch.equal(scores.grad, torch.ones(3))
    scores.grad = None
    get_method("sigmoid_threshold").fn(scores, 1.0, 0.1).sum().backward()
    sigma = torch.sigmoid(scores.detach())
    assert torch.allclose(scores.grad, sigma * (1 - sigma))  # sigma'(4) = 0.018: saturated scores barely learn
    forward = [get_method(m).fn(scores, 0.67, 0.1) for m in ("sigmoid_threshold", "sigmoid_threshold_straight")]
    assert torch.equal(forward[0], forward[1])


def test_finalize_bakes_in_the_masks_of_the_last_training_forward_not_scores_moved_after_it():
    model = tiny_model("bert").train()
    pruner = Pruner(model, struct())
    torch.manual_seed(0)
    with torch.no_grad():
        for group in pruner.groups:
            group.scores.copy_(torch.randn_like(group.scores))
    pruner.step(100, 100)
    model(**tiny_inputs())  # the last training step's forward pass
    used = [g.hard_mask().clone() for g in pruner.groups]
    with torch.no_grad():  # the optimizer step after it reverses every ranking
        for group in pruner.groups:
            group.scores.neg_()
    assert any(not torch.equal(u, g.hard_mask()) for u, g in zip(used, pruner.groups, strict=True))
    pruner.step(100, 100)  # the same densities again (a resumed run re-applies its last step): still valid
    pruner.finalize()
    layer = model.bert.encoder.layer[0]
    alive = (layer.attention.self.value.weight.reshape(HEADS, -1) != 0).any(dim=1).float()
    assert torch.equal(alive, used[0])


def test_a_new_density_forgets_the_recorded_mask():
    model = tiny_model("bert").train()
    pruner = Pruner(model, struct())
    pruner.step(50, 100)
    model(**tiny_inputs())
    assert all(bool(g.has_last_mask) for g in pruner.groups)
    pruner.step(100, 100)
    assert not any(bool(g.has_last_mask) for g in pruner.groups)


def test_one_hard_mask_per_group_per_forward_pass(monkeypatch):
    model = tiny_model("bert").train()
    pruner = Pruner(model, struct())
    pruner.step(100, 100)
    calls = []
    for group in pruner.groups:
        group._cache = None  # step() has computed the masks once already (for its log values)
        hard = group.method.hard
        monkeypatch.setattr(group, "method", dataclasses.replace(
            group.method, hard=lambda *a, _hard=hard: calls.append(1) or _hard(*a)))
    model(**tiny_inputs()).logits.sum().backward()
    assert len(calls) == len(pruner.groups)  # heads: one for Q, K, V and O together; neurons: up and down
    with torch.no_grad():
        for group in pruner.groups:
            group.scores.add_(1.0)  # an optimizer step changes the scores: the next forward recomputes
    model(**tiny_inputs())
    assert len(calls) == 2 * len(pruner.groups)


def test_question_answering_distillation_leaves_padded_positions_out():
    student, teacher = torch.randn(2, 6), torch.randn(2, 6)
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    base = distillation_loss(student, teacher, 2.0, valid)
    student[1, 3:], teacher[1, 3:] = 50.0, -50.0  # whatever the padded logits are
    assert torch.allclose(distillation_loss(student, teacher, 2.0, valid), base)
    assert not torch.allclose(distillation_loss(student, teacher, 2.0), base)


def test_warmup_is_a_fraction_of_the_real_optimizer_steps(tmp_path):
    args = training_arguments(tmp_path, TrainSettings(warmup_ratio=0.06, overrides={
        "gradient_accumulation_steps": 4}))
    assert args.warmup_steps == pytest.approx(0.06)  # the Trainer takes it as a ratio of its max_steps
    assert args.get_warmup_steps(250) == 15


def test_optimizer_steps_count_accumulation_processes_and_the_minimum(monkeypatch):
    settings = TrainSettings(epochs=1.0, batch_size=32)
    assert optimizer_steps(2_000, settings) == 63
    assert optimizer_steps(2_000, dataclasses.replace(settings, overrides={"gradient_accumulation_steps": 4})) == 15
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert optimizer_steps(2_000, settings) == 32
    assert optimizer_steps(2_000, dataclasses.replace(settings, min_steps=300)) == 300


def test_unstructured_prunes_from_5_to_50_percent_of_the_steps_and_block_keeps_the_cubic_default():
    from blockprune.engine.schedule import sparsity_at

    cfg = PruningConfig.preset("unstructured", sparsity=0.9)
    at = [sparsity_at(step, 100, cfg.sparsity, cfg.warmup, cfg.cooldown) for step in (4, 6, 49, 50, 99)]
    assert at[0] == 0.0 and 0.0 < at[1] < 0.9 and at[2] < 0.9  # dense first, then the ramp
    assert at[3] == pytest.approx(0.9) and at[4] == pytest.approx(0.9)  # the second half trains the final masks
    block = PruningConfig.preset("block")
    assert (block.warmup, block.cooldown) == (PruningConfig().warmup, PruningConfig().cooldown) == (0.1, 0.1)
