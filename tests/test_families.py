"""Every family of the architecture table through one case matrix: masked training, finalize, exact shrink,
save/load and measurement, plus the generic fallback for types without an entry.

Adding a family is one line in ``CASES`` (and its tiny config in ``tiny.py``). ``unit_params`` and
``neuron_params`` are written by hand from the modeling files: the parameters one attention unit (a head,
or a key/value head with its query heads) and one FFN neuron cost, so parameter counts after shrink are
checked against arithmetic, not against the code under test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import transformers
from tiny import DEFAULT_TASK, FFN, HEAD_DIM, HIDDEN, KV_HEADS, tiny_batch, tiny_model
from torch import nn

from blockprune import Pruner, PruningConfig, UnsupportedModelError
from blockprune import arch as arch_module
from blockprune.deploy.counts import count_params, ffn_per_layer, flops_per_token, heads_per_layer
from blockprune.deploy.measure import measure, speedup
from blockprune.engine.layers import MaskedLinear
from blockprune.store.saving import load_pruned, save_pruned
from blockprune.surgery.arch import (
    ARCHITECTURES,
    EmptyAttention,
    get_arch,
    get_path,
    head_dim,
    iter_blocks,
    num_heads,
    num_units,
    weight_out_in,
)
from blockprune.surgery.shrink import shrink

H, D = HIDDEN, HEAD_DIM
MHA = 4 * H * D + 3 * D  # Q/K/V rows with their biases, O columns
NEURON = 2 * H + 1  # up row with its bias, down column
TOL = 1e-4


@dataclass(frozen=True)
class Case:
    """One family: a tiny model of ``model_type`` (with config ``overrides``) and its hand-computed costs."""

    name: str
    model_type: str
    unit_params: int
    neuron_params: int
    overrides: tuple[tuple[str, object], ...] = ()
    attn: tuple[str, ...] = field(default=("sdpa", "eager"))

    @property
    def task(self) -> str:
        return DEFAULT_TASK.get(self.model_type, "seq-cls")

    def build(self, seed: int = 0, attn: str = "sdpa") -> nn.Module:
        return tiny_model(self.model_type, self.task, seed, attn, **dict(self.overrides))

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("bert", "bert", MHA, NEURON),
    Case("roberta", "roberta", MHA, NEURON),
    Case("xlm-roberta", "xlm-roberta", MHA, NEURON),
    Case("electra", "electra", MHA, NEURON),
    Case("distilbert", "distilbert", MHA, NEURON),
    Case("mpnet", "mpnet", MHA, NEURON, attn=("eager",)),
    Case("deberta-v2", "deberta-v2", MHA + 2 * (H * D + D), NEURON, attn=("eager",)),  # + pos key/query rows
    Case("deberta-v2-shared-key", "deberta-v2", MHA, NEURON, (("share_att_key", True),), attn=("eager",)),
    Case("vit", "vit", MHA, NEURON),
    Case("bart", "bart", MHA, NEURON),
    Case("t5", "t5", 4 * H * D, 2 * H),  # no biases anywhere
    Case("t5-gated", "t5", 4 * H * D, 3 * H, (("feed_forward_proj", "gated-gelu"),)),
    Case("gpt2", "gpt2", MHA, NEURON),
    Case("llama", "llama", 6 * H * D, 3 * H),  # unit: 2 query heads + 1 KV head; gated MLP
    Case("mistral", "mistral", 6 * H * D, 3 * H),
    Case("qwen2", "qwen2", 6 * H * D + 4 * D, 3 * H),  # + Q/K/V biases
]
DECODING = [c for c in CASES if c.task in ("causal-lm", "seq2seq")]


def test_every_table_entry_has_a_case() -> None:
    assert {c.model_type for c in CASES} == set(ARCHITECTURES)


# --------------------------------------------------------------------------------------------- helpers


def noisy(model: nn.Module, seed: int = 0) -> nn.Module:
    """All weights and biases clearly non-zero, so every removal and fold matters."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


def inputs_of(case: Case) -> dict[str, torch.Tensor]:
    return {k: v for k, v in tiny_batch(case.model_type, case.task, batch=3, seq_len=10).items() if k != "labels"}


def outputs(model: nn.Module, case: Case) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs_of(case)).logits


