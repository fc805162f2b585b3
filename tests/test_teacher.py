"""The defaults of the measured recipe: a teacher trained until dev stops improving, the frontier's pruning budget,
a held-out --test-file, and the held-out change first in the headline and the closing line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import save_tiny_bert, write_review_csvs

from blockprune.app import options as run_options
from blockprune.app.options import (
    PRUNING_BUDGET_EPOCHS,
    TEACHER_MAX_EPOCHS,
    RunError,
    RunOptions,
    default_epochs,
)
from blockprune.app.teacher import best_epoch, should_stop
from blockprune.cli import build_parser, closing_line, main
from blockprune.report.sections import headline
from blockprune.tasks import DataError, load_task
from blockprune.tasks.classification import ClassificationTask

POS = ["great", "wonderful", "moving", "sharp", "funny", "brilliant"]
NEG = ["dull", "boring", "messy", "flat", "tedious", "awful"]
DEV_BY_EPOCH = {1: 0.70, 2: 0.75, 3: 0.74, 4: 0.90}  # epoch 4 would be best: patience 1 never gets there
DEV_ROWS, TEST_ROWS = 32, 24


# ------------------------------------------------------------------------------------------ the decision
@pytest.mark.parametrize(("values", "patience", "cap", "higher", "stop", "best"), [
    ([0.80], 1, 3, True, False, 0),
    ([0.80, 0.83], 1, 3, True, False, 1),          # still improving
    ([0.80, 0.83, 0.82], 1, 5, True, True, 1),     # one epoch without a gain
    ([0.80, 0.80], 1, 3, True, True, 0),           # a tie is no gain, and keeps the earlier epoch
    ([0.80, 0.79], 2, 5, True, False, 0),          # patience 2: one more try
    ([0.80, 0.79, 0.78], 2, 5, True, True, 0),
    ([0.80, 0.81, 0.82], 1, 3, True, True, 2),     # the cap, still improving
    ([12.0, 11.0, 11.5], 1, 5, False, True, 1),    # perplexity: lower is better
    ([12.0, 11.0], 1, 5, False, False, 1),
])
def test_stop_and_best_epoch(values: list[float], patience: int, cap: int, higher: bool, stop: bool,
                             best: int) -> None:
    assert should_stop(values, patience, cap, higher) is stop
    assert best_epoch(values, higher) == best


# ------------------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tinybert"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_review_csvs(tmp_path_factory.mktemp("data"),
                             {"train.csv": 64, "dev.csv": DEV_ROWS, "test.csv": TEST_ROWS}, POS, NEG)


def options(tiny_dir: Path, data: Path, out: Path, **changes: Any) -> RunOptions:
    return RunOptions(**({"model": str(tiny_dir), "train_file": str(data / "train.csv"),
                          "validation_file": str(data / "dev.csv"), "test_file": str(data / "test.csv"),
                          "text_column": "review", "label_column": "sentiment", "max_length": 16,
                          "batch_size": 16, "progress": False, "output_dir": str(out)} | changes))


class Scripted:
    """Training that marks the weights with the epoch (classifier bias = epoch), and scores read from that mark."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, stop_at: int | None = None) -> None:
        self.trained: list[tuple[str, float, int, float]] = []  # folder, start mark, seed, epochs
        self.scored: list[tuple[str, float]] = []  # split, mark
        self.stop_at = stop_at
        monkeypatch.setattr("blockprune.app.teacher.train", self.train)
        monkeypatch.setattr("blockprune.app.pipeline.train", self.train)
        monkeypatch.setattr(ClassificationTask, "evaluate", lambda task, *args, **kw: self.evaluate(task, *args, **kw))

    def train(self, model: torch.nn.Module, task: Any, tokenizer: Any, folder: Path, settings: Any) -> dict:
        folder = Path(folder)
        epoch = int(folder.name.split("-")[1]) if folder.name.startswith("epoch-") else 0
        if epoch == self.stop_at:
            raise KeyboardInterrupt
        self.trained.append((folder.name, float(model.classifier.bias[0].detach()), settings.seed, settings.epochs))
        with torch.no_grad():
            model.classifier.bias.fill_(float(epoch))
        return {"seconds": 0.0, "steps": 1, "epochs": settings.epochs}

    def evaluate(self, task: ClassificationTask, model: torch.nn.Module, tokenizer: Any, **kwargs: Any) -> dict:
        mark = float(model.classifier.bias[0].detach())
        self.scored.append(("test" if len(task.eval_examples) == TEST_ROWS else "dev", mark))
        return {"accuracy": DEV_BY_EPOCH.get(round(mark), 0.5) - (0.1 if len(task.eval_examples) == TEST_ROWS else 0)}


