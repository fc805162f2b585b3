"""PruningConfig: presets, JSON round trip, validation."""

import json

import pytest

from blockprune.engine.config import PRESETS, ConfigError, PruningConfig


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name, tmp_path):
    cfg = PruningConfig.preset(name, sparsity=0.7, warmup=0.05)
    text = cfg.to_json()
    assert list(json.loads(text)) == sorted(json.loads(text))  # sorted keys
    assert PruningConfig.from_json(text) == cfg
    path = cfg.save(tmp_path / "cfg.json")
    assert PruningConfig.load(path) == cfg


def test_struct_and_hybrid_settings():
    assert PruningConfig.preset("struct").attention_block == "head"
    hybrid = PruningConfig.preset("hybrid")
    assert hybrid.attention_block == (32, 32) and hybrid.ffn_block == (1, -1)
    assert hybrid.ffn_method == "sigmoid_threshold"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity=-0.2), "sparsity"),
        (dict(sparsity="0.5"), "sparsity"),
        (dict(attention_sparsity=1.5), "attention_sparsity"),
        (dict(attention_method="random"), "attention_method.*topk"),
        (dict(ffn_block=(0, 4)), "ffn_block"),
        (dict(ffn_block="head"), "ffn_block"),
        (dict(attention_block=(32,)), "attention_block"),
        (dict(warmup=0.5, cooldown=0.5), "warmup"),
        (dict(threshold=1.0), "threshold"),
        (dict(score_lr=0), "score_lr"),
    ],
)
def test_validation_errors_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="hybrid-filled"):
        PruningConfig.preset("fast")


def test_unknown_keys_from_newer_version_warn():
    data = PruningConfig().to_dict() | {"version": 99, "future_knob": 3}
    with pytest.warns(UserWarning, match="future_knob"):
        cfg = PruningConfig.from_dict(data)
    assert cfg.sparsity == 0.5


def test_unknown_keys_from_this_version_fail():
    with pytest.raises(ConfigError, match="typo_field"):
        PruningConfig.from_dict(PruningConfig().to_dict() | {"typo_field": 1})


def test_bad_json_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        PruningConfig.load(path)
