"""Shrink removes exactly the heads and neurons whose contribution is zero or constant, and nothing else."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import FFN, HEAD_DIM, HEADS, LAYERS, tiny_inputs, tiny_model
from torch import nn

from blockprune.surgery.arch import EmptyAttention, FFNSpec, find_blocks, get_arch, get_path, set_path
from blockprune.surgery.shrink import (  # gated-MLP rule has no table entry yet
    ShrinkError,
    _keep_neurons,
    _neuron_plan,
    apply_shapes,
    check_record,
    shape_record,
    shrink,
    slice_linear,
)

TOL = 1e-4
ARCHS = ("bert", "distilbert")


def noisy_model(model_type: str, attn: str = "sdpa", seed: int = 0) -> nn.Module:
    """A tiny model whose weights AND biases are all clearly non-zero, so every fold and drop matters."""
    model = tiny_model(model_type, attn_implementation=attn, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**tiny_inputs(batch=3, seq_len=10)).logits


def parts(model: nn.Module, layer: int) -> dict[str, nn.Linear]:
    spec, block = get_arch(model), find_blocks(model)[layer]
    attn = spec.attention[0]
    names = {"q": attn.q, "k": attn.k, "v": attn.v, "o": attn.o, "up": spec.ffn.up, "down": spec.ffn.down}
    return {key: get_path(block, path) for key, path in names.items()}


def head_slice(h: int) -> slice:
    return slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)


def random_sets(count: int, size: int, seed: int) -> list[list[int]]:
    """Per-layer random subsets (about half) of range(size), different in every layer."""
    generator = torch.Generator().manual_seed(seed)
    return [sorted(torch.randperm(size, generator=generator)[: size // 2 + layer].tolist()) for layer in range(count)]


def shrink_and_compare(model: nn.Module):
    before = logits(model)
    result = shrink(model)
    torch.testing.assert_close(logits(model), before, atol=TOL, rtol=0)
    return result


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("where", ["v", "o"])
def test_heads_with_zero_v_or_zero_o_are_removed_exactly(model_type: str, attn: str, where: str) -> None:
    model = noisy_model(model_type, attn)
    gone = random_sets(LAYERS, HEADS, seed=3)
    with torch.no_grad():
        for layer, heads in enumerate(gone):
            p = parts(model, layer)
            for h in heads:
                if where == "v":
                    p["v"].weight[head_slice(h)] = 0
                    p["v"].bias[head_slice(h)] = 0
                else:
                    p["o"].weight[:, head_slice(h)] = 0
    result = shrink_and_compare(model)
    kept = [[sorted(set(range(HEADS)) - set(heads))] for heads in gone]
    assert result.heads_kept == kept
    assert result.params_after < result.params_before
    for layer, [heads] in enumerate(kept):  # uneven heads per layer, all projections and attributes consistent
        p, block = parts(model, layer), find_blocks(model)[layer]
        module = get_path(block, get_arch(model).attention[0].module)
        width = len(heads) * HEAD_DIM
        assert p["q"].out_features == p["k"].out_features == p["v"].out_features == p["o"].in_features == width
        assert getattr(module, get_arch(model).attention[0].heads_attr) == len(heads)


@pytest.mark.parametrize("model_type", ARCHS)
def test_head_with_only_q_and_k_zero_is_kept(model_type: str) -> None:
    model = noisy_model(model_type)
    with torch.no_grad():
        p = parts(model, 0)
        for key in ("q", "k"):
            p[key].weight[head_slice(1)] = 0
            p[key].bias[head_slice(1)] = 0
    result = shrink_and_compare(model)
    assert result.heads_kept == [[list(range(HEADS))]] * LAYERS
    assert result.params_after == result.params_before


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ARCHS)
def test_heads_with_zero_v_rows_go_and_their_v_bias_moves_into_o(model_type: str, attn: str) -> None:
    """V bias untouched (as masks leave it): the head outputs that bias at every position, a constant for O."""
    model = noisy_model(model_type, attn)
    gone = random_sets(LAYERS, HEADS, seed=4)
    o_bias = []
    with torch.no_grad():
        for layer, heads in enumerate(gone):
            p = parts(model, layer)
            o_bias.append(p["o"].bias.clone())
            expected_shift = sum(p["o"].weight[:, head_slice(h)] @ p["v"].bias[head_slice(h)] for h in heads)
            o_bias[-1] += expected_shift
            for h in heads:
                p["v"].weight[head_slice(h)] = 0
    result = shrink_and_compare(model)
    assert result.heads_kept == [[sorted(set(range(HEADS)) - set(heads))] for heads in gone]
    assert result.units_folded == sum(map(len, gone))
    for layer in range(LAYERS):
        torch.testing.assert_close(parts(model, layer)["o"].bias, o_bias[layer])


def test_head_with_zero_v_rows_stays_when_o_has_no_bias_to_take_its_constant() -> None:
    model = noisy_model("bert")
    with torch.no_grad():
        p = parts(model, 0)
        p["o"].bias = None
        p["v"].weight[head_slice(2)] = 0  # outputs its V bias through O: a constant with nowhere to go
        p["v"].weight[head_slice(3)] = 0
        p["v"].bias[head_slice(3)] = 0  # outputs exactly zero: goes
    result = shrink_and_compare(model)
    assert result.heads_kept[0] == [[h for h in range(HEADS) if h != 3]]
    assert result.units_folded == 0


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("where", ["down", "up"])
def test_neurons_with_zero_down_column_or_zero_up_row_are_removed_exactly(model_type: str, where: str) -> None:
    model = noisy_model(model_type)
    gone = random_sets(LAYERS, FFN, seed=5)
    with torch.no_grad():
        for layer, neurons in enumerate(gone):
            p = parts(model, layer)
            if where == "down":
                p["down"].weight[:, neurons] = 0
            else:  # up bias stays non-zero: act(bias)·down column must move into down's bias
                p["up"].weight[neurons] = 0
    old_bias = [parts(model, layer)["down"].bias.clone() for layer in range(LAYERS)]
    result = shrink_and_compare(model)
    assert result.neurons_kept == [sorted(set(range(FFN)) - set(n)) for n in gone]
    assert result.neurons_folded == (sum(map(len, gone)) if where == "up" else 0)
    bias_moved = not torch.equal(parts(model, 0)["down"].bias, old_bias[0])
    assert bias_moved == (where == "up")


@pytest.mark.parametrize("model_type", ARCHS)
def test_tile_masks_remove_exactly_the_fully_empty_groups(model_type: str) -> None:
    """8x8 tiles zeroed at random (biases untouched, as block pruning leaves them): compare with a direct count."""
    model = noisy_model(model_type)
    generator = torch.Generator().manual_seed(11)
    expect_heads, expect_neurons = [], []
    with torch.no_grad():
        for layer in range(LAYERS):
            p = parts(model, layer)
            for linear in p.values():
                rows, cols = linear.weight.shape[0] // 8, linear.weight.shape[1] // 8
                keep = torch.rand(rows, cols, generator=generator) > 0.6
                linear.weight.mul_(keep.repeat_interleave(8, 0).repeat_interleave(8, 1))
            empty = [bool((p["o"].weight[:, head_slice(h)] == 0).all() or (p["v"].weight[head_slice(h)] == 0).all())
                     for h in range(HEADS)]  # zero V rows: the V bias (never zero here) is folded into O's
            expect_heads.append([[h for h in range(HEADS) if not empty[h]]])
            up_zero = (p["up"].weight == 0).all(dim=1)
            down_zero = (p["down"].weight == 0).all(dim=0)
            expect_neurons.append((~(up_zero | down_zero)).nonzero().flatten().tolist())
    result = shrink_and_compare(model)
    assert result.heads_kept == expect_heads
    assert result.neurons_kept == expect_neurons
    assert sum(map(len, expect_neurons)) < LAYERS * FFN  # the seed does empty some neurons
    assert sum(len(g[0]) for g in expect_heads) < LAYERS * HEADS  # ... and some heads


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("where", ["v", "o"])
def test_layer_losing_every_head_becomes_empty_attention(model_type: str, attn: str, where: str) -> None:
    model = noisy_model(model_type, attn)
    keys_before = set(model.state_dict())
    with torch.no_grad():
        p = parts(model, 1)
        if where == "v":
            p["v"].weight.zero_()
            p["v"].bias.zero_()
        else:
            p["o"].weight.zero_()
    result = shrink_and_compare(model)
    spec = get_arch(model).attention[0]
    block = find_blocks(model)[1]
    assert result.heads_kept[1] == [[]]
    assert isinstance(get_path(block, spec.module), EmptyAttention)
    assert get_path(block, spec.o).in_features == 0  # O still there, adding its bias
    o_keys = {k for k in keys_before if ".1." in k and spec.o.split(".")[-1] in k}
    assert o_keys and o_keys <= set(model.state_dict())  # O keeps its state-dict names


@pytest.mark.parametrize("model_type", ARCHS)
@pytest.mark.parametrize("where", ["down", "up"])
def test_layer_losing_every_neuron_keeps_working(model_type: str, where: str) -> None:
    model = noisy_model(model_type)
    with torch.no_grad():
        parts(model, 0)[where].weight.zero_()
    result = shrink_and_compare(model)
    assert result.neurons_kept[0] == []
    p = parts(model, 0)
    assert p["up"].out_features == 0 and p["down"].in_features == 0


@pytest.mark.parametrize("model_type", ARCHS)
def test_everything_empty_still_runs_exactly(model_type: str) -> None:
    model = noisy_model(model_type)
    with torch.no_grad():
        for layer in range(LAYERS):
            p = parts(model, layer)
            p["o"].weight.zero_()
            p["up"].weight.zero_()
    result = shrink_and_compare(model)
    assert result.heads_per_layer == [[0]] * LAYERS and result.ffn_per_layer == [0] * LAYERS


@pytest.mark.parametrize("model_type", ARCHS)
def test_shrink_is_idempotent(model_type: str) -> None:
    model = noisy_model(model_type)
    with torch.no_grad():
        parts(model, 0)["o"].weight.zero_()
        parts(model, 1)["v"].weight[head_slice(0)] = 0
        parts(model, 1)["v"].bias[head_slice(0)] = 0
        parts(model, 1)["up"].weight[:7] = 0
    first = shrink(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(model.named_modules())
    second = shrink(model)
    assert second.params_before == second.params_after == first.params_after
    assert second.heads_per_layer == first.heads_per_layer and second.ffn_per_layer == first.ffn_per_layer
    assert second.neurons_folded == 0
    assert dict(model.named_modules()) == modules
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_unbaked_projection_is_a_clear_error() -> None:
    model = tiny_model("bert")
    block = find_blocks(model)[0]
    set_path(block, "attention.self.value", nn.Sequential(get_path(block, "attention.self.value")))
    with pytest.raises(ShrinkError, match=r"layer 0: 'attention.self.value' is a Sequential.*finalize"):
        shrink(model)


def test_slice_linear_keeps_dtype_and_values() -> None:
    linear = nn.Linear(6, 5).double()
    new = slice_linear(linear, rows=torch.tensor([4, 1]), cols=torch.tensor([0, 5]))
    assert new.weight.dtype == torch.float64
    assert torch.equal(new.weight, linear.weight[[4, 1]][:, [0, 5]])
    assert torch.equal(new.bias, linear.bias[[4, 1]])


def test_gated_ffn_folds_only_what_is_constant() -> None:
    """down(act(up x) * gate x): up+gate rows zero -> constant, folded; up row zero alone -> kept."""
    torch.manual_seed(0)
    block = nn.Module()
    block.up, block.gate, block.down, block.act = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(6, 8), nn.SiLU()
    spec = FFNSpec(up="up", down="down", act="act", gate="gate")
    with torch.no_grad():
        block.up.weight[[0, 1, 2]] = 0
        block.gate.weight[[0, 3]] = 0
        block.gate.bias[3] = 0  # neuron 3: act(up x) * 0 -> exactly zero
        block.down.weight[:, 4] = 0
    x = torch.randn(5, 8)

    def run() -> torch.Tensor:
        return block.down(block.act(block.up(x)) * block.gate(x))

    before = run()
    keep, fold_idx, values = _neuron_plan(block, spec, 0)
    assert keep == [1, 2, 5] and fold_idx.tolist() == [0]
    _keep_neurons(block, spec, keep, 0, fold_idx, values)
    torch.testing.assert_close(run(), before, atol=TOL, rtol=0)


def test_shape_record_and_apply_shapes_rebuild_the_same_shapes() -> None:
    model = noisy_model("distilbert")
    with torch.no_grad():
        parts(model, 0)["o"].weight[:, head_slice(3)] = 0
        parts(model, 1)["o"].weight.zero_()
        parts(model, 1)["down"].weight[:, 10:] = 0
    result = shrink(model)
    record = shape_record(model, result)
    assert record["format"] == "blockprune-shapes" and record["version"] == 1
    assert record["model_type"] == "distilbert"
    assert [(lay["heads"], lay["ffn"]) for lay in record["layers"]] == [([3], FFN), ([0], 10)]
    assert record["layers"][0]["kept_heads"] == [[0, 1, 2]]
    fresh = apply_shapes(tiny_model("distilbert", seed=1), record)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    before = copy.deepcopy(fresh.state_dict())
    apply_shapes(fresh, shape_record(fresh))  # own record: a no-op
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(version=3), "newer than this blockprune reads"),
        (lambda r: r.update(format="other"), "not a blockprune shape record"),
        (lambda r: r.update(model_type="roberta"), "'roberta'"),
        (lambda r: r["layers"].pop(), "has 1 layers, but the config builds 2"),
        (lambda r: r["layers"][0].update(ffn=FFN + 1), "more than the model has"),
        (lambda r: r["layers"][1].update(heads=[-1]), "layer 1 is malformed"),
    ],
)
def test_bad_shape_record_is_a_clear_error(change, message: str) -> None:
    model = tiny_model("bert")
    record = shape_record(model)
    change(record)
    with pytest.raises(ShrinkError, match=message):
        check_record(record, model)


# --------------------------------------------------------------------------------------------- ffn_multiple


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])  # Linear, Conv1D, gated MLP
def test_ffn_multiple_pads_with_zero_neurons_exactly(model_type: str, tmp_path) -> None:
    from tiny import DEFAULT_TASK, prune_at_random

    from blockprune import load_pruned, save_pruned
    from blockprune.surgery.arch import weight_out_in

    task = DEFAULT_TASK.get(model_type, "seq-cls")
    model = prune_at_random(tiny_model(model_type, task), "struct", sparsity=0.6, seed=3)
    plain = copy.deepcopy(model)
    before = logits(model)
    reference = shrink(plain)
    result = shrink(model, ffn_multiple=8)
    torch.testing.assert_close(logits(model), before, atol=TOL, rtol=0)
    assert result.ffn_per_layer == reference.ffn_per_layer and result.neurons_kept == reference.neurons_kept
    spec = get_arch(model)
    for layer, block in enumerate(find_blocks(model)):
        kept, pad = reference.ffn_per_layer[layer], result.ffn_padding[layer]
        up, down = get_path(block, spec.ffn.up), get_path(block, spec.ffn.down)
        width = weight_out_in(up).shape[0]
        assert width == kept + pad and width % 8 == 0 and (pad > 0) == (kept % 8 > 0), (layer, kept, pad)
        assert not weight_out_in(up)[kept:].any() and not weight_out_in(down)[:, kept:].any()
    assert any(result.ffn_padding)  # the case really padded something
    # shrinking again keeps the padded shapes and values; saving and loading keeps them too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    again = shrink(model, ffn_multiple=8)
    assert again.ffn_padding == result.ffn_padding
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    save_pruned(model, tmp_path / "small", result=result)
    torch.testing.assert_close(logits(load_pruned(tmp_path / "small", model_class=type(model))), before, atol=TOL,
                               rtol=0)


def test_padding_neurons_stay_zero_when_training_goes_on() -> None:
    """The fill stage trains a padded model: its zero neurons must not come back to life."""
    from tiny import prune_at_random

    model = prune_at_random(tiny_model("bert"), "struct", sparsity=0.6, seed=3)
    result = shrink(model, ffn_multiple=8)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        out = model(**tiny_inputs(batch=3, seq_len=10), labels=torch.tensor([0, 1, 0]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for layer, block in enumerate(find_blocks(model)):
        kept = result.ffn_per_layer[layer]
        assert not block.intermediate.dense.weight[kept:].any() and not block.intermediate.dense.bias[kept:].any()
        assert not block.output.dense.weight[:, kept:].any()


@pytest.mark.parametrize("bad", [0, -16, 2.5, True])
def test_bad_ffn_multiple_is_a_clear_error(bad) -> None:
    with pytest.raises(ShrinkError, match=r"ffn_multiple=.*whole number ≥ 1"):
        shrink(tiny_model("bert"), ffn_multiple=bad)