def test_the_teacher_trains_until_dev_stops_improving_and_keeps_the_best_epoch(tiny_dir, data, tmp_path,
                                                                                monkeypatch) -> None:
    from blockprune.app.pipeline import Run

    script = Scripted(monkeypatch)
    run = Run(options(tiny_dir, data, tmp_path / "run", seed=7, teacher_max_epochs=4))
    done = run.stage_teacher()
    # epochs 1, 2, 3 (no gain at 3: patience 1), each one epoch from the last, seeds as the frontier's reference
    assert [(name, start, seed, epochs) for name, start, seed, epochs in script.trained] == [
        ("epoch-1", pytest.approx(0.0, abs=1.0), 7, 1.0), ("epoch-2", 1.0, 8, 1.0), ("epoch-3", 2.0, 9, 1.0)]
    assert done["training"] | {"history": None} == {
        "chosen_epoch": 2, "epochs_trained": 3, "max_epochs": 4, "patience": 1,
        "metric": "accuracy", "stopped": "dev stopped improving", "history": None}
    assert [h["accuracy"] for h in done["training"]["history"]] == [0.70, 0.75, 0.74]
    assert done["metrics"]["accuracy"] == 0.75 and done["test_metrics"]["accuracy"] == pytest.approx(0.65)
    assert [s for s in script.scored if s[0] == "test"] == [("test", 2.0)]  # test: once, on the chosen model
    teacher = run.load_hf(done["model"])
    assert float(teacher.classifier.bias[0].detach()) == 2.0  # teacher/model holds the best epoch's weights
    stage = tmp_path / "run" / "teacher"
    assert json.loads((stage / "done.json").read_text())["training"]["chosen_epoch"] == 2
    assert sorted(p.name for p in stage.glob("epoch-*/*")) == ["done.json"] * 3  # no stray models or checkpoints
    script.trained.clear()
    assert run.stage_teacher() == done and script.trained == []  # done: a re-run trains nothing


