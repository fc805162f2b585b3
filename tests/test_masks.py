"""Blocks and masking methods."""

import pytest
import torch

from blockprune.engine.masks import (
    METHODS,
    BlockShapeError,
    expand_blocks,
    get_method,
    grid_shape,
    reduce_blocks,
    register_method,
    resolve_block,
)


@pytest.mark.parametrize("block", [(1, 1), (4, 4), (2, 8), (1, -1), (-1, 1), (-1, -1)])
def test_expand_then_reduce_round_trips(block):
    shape = (8, 16)
    torch.manual_seed(0)
    grid = grid_shape(shape, block)
    block_mask = (torch.rand(grid) > 0.5).float()
    full = expand_blocks(block_mask, block, shape)
    assert full.shape == shape
    rows, cols = resolve_block(shape, block)
    assert torch.equal(reduce_blocks(full, block) / (rows * cols), block_mask)


def test_block_that_does_not_divide_names_the_matrix():
    with pytest.raises(BlockShapeError, match=r"layer\.0\.query.*\(10, 16\)"):
        grid_shape((10, 16), (4, 4), "layer.0.query")


@pytest.mark.parametrize("density", [0.0, 0.1, 0.37, 0.5, 1.0])
def test_topk_keeps_exact_count(density):
    scores = torch.randn(7, 9)
    mask = get_method("topk").fn(scores, density, 0.5)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert int(mask.sum()) == round(density * scores.numel())
    if 0 < density < 1:  # the kept blocks are the highest-scoring ones
        assert scores[mask.bool()].min() >= scores[~mask.bool()].max()


def test_learned_methods_pass_gradients_straight_through():
    for name in ("topk", "sigmoid_threshold"):
        scores = torch.randn(5, 5, requires_grad=True)
        mask = get_method(name).fn(scores, 0.5, 0.5)
        (mask * torch.arange(25.0).reshape(5, 5)).sum().backward()
        assert scores.grad is not None and scores.grad.abs().sum() > 0, name


def test_magnitude_mask_has_no_gradient_and_keeps_largest():
    importance = torch.tensor([[3.0, 1.0], [2.0, 0.5]], requires_grad=True)
    mask = get_method("magnitude").fn(importance, 0.5, 0.5)
    assert mask.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    assert not mask.requires_grad


def test_sigmoid_threshold_compares_sigmoid():
    scores = torch.tensor([-3.0, 0.0, 3.0])
    assert get_method("sigmoid_threshold").fn(scores, 1.0, 0.4).tolist() == [0.0, 1.0, 1.0]


def test_unknown_method_lists_registered():
    with pytest.raises(ValueError, match="topk") as err:
        get_method("nope")
    assert "magnitude" in str(err.value) and "sigmoid_threshold" in str(err.value)


def test_registering_a_method_is_one_function():
    @register_method("all_kept_for_test", learned=False)
    def all_kept(scores, density, threshold):
        return torch.ones_like(scores)

    try:
        assert get_method("all_kept_for_test").fn(torch.zeros(2, 2), 0.1, 0.5).sum() == 4
    finally:
        METHODS.pop("all_kept_for_test")
