"""The small-data benchmark's settings (benchmarks/small_data.py): each becomes one plain CLI command."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import small_data  # noqa: E402

from blockprune.cli import build_parser


def test_every_setting_is_a_command_the_cli_accepts_with_its_teacher_epochs(tmp_path):
    for name in small_data.SETTINGS:
        args = build_parser().parse_args(small_data.command(name, 42, tmp_path / name)[1:])
        assert args.max_train_samples == small_data.SAMPLES and args.seed == 42, name
    assert small_data.teacher_epochs("default") == 1.0
    assert small_data.teacher_epochs("teacher5") == small_data.teacher_epochs("teacher5-min300") == 5.0
