"""The small-data benchmark's settings (benchmarks/small_data.py): each command runs what its name claims."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import small_data  # noqa: E402

from blockprune.cli import build_parser  # noqa: E402


def test_every_setting_is_a_command_the_cli_accepts_with_its_seed_and_samples(tmp_path):
    for name in small_data.SETTINGS:
        args = build_parser().parse_args(small_data.command(name, 42, tmp_path / name)[1:])
        assert args.max_train_samples == small_data.SAMPLES and args.seed == 42, name
    assert small_data.teacher_epochs("default") == 1.0
    assert small_data.teacher_epochs("teacher5") == small_data.teacher_epochs("teacher5-min300") == 5.0


@pytest.mark.parametrize("setting", list(small_data.SETTINGS))
def test_each_setting_resolves_through_the_cli_parser_and_planner_to_the_config_it_claims(setting):
    resolved = small_data.resolved(setting)
    assert {k: resolved[k] for k in small_data.CLAIMS[setting]} == small_data.CLAIMS[setting]
    # every setting: struct at 2x (half of the pruned weights), 1 pruning epoch, on the same 2,000 examples
    assert resolved["preset"] == "struct" and resolved["sparsity"] == pytest.approx(0.5)
    assert resolved["epochs"] == 1.0 and resolved["samples"] == small_data.SAMPLES


def test_a_changed_struct_default_cannot_change_what_a_setting_runs(monkeypatch):
    from blockprune.engine import config

    monkeypatch.setitem(config.PRESETS, "struct", config.PRESETS["struct"] | {"score_init_from": "magnitude"})
    assert small_data.resolved("default")["score_init_from"] == "taylor"  # pinned in the command, not inherited
    assert small_data.resolved("const")["score_init_from"] == "constant"


def test_the_claims_name_every_setting_and_the_settings_differ_in_what_they_claim():
    assert set(small_data.CLAIMS) == set(small_data.SETTINGS)
    claims = [tuple(sorted(c.items())) for c in small_data.CLAIMS.values()]
    assert len(set(claims)) == len(claims)  # no two names for one run
