"""Pruner: patching, densities, STE, coupling, finalize, plain-loop training."""

import pytest
import torch
import transformers
from tiny import HEAD_DIM, MODEL_TYPES, tiny_inputs, tiny_model

from blockprune import PatchError, Pruner, PruningConfig, UnsupportedModelError
from blockprune.engine.layers import MaskedLinear
from blockprune.engine.masks import BlockShapeError

TILE = (HEAD_DIM, HEAD_DIM)


def configs(sparsity=0.5):
    return {
        "unstructured": PruningConfig.preset("unstructured", sparsity=sparsity),
        "block": PruningConfig.preset("block", sparsity=sparsity, attention_block=TILE, ffn_block=TILE),
        "block-topk": PruningConfig.preset("block", sparsity=sparsity, attention_block=TILE, ffn_block=TILE,
                                           attention_method="topk", ffn_method="topk"),
        "hybrid": PruningConfig.preset("hybrid", sparsity=sparsity, attention_block=TILE),
        "struct": PruningConfig.preset("struct", sparsity=sparsity),
        "magnitude": PruningConfig(attention_method="magnitude", ffn_method="magnitude", attention_block=TILE,
                                   sparsity=sparsity),
    }


def randomize_scores(pruner, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in pruner.groups:
            group.scores.copy_(torch.randn(group.scores.shape, generator=generator) * 3)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_all_kept_equals_the_original_model(model_type):
    model = tiny_model(model_type)
    inputs = tiny_inputs()
    expected = model(**inputs).logits
    pruner = Pruner(model, configs()["struct"])
    pruner.step(0, 100)  # warm-up: dense
    assert pruner.stats()["overall"] == 1.0
    assert torch.allclose(model(**inputs).logits, expected, atol=1e-6)
    assert len(pruner.layers) == 2 * 6  # Q, K, V, O, up, down per layer


def test_block_shares_its_budget_among_the_matrices_of_a_kind_and_meets_it():
    pruner = Pruner(tiny_model("bert"), configs(0.75)["block"])  # soft movement: one budget per kind
    randomize_scores(pruner)
    pruner.step(100, 100)
    stats = pruner.stats()
    assert stats["overall"] == pytest.approx(0.25, abs=1e-6)  # the target, exactly
    assert len({round(d, 4) for d in stats["modules"].values()}) > 1  # spread unevenly, as the scores say


@pytest.mark.parametrize("name", ["unstructured", "block-topk", "struct", "magnitude"])
def test_topk_hits_exact_density_per_matrix(name):
    model = tiny_model("bert")
    pruner = Pruner(model, configs(0.75)[name])
    randomize_scores(pruner)
    pruner.step(100, 100)
    stats = pruner.stats()
    assert all(d == pytest.approx(0.25) for d in stats["modules"].values()), stats["modules"]
    assert stats["overall"] == pytest.approx(0.25)


@pytest.mark.parametrize("name", sorted(configs()))
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_finalize_gives_stock_model_with_masked_outputs(name, model_type):
    model = tiny_model(model_type)
    pruner = Pruner(model, configs(0.6)[name])
    randomize_scores(pruner, seed=1)
    pruner.step(100, 100)
    inputs = tiny_inputs()
    masked = model(**inputs).logits
    stats = pruner.stats()
    final = pruner.finalize()
    assert not any(isinstance(m, MaskedLinear) for m in final.modules())
    assert not hasattr(final, "blockprune")
    assert type(final) is type(tiny_model(model_type))
    assert torch.allclose(final(**inputs).logits, masked, atol=1e-6)
    linears = [m for n, m in final.named_modules() if isinstance(m, torch.nn.Linear) and "classifier" not in n
               and "pre_classifier" not in n and "dense" in n or n.endswith(("query", "key", "value", "q_lin",
                                                                          "k_lin", "v_lin", "out_lin", "lin1", "lin2"))]
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    total = sum(m.weight.numel() for m in linears)
    assert zeros / total == pytest.approx(1 - stats["overall"], abs=0.05)
    with pytest.raises(PatchError, match="already"):
        pruner.finalize()


def test_head_mode_couples_qkv_rows_and_o_columns():
    model = tiny_model("bert")
    pruner = Pruner(model, configs(0.5)["struct"])
    randomize_scores(pruner)
    pruner.step(100, 100)
    pruner.finalize()
    for layer in model.bert.encoder.layer:
        att = layer.attention
        for h in range(4):
            rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            dead = [bool((lin.weight[rows] == 0).all()) for lin in (att.self.query, att.self.key, att.self.value)]
            dead.append(bool((att.output.dense.weight[:, rows] == 0).all()))
            assert len(set(dead)) == 1, f"head {h} half pruned: {dead}"
            if dead[0]:
                assert (att.self.value.bias[rows] == 0).all()
        assert sum((att.self.value.weight.reshape(4, -1) == 0).all(dim=1).tolist()) == 2


def test_neuron_mode_couples_up_rows_and_down_columns():
    model = tiny_model("bert")
    pruner = Pruner(model, configs(0.5)["hybrid"].replace(ffn_method="topk"))
    randomize_scores(pruner)
    pruner.step(100, 100)
    pruner.finalize()
    for layer in model.bert.encoder.layer:
        up_dead = (layer.intermediate.dense.weight == 0).all(dim=1) & (layer.intermediate.dense.bias == 0)
        down_dead = (layer.output.dense.weight == 0).all(dim=0)
        assert torch.equal(up_dead, down_dead) and int(up_dead.sum()) == 32


def test_gradients_reach_scores_through_the_mask():
    model = tiny_model("bert").train()
    pruner = Pruner(model, configs(0.5)["block"])
    pruner.step(100, 100)
    out = model(**tiny_inputs(), labels=torch.tensor([0, 1]))
    out.loss.backward()
    grads = [g.scores.grad for g in pruner.groups]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_param_groups_give_scores_their_own_lr_and_no_decay():
    model = tiny_model("bert")
    pruner = Pruner(model, configs()["hybrid"].replace(score_lr=0.05))
    groups = pruner.param_groups(lr=1e-4, weight_decay=0.01)
    score_group = groups[-1]
    assert score_group["lr"] == 0.05 and score_group["weight_decay"] == 0.0
    assert {id(p) for p in score_group["params"]} == {id(p) for p in pruner.score_parameters()}
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))


