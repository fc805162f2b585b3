"""The measured latency model (issue 35 item 4): table, cache, prediction and budgets.

Every test but the last times nothing: a fake timer returns a cost that is an exact, known function of the shape
(with a little alternating noise, which the medians must see through), so the table and its predictions can be
checked against the truth. The last test runs one tiny real measurement end to end (no speed assertions).
"""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from tiny import tiny_config

from blockprune.deploy import latency_model as lm
from blockprune.surgery.arch import find_blocks

SETTING = lm.Setting(seq_len=16, batch_size=2)


def config():
    """A BERT config with enough heads, neurons and width for a grid with interior points (built on meta only)."""
    return tiny_config("bert", hidden_size=64, num_attention_heads=8, intermediate_size=256, num_hidden_layers=3)


def true_layer(heads: float, ffn: float, hidden: float) -> float:
    """The fake device: a layer costs a fixed part, plus a part per head and per neuron, all linear in the width."""
    return 0.2 + 0.004 * hidden + (0.02 + 0.002 * hidden) * heads + (0.001 + 0.0001 * hidden) * ffn


def true_stem(hidden: float) -> float:
    return 0.5 + 0.01 * hidden


def true_model(heads: list[int], ffn: list[int], hidden: int) -> float:
    return true_stem(hidden) + sum(true_layer(h, f, hidden) for h, f in zip(heads, ffn, strict=True))


class FakeTimer:
    """A :data:`lm.Timer` whose probes cost :func:`true_layer` etc.; counts the groups it prepared and the passes."""

    def __init__(self, layers: int = 3, heads: int = 8, ffn: int = 256):
        self.prepared, self.passes, self.dims = [], 0, (layers, heads, ffn)

    def cost(self, probe: lm.Probe) -> float:
        layers, heads, ffn = self.dims
        if probe.kind == "layer":
            return true_layer(probe.heads, probe.ffn, probe.hidden)
        if probe.kind == "stem":
            return true_stem(probe.hidden) + true_layer(0, 0, probe.hidden)
        return true_model([heads] * layers, [ffn] * layers, probe.hidden)

    def __call__(self, probes):
        self.prepared.append(list(probes))

        def run(i: int) -> float:
            self.passes += 1
            return self.cost(probes[i]) * (1.0 + 0.003 * (-1) ** self.passes)

        return run


def fake_table(tmp_path, timer=None, setting=SETTING, **kwargs):
    return lm.latency_table(config(), setting, folder=tmp_path, timer=timer or FakeTimer(), warmup=1, repeats=5,
                            log=lambda line: None, **kwargs)


def test_default_grid_and_dims():
    dims = lm.model_dims(config())
    assert (dims["layers"], dims["heads"], dims["head_step"], dims["ffn"], dims["hidden"]) == (3, 8, 1, 256, 64)
    grid = lm.default_grid(dims)
    assert grid.heads == (0, 1, 2, 4, 8)
    assert grid.ffn == (0, 16, 32, 64, 96, 128, 160, 192, 224, 256)
    assert grid.hidden == (64, 48, 32, 16)


def test_table_and_prediction_recover_a_known_cost(tmp_path):
    table = fake_table(tmp_path)
    lm.check_table(table)
    assert table["calibration"] == pytest.approx(1.0, rel=0.01)
    assert table["model_ms"] == pytest.approx(true_model([8] * 3, [256] * 3, 64), rel=0.01)
    for heads, ffn, hidden in [([8, 8, 8], [256, 256, 256], 64), ([3, 0, 7], [40, 256, 0], 64),
                               ([1, 5, 2], [200, 17, 99], 48), ([6, 6, 6], [100, 100, 100], 40),
                               ([0, 0, 0], [0, 0, 0], 16), ([2, 2, 2], [64, 64, 64], 20)]:
        assert lm.predict_ms(table, heads, ffn, hidden) == pytest.approx(true_model(heads, ffn, hidden), rel=0.01)
    plan = {"heads": [4, 4, 4], "ffn": [128, 128, 128], "hidden": {"after": 32}}
    want = true_model([8] * 3, [256] * 3, 64) / true_model([4] * 3, [128] * 3, 32)
    assert lm.predicted_speedup(table, plan) == pytest.approx(want, rel=0.01)
    record = {"layers": [{"heads": [4], "ffn": 128}] * 3, "hidden": 32}
    assert lm.predicted_speedup(table, record) == pytest.approx(want, rel=0.01)


def test_the_estimate_is_logged(tmp_path):
    lines = []
    lm.latency_table(config(), SETTING, folder=tmp_path, timer=FakeTimer(), warmup=1, repeats=2, log=lines.append)
    assert lines[0].startswith("latency table for bert (4 widths x ") and " s" in lines[0] and "about" in lines[0]
    assert "cached in" in lines[-1]


