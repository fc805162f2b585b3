"""Bad input at the command line: every case ends with ONE line ``blockprune <cmd>: error: ...`` and exit code 2.

The library-level errors (which exception, which words) are tested in test_saving.py, test_data.py and
test_config.py; here each kind of bad file, bad data and bad option is driven through the ``blockprune``
command, which must print one line naming the file and the fix — no traceback — and leave its inputs as
they were. One case runs the real console script in a subprocess, to see the process-level behaviour.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from tiny import prune_at_random

from blockprune import save_pruned
from blockprune.cli import main
from blockprune.surgery.shrink import shrink
from blockprune.tasks import embedded_model_path

EXIT_USAGE = 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A plain tiny BERT folder (embedded tokenizer), its pruned+shrunk save_pruned folder, and a CSV."""
    root = tmp_path_factory.mktemp("cli-errors")
    tokenizer = transformers.AutoTokenizer.from_pretrained(embedded_model_path())
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=512)
    model = transformers.BertForSequenceClassification(config).eval()
    model.save_pretrained(root / "plain")
    tokenizer.save_pretrained(root / "plain")
    prune_at_random(model)
    save_pruned(model, root / "pruned", tokenizer, result=shrink(model))
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(80):
            writer.writerow([f"{'good fun' if i % 2 else 'dull plot'} movie number {i}", i % 2])
    return {"root": root, "plain": root / "plain", "pruned": root / "pruned", "csv": root / "train.csv"}