def test_patching_twice_is_an_error():
    model = tiny_model("bert")
    Pruner(model, configs()["struct"])
    with pytest.raises(PatchError, match="already patched"):
        Pruner(model, configs()["struct"])


def test_block_not_dividing_names_module():
    with pytest.raises(BlockShapeError, match=r"layer\.0\.attention\.self\.query"):
        Pruner(tiny_model("bert"), PruningConfig(attention_block=(5, 5)))


def test_unsupported_model_lists_supported_types():
    config = transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                        intermediate_size=64, vocab_size=50)
    model = transformers.GPTNeoXModel(config)
    with pytest.raises(UnsupportedModelError, match=r"bert.*distilbert.*fallback=True"):
        Pruner(model, PruningConfig())


def train_plain_loop(config, steps=80, seed=0):
    model = tiny_model("bert", seed=seed).train()
    pruner = Pruner(model, config)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-3, score_lr=5e-2))
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        log = pruner.step(step, steps)
        ids = torch.randint(5, 100, (8, 12), generator=generator)
        labels = (ids[:, 0] > 50).long()
        loss = model(input_ids=ids, labels=labels).loss + pruner.regularization()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return model, pruner, log, losses


def test_plain_loop_topk_reaches_target_sparsity():
    _, pruner, log, losses = train_plain_loop(PruningConfig.preset("struct", sparsity=0.5))
    stats = pruner.stats()
    assert stats["attention"] == pytest.approx(0.5) and stats["ffn"] == pytest.approx(0.5)
    assert log["prune/target_density_ffn"] == pytest.approx(0.5)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_plain_loop_soft_movement_lands_within_5_percent_of_target():
    config = PruningConfig.preset("hybrid", sparsity=0.6, attention_block=TILE, warmup=0.05, cooldown=0.2)
    _, pruner, log, _ = train_plain_loop(config, steps=150)
    overall = pruner.stats()["overall"]
    assert abs(overall - 0.4) <= 0.05 * 0.4 + 0.02, (overall, log)
    assert log["prune/lambda"] > 0