def test_the_cache_is_reused(tmp_path):
    first = FakeTimer()
    table = fake_table(tmp_path, first)
    assert first.passes and len(first.prepared) == 4  # one group per residual width
    again = FakeTimer()
    assert fake_table(tmp_path, again) == table
    assert again.passes == 0 and again.prepared == []
    refreshed = FakeTimer()
    fake_table(tmp_path, refreshed, refresh=True)
    assert refreshed.passes


def test_the_cache_key_changes_with_every_setting(monkeypatch):
    base = lm.table_key(config(), SETTING)
    assert lm.table_key(config(), SETTING) == base
    others = [lm.table_key(config(), lm.Setting(seq_len=32, batch_size=2)),
              lm.table_key(config(), lm.Setting(seq_len=16, batch_size=4)),
              lm.table_key(config(), lm.Setting(seq_len=16, batch_size=2, dtype="bf16")),
              lm.table_key(config(), lm.Setting(seq_len=16, batch_size=2, threads=torch.get_num_threads() + 1)),
              lm.table_key(tiny_config("bert", hidden_size=64, num_attention_heads=8, intermediate_size=128,
                                       num_hidden_layers=3), SETTING),
              lm.table_key(tiny_config("roberta", hidden_size=64, num_attention_heads=8, intermediate_size=256,
                                       num_hidden_layers=3), SETTING),
              lm.table_key(config(), SETTING, grid=lm.Grid((0, 8), (0, 256), (64,)))]
    monkeypatch.setattr(lm, "device_name", lambda dev: "Some Other CPU")
    others.append(lm.table_key(config(), SETTING))
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    others.append(lm.table_key(config(), SETTING))
    paths = {lm.cache_path(key) for key in [base, *others]}
    assert len(paths) == len(others) + 1
    assert base["device_name"] and base["threads"] == torch.get_num_threads()


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.delenv(lm.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lm.cache_dir() == tmp_path / "xdg" / "blockprune" / "latency"
    monkeypatch.setenv(lm.CACHE_ENV, str(tmp_path / "env"))
    assert lm.cache_dir() == tmp_path / "env"
    assert lm.cache_dir(tmp_path / "arg") == tmp_path / "arg"


@pytest.mark.parametrize("damage", ["{not json", "[]", "stale", "nan"])
def test_a_corrupt_or_stale_cache_file_is_measured_again(tmp_path, damage):
    table = fake_table(tmp_path)
    path = lm.cache_path(table["key"], tmp_path)
    if damage == "stale":
        path.write_text(json.dumps(table | {"version": 0}))
    elif damage == "nan":
        path.write_text(json.dumps(table | {"model_ms": float("nan")}))
    else:
        path.write_text(damage)
    lines, timer = [], FakeTimer()
    again = lm.latency_table(config(), SETTING, folder=tmp_path, timer=timer, warmup=1, repeats=5, log=lines.append)
    assert timer.passes and "stale or unreadable" in lines[0] and "measuring again" in lines[0]
    assert len(lines[0].splitlines()) == 1
    lm.check_table(json.loads(path.read_text()))
    assert again["widths"] == table["widths"]


def test_an_unwritable_cache_is_a_note(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    lines = []
    table = lm.latency_table(config(), SETTING, folder=blocker / "sub", timer=FakeTimer(), warmup=1, repeats=1,
                             log=lines.append)
    lm.check_table(table)
    assert "not cached" in lines[-1]


def test_a_table_for_other_settings_in_the_file_is_measured_again(tmp_path):
    table = fake_table(tmp_path)
    path = lm.cache_path(table["key"], tmp_path)
    path.write_text(json.dumps(table | {"key": table["key"] | {"batch_size": 64}}))
    timer = FakeTimer()
    fake_table(tmp_path, timer)
    assert timer.passes


def test_layer_params_are_exact(tmp_path):
    table = fake_table(tmp_path)
    for entry in table["widths"]:
        model = lm._build(config(), 1, "meta")
        lm._reshape(model, 3, 48, entry["hidden"], 64)
        got = sum(p.numel() for p in find_blocks(model)[0].parameters())
        p = entry["params"]
        assert p["fixed"] + 3 * p["per_head"] + 48 * p["per_neuron"] == got


def test_uniform_budget_meets_the_target_with_the_most_parameters(tmp_path):
    table = fake_table(tmp_path)
    dense = true_model([8] * 3, [256] * 3, 64)
    for target, hidden, least in [(2.0, False, 1), (3.0, False, 1), (3.0, True, 0), (5.0, True, 1), (4.0, False, 0)]:
        budget = lm.uniform_budget(table, target, hidden=hidden, min_heads=least)
        assert budget["heads"][0] >= least
        assert budget["predicted_speedup"] >= target
        assert dense / true_model(budget["heads"], budget["ffn"], budget["hidden"]) >= target * 0.99
        assert len(set(budget["heads"])) == 1 and budget["ffn"][0] % 16 == 0
        assert budget["heads_by_attention"] == [[h] for h in budget["heads"]]
        widths = [64, 48, 32, 16] if hidden else [64]
        best = 0.0
        for h, f, d in itertools.product(range(least, 9), range(0, 257, 16), widths):
            if lm.predict_ms(table, [h] * 3, [f] * 3, d) <= table["model_ms"] / target:
                p = lm._at_width(table, d)["params"]
                best = max(best, 3 * (p["fixed"] + p["per_head"] * h + p["per_neuron"] * f))
        assert budget["layer_params"] == round(best)
    even = lm.uniform_budget(table, 3.0, even=True)
    assert even["predicted_speedup"] >= 3.0 and even["ffn"][0] == 16 * round(256 * even["heads"][0] / 8 / 16)
    assert lm.uniform_budget(table, 3.0)["layer_params"] >= even["layer_params"]
    with pytest.raises(lm.LatencyModelError, match="at most"):
        lm.uniform_budget(table, 1000.0)
    with pytest.raises(lm.LatencyModelError, match="greater than 1"):
        lm.uniform_budget(table, 0.5)


def test_global_budget_spends_where_importance_per_ms_is_lowest(tmp_path):
    table = fake_table(tmp_path)

    def importance(layer: int, kind: str) -> list[float]:  # layer 0 matters most, layer 2 least
        count = 8 if kind == "heads" else 256
        scale = (100.0, 10.0, 0.01)[layer] * (1 if kind == "heads" else 0.05)
        return [scale * (1 + i / count) for i in range(count)]

    budget = lm.global_budget(table, 2.5, importance)
    assert budget["predicted_speedup"] >= 2.5
    assert budget["heads"][0] >= budget["heads"][2] and budget["ffn"][0] >= budget["ffn"][2]
    assert budget["heads"] != [budget["heads"][0]] * 3 or budget["ffn"] != [budget["ffn"][0]] * 3
    assert all(f % 16 == 0 for f in budget["ffn"])
    assert budget["predicted_speedup"] < 2.5 * 1.05  # it stops at the first shape meeting the target
    narrow = lm.global_budget(table, 3.0, importance, hidden=32)
    assert narrow["hidden"] == 32 and narrow["predicted_speedup"] >= 3.0
    with pytest.raises(lm.LatencyModelError, match="8 finite scores"):
        lm.global_budget(table, 2.0, lambda layer, kind: [1.0])
    with pytest.raises(lm.LatencyModelError, match="beyond the table"):
        lm.global_budget(table, 1000.0, importance)


def test_bad_input_is_one_clear_error(tmp_path):
    table = fake_table(tmp_path)
    with pytest.raises(lm.LatencyModelError, match="give 3 whole head counts"):
        lm.predict_ms(table, [8, 8], [256, 256])
    with pytest.raises(lm.LatencyModelError, match="must lie in 0..8"):
        lm.predict_ms(table, [9, 8, 8], [256] * 3)
    with pytest.raises(lm.LatencyModelError, match="outside the widths"):
        lm.predict_ms(table, [8] * 3, [256] * 3, 8)
    with pytest.raises(lm.LatencyModelError, match="not a blockprune-latency table"):
        lm.predict_ms({"format": "x"}, [8] * 3, [256] * 3)
    with pytest.raises(lm.LatencyModelError, match="need 'heads' and 'ffn'"):
        lm.predicted_speedup(table, {})
    with pytest.raises(lm.LatencyModelError, match="one attention each"):
        lm.table_key(tiny_config("t5"), SETTING)
    with pytest.raises(lm.LatencyModelError, match="longer than the model's 64 positions"):
        lm.table_key(config(), lm.Setting(seq_len=65))
    with pytest.raises(lm.LatencyModelError, match="batch_size 0"):
        lm.table_key(config(), lm.Setting(batch_size=0))
    with pytest.raises(lm.LatencyModelError, match="grid heads"):
        lm.table_key(config(), SETTING, grid=lm.Grid((1, 8), (0, 256), (64,)))
    with pytest.raises(ValueError, match="device 'tpu'"):
        lm.table_key(config(), lm.Setting(device="tpu", seq_len=16))


def test_one_tiny_real_measurement_writes_a_valid_table(tmp_path):
    cfg = tiny_config("bert")
    grid = lm.Grid(heads=(0, 4), ffn=(0, 64), hidden=(32, 16))
    lines = []
    table = lm.latency_table(cfg, lm.Setting(seq_len=8, batch_size=1, threads=1), grid=grid, folder=tmp_path,
                             warmup=1, repeats=2, log=lines.append)
    lm.check_table(json.loads(lm.cache_path(table["key"], tmp_path).read_text()))
    assert table["key"]["threads"] == 1 and table["model_ms"] > 0 and "about" in lines[0]
    assert lm.predict_ms(table, [2, 4], [32, 64], 24) > 0
