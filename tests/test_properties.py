"""Property tests (hypothesis): random architectures × block shapes × masks, and random invalid configs.

1. For any supported tiny architecture, any block shapes that tile its matrices, any method and any random
   scores at any sparsity: the finalized model computes exactly what the masked model computed, and
   shrinking it changes no output by more than 1e-4 (whatever heads, neurons or whole layers emptied).
2. Any invalid :class:`PruningConfig` value, given to the constructor or read from a JSON dict, ends in a
   :class:`ConfigError` that names the field, never in another exception from deep inside.

Models are built once per architecture and deep-copied per case, so the cases stay fast; the example
counts are fixed (``derandomize``), so a run is reproducible and its case count is known.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import warnings
from collections import Counter
from dataclasses import fields

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import HEADS, MODEL_TYPES, VOCAB, tiny_model

from blockprune import Pruner, PruningConfig
from blockprune.engine.config import CONFIG_VERSION, ConfigError
from blockprune.engine.layers import MaskedLinear
from blockprune.engine.masks import METHODS
from blockprune.surgery.shrink import shrink

SHRINK_TOLERANCE = 1e-4
FINALIZE_TOLERANCE = 1e-5
SIZES = (1, 2, 4, 8, 16, 32, -1)
"""Block sides that tile every matrix of the tiny models (sides 32 and 64)."""
EXACT_CASES = 800
CONFIG_CASES = 200
JSON_CASES = 150

PROPERTY = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _base(model_type: str) -> torch.nn.Module:
    return tiny_model(model_type, task="base")


def fresh_model(model_type: str) -> torch.nn.Module:
    """A private copy of the seeded tiny base model (building one per case would dominate the run time)."""
    return copy.deepcopy(_base(model_type))


def inputs(batch: int, seq_len: int, pad: int, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, seq_len), generator=generator)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    mask[-1, seq_len - min(pad, seq_len - 1):] = 0
    return {"input_ids": ids, "attention_mask": mask}


blocks = st.tuples(st.sampled_from(SIZES), st.sampled_from(SIZES))
methods = st.sampled_from(sorted(METHODS))


@st.composite
def pruning_cases(draw: st.DrawFn) -> dict[str, object]:
    return {
        "model_type": draw(st.sampled_from(MODEL_TYPES)),
        "config": PruningConfig(
            attention_method=draw(methods),
            attention_block=draw(st.one_of(st.just("head"), blocks)),
            ffn_method=draw(methods),
            ffn_block=draw(st.one_of(st.just((1, -1)), blocks)),
            sparsity=draw(st.floats(0.0, 0.97)),
            attention_sparsity=draw(st.one_of(st.none(), st.floats(0.0, 0.97))),
        ),
        "score_seed": draw(st.integers(0, 2**31 - 1)),
        "score_scale": draw(st.sampled_from([0.01, 1.0, 5.0])),
        "batch": draw(st.integers(1, 3)),
        "seq_len": draw(st.integers(2, 12)),
        "pad": draw(st.integers(0, 6)),
    }


counted: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print(f"\nproperty cases run: {dict(sorted(counted.items()))}")


@settings(PROPERTY, max_examples=EXACT_CASES)
@given(case=pruning_cases())
def test_finalize_equals_masked_outputs_and_shrink_is_exact(case: dict) -> None:
    torch.manual_seed(0)
    model = fresh_model(case["model_type"])
    pruner = Pruner(model, case["config"])
    generator = torch.Generator().manual_seed(case["score_seed"])
    with torch.no_grad():  # random scores = random masks (magnitude masks follow the random weights instead)
        for group in pruner.groups:
            group.scores.copy_(torch.randn(group.scores.shape, generator=generator) * case["score_scale"])
    pruner.step(100, 100)
    batch = inputs(case["batch"], case["seq_len"], case["pad"], case["score_seed"])
    with torch.inference_mode():
        masked = model(**batch).last_hidden_state
    pruner.finalize()
    assert not any(isinstance(m, MaskedLinear) for m in model.modules())
    with torch.inference_mode():
        final = model(**batch).last_hidden_state
    assert (final - masked).abs().max() <= FINALIZE_TOLERANCE

    result = shrink(model)
    with torch.inference_mode():
        shrunk = model(**batch).last_hidden_state
    assert shrunk.shape == masked.shape
    assert (shrunk - masked).abs().max() <= SHRINK_TOLERANCE, (case, result.heads_per_layer, result.ffn_per_layer)
    assert result.params_after <= result.params_before
    counted["exact"] += 1
    counted[f"exact/{case['model_type']}"] += 1
    counted["exact/head blocks" if case["config"].attention_block == "head" else "exact/tile blocks"] += 1
    heads = [sum(layer) for layer in result.heads_per_layer]
    counted["emptied_heads"] += any(h < HEADS for h in heads)
    counted["emptied_layers"] += any(h == 0 for h in heads)


# ------------------------------------------------------------------------------------ invalid configs
not_numbers = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2))
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
bad_sides = st.one_of(st.integers(max_value=-2), st.just(0), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3))
bad_blocks = st.one_of(
    st.tuples(bad_sides, st.sampled_from(SIZES)),
    st.tuples(st.sampled_from(SIZES), bad_sides),
    st.lists(st.sampled_from(SIZES), max_size=4).filter(lambda v: len(v) != 2),
    st.text(max_size=6).filter(lambda v: v != "head"),
    st.none(),
    st.integers(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)

INVALID: dict[str, st.SearchStrategy] = {
    "attention_method": st.one_of(st.text(max_size=12).filter(lambda v: v not in METHODS), st.none(), st.integers()),
    "ffn_method": st.one_of(st.text(max_size=12).filter(lambda v: v not in METHODS), st.none(), st.integers()),
    "attention_block": bad_blocks,
    "ffn_block": st.one_of(bad_blocks, st.just("head")),
    "sparsity": st.one_of(not_numbers, st.floats(1.0), st.floats(max_value=-1e-9), non_finite),
    "attention_sparsity": st.one_of(st.booleans(), st.text(max_size=3), st.floats(1.0), st.floats(max_value=-1e-9),
                                    non_finite),
    "warmup": st.one_of(not_numbers, st.floats(max_value=-1e-9), st.floats(1.0), st.just(math.nan)),
    "cooldown": st.one_of(not_numbers, st.floats(max_value=-1e-9), st.floats(1.0), st.just(math.nan)),
    "threshold": st.one_of(not_numbers, st.floats(max_value=0.0), st.floats(1.0), st.just(math.nan)),
    "regularization": st.one_of(not_numbers, st.floats(max_value=-1e-9, allow_infinity=False)),
    "score_lr": st.one_of(not_numbers, st.floats(max_value=0.0, allow_infinity=False)),
    "score_init": not_numbers,
    "version": st.one_of(st.booleans(), st.floats(), st.text(max_size=3), st.none()),
}
"""Per field, values the config must refuse (non-finite values of the last fields are tested separately)."""


@settings(PROPERTY, max_examples=CONFIG_CASES)
@given(data=st.data(), name=st.sampled_from(sorted(INVALID)))
def test_invalid_values_raise_a_config_error_naming_the_field(data: st.DataObject, name: str) -> None:
    value = data.draw(INVALID[name], label=name)
    with pytest.raises(ConfigError, match=name):
        PruningConfig(**{name: value})
    counted["config"] += 1


def test_warmup_and_cooldown_summing_to_one_or_more_are_refused() -> None:
    with pytest.raises(ConfigError, match="warmup=0.6 and cooldown=0.4"):
        PruningConfig(warmup=0.6, cooldown=0.4)


@pytest.mark.parametrize("name", ["regularization", "score_lr", "score_init"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_numbers_are_refused(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=name):
        PruningConfig(**{name: value})


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 200), st.floats(allow_nan=False), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)
field_names = [f.name for f in fields(PruningConfig)]


@settings(PROPERTY, max_examples=JSON_CASES)
@given(data=st.dictionaries(st.one_of(st.sampled_from(field_names), st.text(max_size=8)), json_values, max_size=5))
def test_any_json_object_gives_a_config_or_a_config_error(data: dict) -> None:
    text = json.dumps(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown keys of a newer version only warn
        try:
            config = PruningConfig.from_json(text)
        except ConfigError:
            counted["json"] += 1
            return
    assert PruningConfig.from_json(config.to_json()) == config  # what it accepted round-trips
    assert config.version == CONFIG_VERSION
    counted["json"] += 1