def test_an_interrupted_teacher_resumes_where_it_stopped_and_decides_the_same(tiny_dir, data, tmp_path,
                                                                              monkeypatch) -> None:
    from blockprune.app.pipeline import Run

    Scripted(monkeypatch, stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        Run(options(tiny_dir, data, tmp_path / "run", teacher_max_epochs=4)).stage_teacher()
    stage = tmp_path / "run" / "teacher"
    assert (stage / "epoch-2" / "done.json").is_file() and not (stage / "epoch-3" / "done.json").exists()
    assert not (stage / "epoch-1" / "model").exists() and (stage / "epoch-2" / "model").is_dir()  # best and latest
    monkeypatch.undo()
    script = Scripted(monkeypatch)
    done = Run(options(tiny_dir, data, tmp_path / "run", teacher_max_epochs=4)).stage_teacher()
    assert [(name, start) for name, start, *_ in script.trained] == [("epoch-3", 2.0)]  # from epoch 2's weights
    assert done["training"]["chosen_epoch"] == 2 and done["training"]["epochs_trained"] == 3


def test_the_epoch_cap_stops_a_teacher_that_still_improves(tiny_dir, data, tmp_path, monkeypatch) -> None:
    from blockprune.app.pipeline import Run

    Scripted(monkeypatch)
    done = Run(options(tiny_dir, data, tmp_path / "run", teacher_max_epochs=2)).stage_teacher()
    assert done["training"]["stopped"] == "epoch cap" and done["training"]["chosen_epoch"] == 2


def test_teacher_epochs_still_trains_exactly_that_many(tiny_dir, data, tmp_path, monkeypatch) -> None:
    from blockprune.app.pipeline import Run

    script = Scripted(monkeypatch)
    done = Run(options(tiny_dir, data, tmp_path / "run", teacher_epochs=2.0)).stage_teacher()
    assert [(name, epochs) for name, _, _, epochs in script.trained] == [("teacher", 2.0)]
    assert done["training"] == {"epochs_trained": 2.0, "stopped": "--teacher-epochs"}
    assert not list((tmp_path / "run" / "teacher").glob("epoch-*"))


# ------------------------------------------------------------------------------------------ defaults
def test_the_pruning_budget_is_the_frontiers_and_a_fill_stage_takes_half() -> None:
    assert PRUNING_BUDGET_EPOCHS == 2.0
    for preset, fill, epochs in (("struct", False, 2.0), ("hybrid", False, 2.0), ("hybrid-filled", False, 1.0),
                                 ("struct", True, 1.0)):
        o = RunOptions(preset=preset, fill=fill)
        default_epochs(o)
        assert (o.epochs, o.fill_epochs) == (epochs, 1.0), preset
    given = RunOptions(epochs=3.0)
    default_epochs(given)
    assert given.epochs == 3.0
    from blockprune.app.pipeline import STAGES

    costs = {s.name: s.cost(RunOptions(), 1000, 300) for s in STAGES}  # the progress estimate reads the same
    assert costs["prune"] == 1.5 * 2 * 1000 and costs["teacher"] == pytest.approx(TEACHER_MAX_EPOCHS * 1100 + 100)


def test_the_cli_defaults_come_from_the_options() -> None:
    args = build_parser().parse_args(["prune"])
    assert args.epochs is None and args.teacher_epochs is None and args.fill_epochs == PRUNING_BUDGET_EPOCHS / 2
    assert args.teacher_max_epochs == TEACHER_MAX_EPOCHS == run_options.RunOptions().teacher_max_epochs
    assert args.teacher_patience == 1 and args.test_file is None


@pytest.mark.parametrize(("change", "message"), [
    ({"teacher_max_epochs": 0}, "--teacher-max-epochs 0 must be a whole number >= 1"),
    ({"teacher_patience": 0}, "--teacher-patience 0 must be a whole number >= 1"),
    ({"teacher_epochs": 0.0}, "--teacher-epochs 0.0 must be > 0"),
    ({"epochs": -1.0}, "--epochs -1.0 must be > 0"),
])
def test_bad_epoch_options_are_one_clear_error(change: dict, message: str) -> None:
    with pytest.raises(RunError, match=message):
        run_options.check_training_options(RunOptions(**change))


def test_a_given_teacher_pins_none_of_the_teacher_training_options(tiny_dir, data, tmp_path) -> None:
    from blockprune.app.pipeline import Run

    Run(options(tiny_dir, data, tmp_path / "run", teacher=str(tiny_dir))).check_run_dir()
    pinned = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert not {"teacher_epochs", "teacher_max_epochs", "teacher_patience", "teacher_learning_rate"} & set(pinned)
    Run(options(tiny_dir, data, tmp_path / "run", teacher=str(tiny_dir), teacher_epochs=5.0)).check_run_dir()
    Run(options(tiny_dir, data, tmp_path / "own", teacher_epochs=1.0)).check_run_dir()
    with pytest.raises(RunError, match=r"teacher_epochs differ"):  # without a teacher they shape the result
        Run(options(tiny_dir, data, tmp_path / "own")).check_run_dir()


# ------------------------------------------------------------------------------------------ --test-file
def test_a_test_file_rides_along_for_the_report(data) -> None:
    task = load_task(train_file=data / "train.csv", validation_file=data / "dev.csv", test_file=data / "test.csv",
                     text_column="review", label_column="sentiment")
    assert len(task.test_examples) == TEST_ROWS and len(task.eval_examples) == DEV_ROWS
    assert task.test_task().eval_examples == task.test_examples and "test=" in task.source
    assert {e.label for e in task.test_examples} <= {0, 1}


def test_a_test_file_with_other_columns_is_one_clear_error(data, tmp_path) -> None:
    (tmp_path / "other.csv").write_text("text,label\nfine film,pos\n")
    with pytest.raises(DataError, match=r"test_file .*other.csv has no column 'review' \(text_column\), "
                                        r"'sentiment' \(label_column\), which the training data is read by"):
        load_task(train_file=data / "train.csv", test_file=tmp_path / "other.csv", text_column="review",
                  label_column="sentiment")
    (tmp_path / "labels.csv").write_text("review,sentiment\nfine film,meh\n")
    with pytest.raises(DataError, match="meh"):  # a label the training data does not have
        load_task(train_file=data / "train.csv", test_file=tmp_path / "labels.csv", text_column="review",
                  label_column="sentiment")
    with pytest.raises(DataError, match="test_file=.* without train_file.*test_split="):
        load_task(dataset="glue", test_file=data / "test.csv")


def test_a_causal_lm_test_file(tmp_path) -> None:
    (tmp_path / "train.txt").write_text("one document\nanother document\na third one\n")
    (tmp_path / "test.txt").write_text("held out text\nand more\n")
    task = load_task("causal-lm", train_file=tmp_path / "train.txt", test_file=tmp_path / "test.txt")
    assert task.test_examples == ["held out text", "and more"]


def test_the_cli_passes_test_file_to_prune_and_eval(tiny_dir, data, tmp_path, monkeypatch, capsys) -> None:
    seen = {}

    def capture(o: RunOptions) -> None:
        seen["options"] = o
        raise KeyboardInterrupt

    monkeypatch.setattr("blockprune.app.pipeline.run", capture)
    common = ["--train-file", str(data / "train.csv"), "--validation-file", str(data / "dev.csv"),
              "--test-file", str(data / "test.csv"), "--text-column", "review", "--label-column", "sentiment",
              "--max-length", "16"]
    assert main(["prune", "--model", str(tiny_dir), *common, "--output-dir", str(tmp_path / "r")]) == 130
    assert seen["options"].test_file == str(data / "test.csv") and seen["options"].teacher_epochs is None
    capsys.readouterr()
    assert main(["eval", str(tiny_dir), *common]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)["test"]


# ------------------------------------------------------------------------------------------ headline
def report(test: bool, higher: bool = True) -> dict[str, Any]:
    name = "accuracy" if higher else "perplexity"
    teacher, final = (0.842, 0.835) if higher else (12.3, 13.1)
    out: dict[str, Any] = {"metric_name": name, "higher_is_better": higher,
                           "teacher": {"metric": teacher}, "final": {"metric": final},
                           "speedup": {"measured": 2.09, "theoretical": 2.0, "device": "cpu", "dtype": "fp32",
                                       "threads": 2}}
    if test:
        out["teacher"]["test_metrics"] = {name: 0.80 if higher else 14.0}
        out["final"]["test_metrics"] = {name: 0.805 if higher else 14.5}
    return out


def test_the_headline_shows_the_test_change_first_and_dev_beside_it() -> None:
    assert headline(report(test=True)) == "2.1\u00d7 faster, +0.5 points accuracy on test (\u22120.7 on dev)"
    assert headline(report(test=False)) == "2.1\u00d7 faster, \u22120.7 points accuracy on dev"
    assert headline(report(test=True, higher=False)) == (
        "2.1\u00d7 faster, perplexity 14 \u2192 14.5 on test (+0.5, lower is better; dev +0.8)")


def test_the_closing_line_and_the_card_lead_with_the_test_change(tmp_path) -> None:
    line = closing_line(report(test=True), "runs/x")
    assert "accuracy on test: teacher 0.8000 \u2192 final 0.8050 (+0.50 points); on dev: teacher 0.8420" in line
    assert "accuracy on dev: teacher 0.8420 \u2192 final 0.8350 (-0.70 points)" in closing_line(report(False), "r")
    from blockprune.report.card import run_card

    card = str(run_card(report(test=True), tmp_path, name="m"))
    assert "+0.5 points accuracy on test (\u22120.7 on dev)" in card