def randomize_scores(pruner: Pruner, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in pruner.groups:
            group.scores.copy_(torch.randn(group.scores.shape, generator=generator))


def geometry(block: nn.Module, attn: arch_module.AttentionSpec) -> tuple[int, int, int]:
    """(units, query heads per unit, head size)."""
    units = num_units(block, attn)
    return units, num_heads(block, attn) // units, head_dim(block, attn)


def kill_unit(block: nn.Module, attn: arch_module.AttentionSpec, unit: int, how: str) -> None:
    """Zero one unit's V rows (``v``: and V bias; ``v-rows``: the bias stays, to be folded into O's) or its O
    columns, by hand from the layout rules."""
    units, ratio, d = geometry(block, attn)
    with torch.no_grad():
        if how in ("v", "v-rows"):
            v = get_path(block, attn.v)
            start = (2 * units * d if attn.fused else 0) + unit * d
            weight_out_in(v)[start:start + d] = 0
            if v.bias is not None and how == "v":
                v.bias[start:start + d] = 0
        else:
            weight_out_in(get_path(block, attn.o))[:, unit * ratio * d:(unit + 1) * ratio * d] = 0


def kill_neuron(block: nn.Module, ffn: arch_module.FFNSpec, neuron: int, how: str) -> None:
    """Zero one neuron's up row (its constant output is then folded) or its down column."""
    with torch.no_grad():
        if how == "up":
            weight_out_in(get_path(block, ffn.up))[neuron] = 0
        else:
            weight_out_in(get_path(block, ffn.down))[:, neuron] = 0


def keeps_one(block: nn.Module, attn: arch_module.AttentionSpec) -> bool:
    producer = attn.shared_bias is not None and attn.shared_bias.producer is not None
    return attn.keep_one or (producer and bool(getattr(get_path(block, attn.module), attn.shared_bias.producer)))


@dataclass
class Expected:
    """What shrink must produce after :func:`prune_by_hand`."""

    heads: list[list[int]] = field(default_factory=list)  # query heads per (block, attention)
    empty: list[list[bool]] = field(default_factory=list)  # which attentions become EmptyAttention
    widths: list[int] = field(default_factory=list)  # FFN width per block
    removed_units: int = 0
    removed_neurons: int = 0


def prune_by_hand(model: nn.Module, seed: int = 0) -> Expected:
    """Even blocks lose every head, odd blocks every FFN neuron; the others lose a random half, by O / V / V rows
    only (for units) and up/down (for neurons)."""
    generator = torch.Generator().manual_seed(seed)
    expected = Expected()
    for index, (stack, block) in enumerate(iter_blocks(model)):
        heads, empty = [], []
        for attn in stack.attention:
            units, ratio, _ = geometry(block, attn)
            gone = range(units) if index % 2 == 0 else torch.randperm(units, generator=generator)[: units // 2].tolist()
            for i, unit in enumerate(gone):
                kill_unit(block, attn, unit, ("o", "v-rows", "v")[i % 3])
            kept = units - len(gone) or int(keeps_one(block, attn))
            expected.removed_units += units - kept
            heads.append(kept * ratio)
            empty.append(kept == 0)
        expected.heads.append(heads)
        expected.empty.append(empty)
        gone_n = range(FFN) if index % 2 == 1 else torch.randperm(FFN, generator=generator)[: FFN // 2].tolist()
        for i, neuron in enumerate(gone_n):
            kill_neuron(block, stack.ffn, neuron, "up" if i % 2 else "down")
        width = FFN - len(gone_n) or int(stack.ffn.keep_one)
        expected.removed_neurons += FFN - width
        expected.widths.append(width)
    return expected


# --------------------------------------------------------------------------------------------- training side


@pytest.mark.parametrize("case", CASES, ids=str)
def test_masked_training_reduces_the_loss(case: Case) -> None:
    model = case.build().train()
    pruner = Pruner(model, PruningConfig.preset("struct", sparsity=0.5))
    batch = tiny_batch(case.model_type, case.task)
    optimizer = torch.optim.AdamW(pruner.param_groups(lr=1e-2, score_lr=5e-2))
    scores = [p.detach().clone() for p in pruner.score_parameters()]

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = float(model(**batch).loss)
        model.train()
        return loss

    pruner.step(10, 10)
    before = eval_loss()
    for _ in range(12):
        pruner.step(10, 10)
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = eval_loss()
    stats = pruner.stats()
    assert after < 0.8 * before, (before, after)
    assert stats["attention"] == pytest.approx(0.5) and stats["ffn"] == pytest.approx(0.5)
    assert any(not torch.equal(a, b) for a, b in zip(scores, pruner.score_parameters(), strict=True))


TILES = {"struct": {}, "block": {"attention_block": (D, D), "ffn_block": (D, D)}, "hybrid": {"attention_block": (D, D)}}


@pytest.mark.parametrize("preset", sorted(TILES))
@pytest.mark.parametrize("case", CASES, ids=str)
def test_finalize_equals_masked_and_shrink_is_exact(case: Case, preset: str) -> None:
    model = noisy(case.build())
    types = {name: type(m) for name, m in model.named_modules()}
    config = PruningConfig.preset(preset, sparsity=0.5, **TILES[preset])
    pruner = Pruner(model, config)
    randomize_scores(pruner)
    pruner.step(100, 100)
    masked = outputs(model, case)
    final = pruner.finalize()
    assert not any(isinstance(m, MaskedLinear) for m in final.modules())
    assert {name: type(m) for name, m in final.named_modules()} == types  # Conv1D comes back as Conv1D
    torch.testing.assert_close(outputs(final, case), masked, atol=1e-6, rtol=0)
    result = shrink(final)
    torch.testing.assert_close(outputs(final, case), masked, atol=TOL, rtol=0)
    if preset == "struct":  # topk keeps exactly half of every unit list and every FFN
        full = [[num_heads(b, a) for a in s.attention] for s, b in iter_blocks(case.build())]
        assert result.heads_per_layer == [[n // 2 for n in layer] for layer in full]
        assert result.ffn_per_layer == [FFN // 2] * len(full)


@pytest.mark.parametrize(("case", "attn"), [(c, a) for c in CASES for a in c.attn], ids=str)
def test_shrink_whole_layers_exactly_then_round_trip_and_measure(case: Case, attn: str, tmp_path: Path) -> None:
    model = noisy(case.build(attn=attn))
    expected = prune_by_hand(model)
    before, params_before = outputs(model, case), count_params(model)["total"]
    result = shrink(model)
    torch.testing.assert_close(outputs(model, case), before, atol=TOL, rtol=0)

    assert result.heads_per_layer == expected.heads
    assert [[isinstance(get_path(b, a.module), EmptyAttention) for a in s.attention]
            for s, b in iter_blocks(model)] == expected.empty
    assert heads_per_layer(model) == [sum(layer) for layer in expected.heads]
    assert ffn_per_layer(model) == expected.widths
    removed = expected.removed_units * case.unit_params + expected.removed_neurons * case.neuron_params
    assert count_params(model)["total"] == params_before - removed == result.params_after
    assert shrink(model).params_after == result.params_after  # idempotent
    flops = flops_per_token(model, 16)
    assert flops["attention_per_layer"] == [4 * 16 * sum(layer) * D for layer in expected.heads]
    matrices = 3 if get_arch(model).ffn.gate else 2
    assert flops["ffn_linear"] == sum(2 * matrices * width * H for width in expected.widths)

    loaded = load_pruned(save_pruned(model, tmp_path / "small"), attn_implementation=attn)
    assert type(loaded) is type(model)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert torch.equal(outputs(loaded, case), outputs(model, case))


@pytest.mark.parametrize("case", DECODING, ids=str)
def test_generation_with_the_kv_cache_is_unchanged_by_shrink(case: Case) -> None:
    """Decoders keep one (zero) unit per emptied self-attention, so cached decoding stays exact."""
    model = noisy(case.build())
    prune_by_hand(model, seed=3)
    prompt = inputs_of(case)
    kwargs = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True,
                  pad_token_id=0)
    with torch.no_grad():
        before = model.generate(**prompt, **kwargs)
        shrink(model)
        after = model.generate(**prompt, **kwargs)
    assert torch.equal(after.sequences, before.sequences)
    torch.testing.assert_close(torch.stack(after.scores), torch.stack(before.scores), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["vit", "t5", "gpt2"])
def test_latency_and_speedup_feed_each_family_its_inputs(name: str) -> None:
    """Pixels for ViT, decoder ids for encoder-decoders, token ids otherwise."""
    case = next(c for c in CASES if c.name == name)
    reference, model = case.build(), noisy(case.build())
    prune_by_hand(model)
    shrink(model)
    report = measure(model, seq_len=8, batch_sizes=(2,), warmup=0, repeats=1, threads=1)
    assert report.latency[0]["median_ms"] > 0 and report.heads_per_layer == heads_per_layer(model)
    result = speedup(reference, model, seq_len=8, batch_sizes=(1,), warmup=0, repeats=1, threads=1)
    assert result["theoretical"] > 1 and result["batches"][0]["measured"] > 0


# --------------------------------------------------------------------------------------------- family specifics


def test_grouped_query_heads_go_only_together() -> None:
    """Head mode scores key/value groups; one dead query head keeps its group, two dead ones remove it."""
    case = next(c for c in CASES if c.name == "llama")
    pruner = Pruner(case.build(), PruningConfig.preset("struct"))
    assert {tuple(g.scores.shape) for g in pruner.groups if g.kind == "attention"} == {(KV_HEADS,)}
    model = noisy(case.build())
    stack, block = iter_blocks(model)[0]
    o = get_path(block, stack.attention[0].o)
    with torch.no_grad():
        o.weight[:, :D] = 0  # query head 0 of group 0
    assert shrink(model).heads_kept[0] == [[0, 1, 2, 3]]
    with torch.no_grad():
        get_path(block, stack.attention[0].o).weight[:, D:2 * D] = 0  # query head 1: group 0 is dead
    before = outputs(model, case)
    assert shrink(model).heads_kept[0] == [[2, 3]]
    torch.testing.assert_close(outputs(model, case), before, atol=TOL, rtol=0)
    assert get_path(block, stack.attention[0].k).out_features == D  # one KV head left


def test_gpt2_fused_qkv_keeps_conv1d_and_split_size() -> None:
    case = next(c for c in CASES if c.name == "gpt2")
    model = noisy(case.build())
    _, block = iter_blocks(model)[1]
    attn = get_arch(model).attention[0]
    kill_unit(block, attn, 1, "v")
    before = outputs(model, case)
    shrink(model)
    torch.testing.assert_close(outputs(model, case), before, atol=TOL, rtol=0)
    c_attn = block.attn.c_attn
    assert isinstance(c_attn, transformers.pytorch_utils.Conv1D) and c_attn.weight.shape == (H, 3 * 3 * D)
    assert block.attn.split_size == 3 * D and block.attn.num_heads == 3


@pytest.mark.parametrize("name", ["t5", "mpnet"])
def test_shared_position_bias_is_selected_per_layer_not_sliced(name: str) -> None:
    """Each shrunk layer adds its own kept heads' bias; the bias table keeps every head."""
    case = next(c for c in CASES if c.name == name)
    model = noisy(case.build(attn=case.attn[0]))
    blocks = iter_blocks(model)
    attn = blocks[0][0].attention[0]
    kill_unit(blocks[0][1], attn, 0, "o")
    kill_unit(blocks[1][1], attn, 3, "o")
    before = outputs(model, case)
    shrink(model)
    torch.testing.assert_close(outputs(model, case), before, atol=TOL, rtol=0)
    assert get_path(blocks[0][1], attn.module).blockprune_heads.tolist() == [1, 2, 3]
    assert get_path(blocks[1][1], attn.module).blockprune_heads.tolist() == [0, 1, 2]
    table = [m for n, m in model.named_modules() if n.endswith("relative_attention_bias")]
    assert table and all(m.weight.shape[1] == 4 for m in table)


# --------------------------------------------------------------------------------------------- fallback


def neox() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(hidden_size=H, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=FFN, vocab_size=100, max_position_embeddings=64)
    return transformers.GPTNeoXForCausalLM(config).eval()


def test_fallback_masks_every_base_linear_with_a_warning() -> None:
    model = neox()
    batch = tiny_batch("llama", "causal-lm")
    with pytest.warns(UserWarning, match=r"'gpt_neox' has no usable architecture table entry.*no speedup"):
        pruner = Pruner(model, PruningConfig.preset("unstructured", sparsity=0.5), fallback=True)
    assert len(pruner.layers) == 2 * 4  # QKV, dense, h_to_4h, 4h_to_h per layer; the LM head is not masked
    assert not isinstance(model.get_output_embeddings(), MaskedLinear)
    pruner.step(10, 10)
    assert pruner.stats()["overall"] == pytest.approx(0.5)
    masked = model(**batch).logits
    final = pruner.finalize()
    torch.testing.assert_close(final(**batch).logits, masked, atol=1e-6, rtol=0)
    with pytest.raises(UnsupportedModelError, match=r"'gpt_neox' is not supported.*fallback=True"):
        shrink(final)


def test_rejected_type_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(arch_module.REJECTED, "bert", "heads share one projection")
    with pytest.raises(UnsupportedModelError, match=r"'bert' cannot be pruned.*heads share one projection.*fallback"):
        get_arch("bert")
