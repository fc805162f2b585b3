"""Hidden-dimension (residual width) masking and its exact removal (issue 35, item 1).

A model patched by ``HiddenMask`` (masked LayerNorm statistics, masked residual writers) must compute what the
model cut by ``shrink_hidden`` computes, for every supported encoder, with heads and FFN neurons removed by
``shrink`` as well, in either order; the cut model saves and loads at its new width and counts right.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import FFN, HEAD_DIM, HEADS, HIDDEN, LAYERS, prune_at_random, tiny_inputs, tiny_model

from blockprune.deploy.counts import count_params, flops_per_token, heads_per_layer
from blockprune.engine.hidden import HiddenMask, masked_layer_norm, masked_norm_reference
from blockprune.store.saving import SHAPES_FILE, load_pruned, save_pruned
from blockprune.surgery.arch import UnsupportedModelError
from blockprune.surgery.hidden import (
    check_exact,
    hidden_dims_supported,
    hidden_width,
    model_output,
    residual_parts,
    shrink_hidden,
)
from blockprune.surgery.shrink import ShrinkError, shrink

TOL = 1e-4
KEEP = 22  # of HIDDEN = 32: about 70%

# (id, model_type, task, config overrides)
CASES = [
    ("bert", "bert", "seq-cls", {}),
    ("roberta", "roberta", "seq-cls", {}),
    ("xlm-roberta", "xlm-roberta", "seq-cls", {}),
    ("electra", "electra", "seq-cls", {}),
    ("electra-project", "electra", "seq-cls", {"embedding_size": 16}),
    ("distilbert", "distilbert", "seq-cls", {}),
    ("mpnet", "mpnet", "seq-cls", {}),
    ("bert-qa", "bert", "qa", {}),
    ("distilbert-token", "distilbert", "token-cls", {}),
    ("roberta-base", "roberta", "base", {}),
]
FIVE = [case for case in CASES if case[2] == "seq-cls"]


def _model(model_type: str, task: str, overrides: dict, seed: int = 0) -> torch.nn.Module:
    if task == "token-cls":
        torch.manual_seed(seed)
        from tiny import tiny_config

        return transformers.AutoModelForTokenClassification.from_config(tiny_config(model_type, **overrides)).eval()
    return tiny_model(model_type, task=task, seed=seed, **overrides)


def _random_mask(keep: int = KEEP, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(HIDDEN)
    mask[torch.randperm(HIDDEN, generator=generator)[:keep]] = 1.0
    return mask


def _compare(expected: torch.Tensor, model: torch.nn.Module, kept: torch.Tensor) -> float:
    return check_exact(expected, model, tiny_inputs(), atol=TOL, kept=kept)


@pytest.mark.parametrize(("model_type", "task", "overrides"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("order", ["hidden-first", "heads-first"])
def test_masked_model_and_its_cut_agree_with_heads_and_neurons_removed(model_type, task, overrides, order) -> None:
    model = _model(model_type, task, overrides)
    prune_at_random(model, "struct", sparsity=0.6)  # zeros in heads and neurons, masks baked in
    inputs = tiny_inputs()
    mask = _random_mask()
    hidden = HiddenMask(model, mask)
    expected = model_output(model, inputs)
    states = model(**inputs, output_hidden_states=True).hidden_states
    assert all(bool((s[..., mask == 0] == 0).all()) for s in states)  # the residual is exactly zero there
    kept = hidden.kept()
    if order == "hidden-first":
        result = hidden.bake(inputs)
        assert shrink(model).params_after < result.params_after  # heads and neurons went too
    else:
        hidden.remove()
        cut = shrink(model)
        assert cut.params_after < cut.params_before
        hidden = HiddenMask(model, mask)
        torch.testing.assert_close(model_output(model, inputs), expected, atol=TOL, rtol=0)
        result = hidden.bake(inputs)
    assert result.kept == kept.tolist() and result.width_before == HIDDEN and result.width_after == KEEP
    assert result.params_after < result.params_before
    assert hidden_width(model) == KEEP
    assert _compare(expected, model, kept) <= TOL
    with torch.no_grad():  # the residual itself (values of order 1, where the tiny logits are of order 0.01)
        last = model(**inputs, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(last, states[-1][..., kept].detach(), atol=TOL, rtol=0)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "mpnet"])
def test_layers_that_lost_every_head_cut_exactly(model_type) -> None:
    model = tiny_model(model_type)
    prune_at_random(model, "struct", sparsity=0.95)
    inputs = tiny_inputs()
    shrink(model)
    assert 0 in heads_per_layer(model)  # an EmptyAttention, whose O (with 0 input columns) still writes the residual
    hidden = HiddenMask(model, _random_mask())
    expected, kept = model_output(model, inputs), hidden.kept()
    hidden.bake(inputs)
    assert _compare(expected, model, kept) <= TOL


@pytest.mark.parametrize(("model_type", "task", "overrides"), [c[1:] for c in FIVE], ids=[c[0] for c in FIVE])
def test_cut_model_saves_and_loads_at_its_new_width(model_type, task, overrides, tmp_path) -> None:
    model = _model(model_type, task, overrides)
    prune_at_random(model, "struct", sparsity=0.5)
    inputs = tiny_inputs()
    HiddenMask(model, _random_mask()).bake(inputs)
    result = shrink(model)
    before = model_output(model, inputs)
    folder = save_pruned(model, tmp_path / "small", result=result)
    record = (folder / SHAPES_FILE).read_text()
    assert f'"hidden": {KEEP}' in record and '"version": 2' in record
    loaded = load_pruned(folder)
    assert hidden_width(loaded) == KEEP
    assert count_params(loaded)["total"] == count_params(model)["total"]
    torch.testing.assert_close(model_output(loaded, inputs), before, atol=1e-6, rtol=0)


def test_an_uncut_model_still_writes_a_version_1_record(tmp_path) -> None:
    model = tiny_model("bert")
    shrink(prune_at_random(model, "struct", sparsity=0.5))
    assert '"version": 1' in (save_pruned(model, tmp_path / "m") / SHAPES_FILE).read_text()


def test_a_bad_hidden_width_in_the_record_is_a_clear_error() -> None:
    from blockprune.surgery.shrink import check_record, shape_record

    model = tiny_model("bert")
    record = shape_record(model) | {"version": 2, "hidden": HIDDEN + 1}
    with pytest.raises(ShrinkError, match="hidden width 33 must be a whole number from 1 to 32"):
        check_record(record, model)


def test_counts_read_the_narrower_model() -> None:
    model = tiny_model("bert")
    full = count_params(model)
    HiddenMask(model, _random_mask()).bake()
    counts, flops = count_params(model), flops_per_token(model, seq_len=8)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # per layer: Q/K/V read KEEP columns (all heads kept), O writes KEEP rows, up reads KEEP, down writes KEEP
    per_layer = 4 * HEADS * HEAD_DIM * KEEP + 2 * FFN * KEEP
    assert counts["linear"] == LAYERS * per_layer
    assert flops["linear"] == 2 * LAYERS * per_layer
    removed = HIDDEN - KEEP
    tables = (100 + 64 + 2) * removed  # vocab, positions, token types
    norms = 2 * removed * (1 + 2 * LAYERS)  # weight and bias of the embeddings' and each block's two LayerNorms
    blocks = LAYERS * removed * (4 * HIDDEN + 1 + 2 * FFN + 1)  # Q/K/V/O, O bias, up, down, down bias
    pooler = removed * HIDDEN
    assert full["total"] - counts["total"] == tables + norms + blocks + pooler


def test_electra_projection_is_the_residual_entry() -> None:
    model = tiny_model("electra", embedding_size=16)
    HiddenMask(model, _random_mask()).bake(tiny_inputs())
    base = model.base_model
    assert base.embeddings.word_embeddings.embedding_dim == 16 and base.embeddings.LayerNorm.weight.shape == (16,)
    assert base.embeddings_project.weight.shape == (KEEP, 16)


def test_masked_layer_norm_is_the_layer_norm_of_the_kept_dimensions() -> None:
    norm = torch.nn.LayerNorm(HIDDEN, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x, mask = torch.randn(3, 5, HIDDEN), _random_mask()
    torch.testing.assert_close(masked_layer_norm(x, mask, norm.weight, norm.bias, norm.eps),
                               masked_norm_reference(x, mask, norm), atol=1e-6, rtol=0)


def test_remove_restores_the_unpatched_model() -> None:
    model = tiny_model("mpnet")
    inputs = tiny_inputs()
    before = model_output(model, inputs)
    hidden = HiddenMask(model, _random_mask())
    assert not torch.equal(model_output(model, inputs), before)
    hidden.remove()
    assert torch.equal(model_output(model, inputs), before)
    HiddenMask(model, _random_mask()).remove()  # patching again after remove() is fine


@pytest.mark.parametrize("method", ["topk", "sigmoid_threshold"])
def test_the_straight_through_gradient_reaches_the_scores(method) -> None:
    model = tiny_model("distilbert")
    prune_at_random(model, "struct", sparsity=0.5)
    scores = torch.nn.Parameter(torch.randn(HIDDEN, generator=torch.Generator().manual_seed(3)) + 1.0)
    hidden = HiddenMask.from_scores(model, scores, keep_count=KEEP, method=method)
    assert hidden.kept().numel() <= KEEP
    if method == "topk":
        assert set(hidden.kept().tolist()) == set(scores.detach().topk(KEEP).indices.tolist())
    model.train()
    loss = model(**tiny_inputs(), labels=torch.tensor([0, 1])).loss
    loss.backward()
    assert scores.grad is not None and torch.isfinite(scores.grad).all() and bool((scores.grad != 0).any())
    model.eval()
    inputs = tiny_inputs()
    expected, kept = model_output(model, inputs), hidden.kept()
    hidden.keep_count = KEEP  # the schedule may set it; unchanged here
    result = hidden.bake(inputs)
    assert result.kept == kept.tolist()
    assert _compare(expected, model, kept) <= TOL


def test_unsupported_model_types_and_heads_are_refused_clearly() -> None:
    gpt2 = tiny_model("gpt2", task="causal-lm")
    assert not hidden_dims_supported(gpt2)
    for call in (lambda: HiddenMask(gpt2, torch.ones(HIDDEN)), lambda: shrink_hidden(gpt2, range(KEEP))):
        with pytest.raises(UnsupportedModelError, match="hidden-dimension pruning does not support model_type 'gpt2'"):
            call()
    mlm = tiny_model("bert", task="mlm")  # its decoder is tied to the word embeddings
    assert not hidden_dims_supported(mlm)
    with pytest.raises(UnsupportedModelError, match="does not support BertForMaskedLM"):
        residual_parts(mlm)
    assert all(hidden_dims_supported(_model(*case[1:])) for case in CASES)


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ([], "keep is empty"),
        ([0, HIDDEN], "outside 0..31"),
        ([1, 1, 2], "repeated"),
        (torch.ones(HIDDEN), "1-D list of dimension indices"),
        (torch.ones(3, dtype=torch.bool), r"bool keep mask must have shape \(32,\)"),
    ],
)
def test_bad_keep_is_a_clear_error(keep, message) -> None:
    with pytest.raises(ShrinkError, match=message):
        shrink_hidden(tiny_model("bert"), keep)


def test_bad_masks_are_clear_errors() -> None:
    model = tiny_model("bert")
    with pytest.raises(ShrinkError, match="shape"):
        HiddenMask(model, torch.ones(HIDDEN + 1))
    with pytest.raises(ShrinkError, match="keeps no dimension"):
        HiddenMask(model, torch.zeros(HIDDEN))
    with pytest.raises(ShrinkError, match="keep_count=0"):
        HiddenMask.from_scores(model, torch.zeros(HIDDEN), keep_count=0)
    hidden = HiddenMask(model, torch.ones(HIDDEN))
    with pytest.raises(ShrinkError, match="already has a HiddenMask"):
        HiddenMask(model, torch.ones(HIDDEN))
    hidden.remove()


_BASE = tiny_model("bert")
prune_at_random(_BASE, "struct", sparsity=0.5)


@settings(max_examples=12, deadline=None)
@given(st.lists(st.booleans(), min_size=HIDDEN, max_size=HIDDEN).filter(any))
def test_any_mask_cuts_exactly(keep) -> None:
    model = copy.deepcopy(_BASE)
    mask = torch.tensor(keep, dtype=torch.bool)
    hidden = HiddenMask(model, mask)
    expected = model_output(model, tiny_inputs())
    hidden.bake()
    shrink(model)
    assert hidden_width(model) == int(mask.sum())
    assert _compare(expected, model, mask.nonzero().flatten()) <= TOL