def one_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """The single ``blockprune <command>: error:`` line on stderr (progress bars of the loaders may precede it)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("blockprune")]
    assert len(lines) == 1 and lines[0].startswith(f"blockprune {command}: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ------------------------------------------------------------------------------------------------ bad model files
def truncate(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        file = folder / name
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return damage


def garbage_header(folder: Path) -> None:
    file = folder / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:8] + b"\xff" * 64 + data[72:])


def edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return damage


def narrower_ffn(record: dict) -> None:
    record["layers"][0]["ffn"] -= 1


def newer_record(record: dict) -> None:
    record["version"] = 99


def future_model_type(config: dict) -> None:
    config["model_type"] = "bert-from-the-future"
    config["a_field_from_the_future"] = True


BAD_FILES = {
    "plain, truncated weights": ("plain", truncate("model.safetensors"), "shrink", "truncated or corrupted"),
    "plain, corrupted header": ("plain", garbage_header, "bench", "truncated or corrupted"),
    "pruned, truncated weights": ("pruned", truncate("model.safetensors"), "eval", "truncated or corrupted"),
    "pruned, corrupted header": ("pruned", garbage_header, "export", "truncated or corrupted"),
    "record disagrees with weights": ("pruned", edit_json("pruned_shapes.json", narrower_ffn), "bench",
                                      "intermediate.dense.weight has shape"),
    "record from a newer version": ("pruned", edit_json("pruned_shapes.json", newer_record), "bench",
                                    "upgrade blockprune"),
    "config from a newer transformers": ("pruned", edit_json("config.json", future_model_type), "bench",
                                         "bert-from-the-future"),
    "record cut short": ("pruned", truncate("pruned_shapes.json"), "eval", "not readable JSON"),
    "config missing": ("pruned", lambda folder: (folder / "config.json").unlink(), "shrink", "config.json is missing"),
}


def command_line(command: str, model: Path, folders: dict[str, Path], out: Path) -> list[str]:
    if command == "shrink":
        return ["shrink", str(model), str(out)]
    if command == "eval":
        return ["eval", str(model), "--train-file", str(folders["csv"]), "--max-length", "16"]
    if command == "export":
        return ["export", str(model), str(out.with_suffix(".onnx"))]
    return ["bench", str(model), "--batch-sizes", "1", "--seq-len", "8", "--repeats", "1"]


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_model_files_give_one_line(folders, tmp_path, capsys, case) -> None:
    kind, damage, command, words = BAD_FILES[case]
    model = tmp_path / kind
    shutil.copytree(folders[kind], model)
    damage(model)
    before = snapshot(model)
    out = tmp_path / "out"
    assert main(command_line(command, model, folders, out)) == EXIT_USAGE
    line = one_error(capsys, command)
    assert words in line and str(model) in line, line
    assert snapshot(model) == before and not out.exists() and not out.with_suffix(".onnx").exists()


def test_the_console_script_exits_2_without_a_traceback(folders, tmp_path) -> None:
    model = tmp_path / "plain"
    shutil.copytree(folders["plain"], model)
    truncate("model.safetensors")(model)
    script = Path(sys.executable).with_name("blockprune")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "blockprune.cli"]
    done = subprocess.run([*head, "bench", str(model), "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("blockprune bench: error: cannot load the model in")


# ------------------------------------------------------------------------------------------------ bad data / options
def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


GOOD_ROWS = [{"text": f"{'good fun' if i % 2 else 'dull plot'} number {i}", "label": i % 2} for i in range(40)]
BAD_DATA = {
    "missing text column": ("train.csv", [{"review": r["text"], "label": r["label"]} for r in GOOD_ROWS], None,
                            "text"),
    "empty text": ("train.csv", GOOD_ROWS[:5] + [{"text": "", "label": 1}] + GOOD_ROWS[5:], None, "train.csv"),
    "NaN label": ("train.jsonl", GOOD_ROWS[:3] + [{"text": "fine", "label": float("nan")}] + GOOD_ROWS[3:], None,
                  "train.jsonl"),
    "label unseen in training": ("train.csv", GOOD_ROWS, [{"text": "meh", "label": 7}, *GOOD_ROWS[:4]], "dev.csv"),
}


def prune_line(model: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", str(model), "--teacher", str(model), "--preset", "struct", "--sparsity", "0.5",
            "--epochs", "2", "--batch-size", "8", "--max-length", "16", "--no-progress", "--bench-repeats", "1",
            "--training-arg", "use_cpu=true", "--output-dir", str(out), *extra]


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_gives_one_line_before_any_work(folders, tmp_path, capsys, case) -> None:
    name, train_rows, dev_rows, words = BAD_DATA[case]
    train = write_rows(tmp_path / name, train_rows)
    extra = ["--train-file", str(train)]
    if dev_rows is not None:
        extra += ["--validation-file", str(write_rows(tmp_path / "dev.csv", dev_rows))]
    out = tmp_path / "run"
    assert main(prune_line(folders["plain"], out, *extra)) == EXIT_USAGE
    assert words in one_error(capsys, "prune")
    assert not (out / "teacher").exists()


def test_bad_rows_are_numbered_as_in_the_file_with_a_validation_file(folders, tmp_path, capsys) -> None:
    train = write_rows(tmp_path / "train.csv", GOOD_ROWS[:5] + [{"text": "", "label": 1}] + GOOD_ROWS[5:])
    dev = write_rows(tmp_path / "dev.csv", GOOD_ROWS[:6])
    line = prune_line(folders["plain"], tmp_path / "run", "--train-file", str(train), "--validation-file", str(dev))
    assert main(line) == EXIT_USAGE
    assert "in 1 row(s) (1-based, header excluded): [6]" in one_error(capsys, "prune")


def test_bad_rows_are_numbered_as_in_the_file_when_part_is_held_out(folders, tmp_path, capsys) -> None:
    train = write_rows(tmp_path / "train.csv", GOOD_ROWS[:5] + [{"text": "", "label": 1}] + GOOD_ROWS[5:])
    assert main(prune_line(folders["plain"], tmp_path / "run", "--train-file", str(train))) == EXIT_USAGE
    assert "in 1 row(s) (1-based, header excluded): [6]" in one_error(capsys, "prune")


@pytest.mark.parametrize(
    ("flag", "words"),
    [(["--set", "no_such_field=1"], "no_such_field: not a PruningConfig field"),
     (["--set", "sparsity=1.5"], "sparsity=1.5"),
     (["--set", "attention_block=[5,0]"], "attention_block"),
     (["--training-arg", "save_stepz=3"], "save_stepz: not a field of transformers.TrainingArguments")],
)
def test_bad_options_give_one_line_before_any_work(folders, tmp_path, capsys, flag, words) -> None:
    out = tmp_path / "run"
    assert main(prune_line(folders["plain"], out, "--train-file", str(folders["csv"]), *flag)) == EXIT_USAGE
    assert words in one_error(capsys, "prune")
    assert not (out / "teacher").exists()


# ------------------------------------------------------------------------------------------------ failures mid-run
def test_a_nan_loss_gives_one_line_naming_the_step_and_keeps_the_checkpoint(folders, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    line = prune_line(folders["plain"], out, "--train-file", str(folders["csv"]), "--learning-rate", "1e10",
                      "--training-arg", "save_steps=1")
    assert main(line) == EXIT_USAGE
    error = one_error(capsys, "prune")
    assert "loss became nan at optimizer step" in error and "Lower the learning rate" in error
    kept = sorted(p.name for p in (out / "prune" / "checkpoints").iterdir())
    assert len(kept) == 1 and kept[0] in error
    assert (out / "teacher" / "done.json").is_file() and not (out / "prune" / "done.json").exists()


def test_ctrl_c_says_how_to_resume(folders, tmp_path, capsys, monkeypatch) -> None:
    def interrupted(options: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("blockprune.app.pipeline.run", interrupted)
    assert main(prune_line(folders["plain"], tmp_path / "run", "--train-file", str(folders["csv"]))) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["blockprune prune: interrupted; run the same command again to resume"]


def test_every_option_has_a_help_line_and_states_its_default_once():
    import argparse

    from blockprune.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"prune", "plan", "shrink", "eval", "bench", "export", "report", "push"} <= set(commands)
    for name, command in commands.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"blockprune {name} {action.option_strings or action.dest}: no help line"
        text = command.format_help()
        assert "(default: None)" not in text, name
        for option in command._actions:
            shown = command._get_formatter()._get_help_string(option) or ""
            stated = len(re.findall(r"\(default[: ]", shown))
            assert stated <= 1, f"blockprune {name} {option.option_strings}: {shown!r}"
    epochs = next(a for a in commands["prune"]._actions if "--min-pruning-steps" in a.option_strings)
    assert "(default: %(default)s)" in commands["prune"]._get_formatter()._get_help_string(epochs)


def test_version_is_printed(capsys):
    from blockprune import __version__
    from blockprune.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"blockprune {__version__}"


@pytest.mark.parametrize("command", [["eval"], ["bench"], ["shrink", "unused-output"]])
def test_a_hub_repo_id_that_cannot_be_downloaded_is_one_clear_error(command, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)  # no local folder called someone/nothing-here
    args = [command[0], "someone/nothing-here", *command[1:]]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "someone/nothing-here: no such local folder" in err[0] and "Hub" in err[0]
