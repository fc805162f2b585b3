"""The frontier's paired bootstrap (benchmarks/frontier_stats.py) and the per-example answers it pairs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tiny import save_tiny_bert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import frontier_methods as fm  # noqa: E402
import frontier_report as report  # noqa: E402
import frontier_runner as runner  # noqa: E402
import frontier_spec as spec  # noqa: E402
import frontier_stats as fs  # noqa: E402
import frontier_verdicts as fv  # noqa: E402

MOVIES = [f"m{i}" for i in range(20) for _ in range(10)]  # 20 movies of 10 reviews


def answers(wrong: set[int]) -> str:
    return "".join("0" if i in wrong else "1" for i in range(len(MOVIES)))


def test_correct_string_marks_each_example_and_refuses_a_length_mismatch():
    assert fs.correct_string([1, 0, 1], [1, 1, 1]) == "101"
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        fs.correct_string([1, 0], [1, 1, 1])
    with pytest.raises(ValueError, match="the test split has 200"):
        fs.paired_bootstrap(["1"], ["1"], MOVIES)


def test_identical_answers_give_a_zero_difference_and_no_claim():
    same = answers({3, 57, 101})
    result = fs.paired_bootstrap([same, same], [same], MOVIES, draws=500)
    assert result["diff"] == result["low"] == result["high"] == 0.0
    assert not fs.excludes_zero(result) and "holds 0" in fs.describe(result)


def test_a_gap_spread_over_many_movies_is_surer_than_the_same_gap_in_one_movie():
    spread = answers({m * 10 for m in range(10)})  # 10 errors, one in each of 10 movies
    lumped = answers(set(range(10)))  # the same 10 errors, all in movie m0
    perfect = answers(set())
    over_many = fs.paired_bootstrap([perfect] * 3, [spread] * 3, MOVIES, draws=4000)
    in_one = fs.paired_bootstrap([perfect] * 3, [lumped] * 3, MOVIES, draws=4000)
    assert over_many["diff"] == pytest.approx(5.0) and in_one["diff"] == pytest.approx(5.0)
    assert fs.excludes_zero(over_many)  # 10 of 20 movies agree: the gap is no accident of which movies were drawn
    assert not fs.excludes_zero(in_one)  # one hard movie: a draw without it has no gap
    assert in_one["high"] - in_one["low"] > over_many["high"] - over_many["low"]


def test_seeds_that_disagree_widen_the_interval():
    base = answers({m * 10 for m in range(4)})
    steady = [answers({m * 10 for m in range(8)})] * 3  # 4 more errors on every seed
    shaky = [answers(set()), answers({m * 10 for m in range(8)}), answers({m * 10 for m in range(16)})]
    calm = fs.paired_bootstrap([base] * 3, steady, MOVIES, draws=4000)
    noisy = fs.paired_bootstrap([base] * 3, shaky, MOVIES, draws=4000)
    assert calm["diff"] == pytest.approx(noisy["diff"])
    assert noisy["high"] - noisy["low"] > calm["high"] - calm["low"]


def test_a_gap_beyond_the_seed_spread_is_no_claim_when_the_movies_bootstrap_holds_zero(monkeypatch):
    monkeypatch.setattr(fs, "test_movies", lambda: MOVIES)
    perfect, lumped = answers(set()), answers(set(range(10)))
    a = {"name": "a", "seeds": 3, "acc": 100.0, "std": 0.1, "correct": [perfect] * 3}
    b = {"name": "b", "seeds": 3, "acc": 95.0, "std": 0.1, "correct": [lumped] * 3}
    text = fv.verdict(a, b, 5.0)
    assert text.startswith("within noise: larger than the seed spread (0.20), but the paired bootstrap")
    assert "holds 0" in text and not fv.is_claim(a, b, 5.0)
    spread = {**b, "correct": [answers({m * 10 for m in range(10)})] * 3}
    assert fv.is_claim(a, spread, 5.0) and "excludes 0" in fv.verdict(a, spread, 5.0)
    carried = {**b, "correct": None}  # a record from another machine, without its answers
    assert fv.verdict(a, carried, 5.0) == "larger than the seed spread (0.20)"
    assert fv.is_claim(a, carried, 5.0)  # then the seed spread alone decides, as before


def test_per_example_answers_follow_the_test_split_order_and_are_filled_in_for_older_runs(tmp_path, capsys):
    model_dir = save_tiny_bert(tmp_path / "m")
    model = fm.load_classifier(model_dir)
    with torch.no_grad():  # always "fresh" (label 1): its answers are the labels themselves
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([-50.0, 50.0]))
    model.save_pretrained(model_dir)
    dev, test = fm.tasks()
    from blockprune.tasks.embedded import rotten_tomatoes_split

    labels = "".join(str(row["label"]) for row in rotten_tomatoes_split().test)
    scored = fm.evaluate(fm.load_classifier(model_dir), test.load_processor(model_dir), dev, test)
    assert scored["test_correct"] == labels and len(labels) == len(fs.test_movies())
    assert scored["test"] == test.evaluate(model, test.load_processor(model_dir), progress=False)["accuracy"]
    older = {"model": str(model_dir), "test": scored["test"], "dev": scored["dev"]}  # a run from before
    fm.write_done(tmp_path / "run" / "frontier-result", older)
    filled = fm.with_test_correct(tmp_path / "run" / "frontier-result", older, test.load_processor(model_dir), test)
    assert filled["test_correct"] == labels
    assert json.loads((tmp_path / "run" / "frontier-result" / "done.json").read_text())["test_correct"] == labels
    wrong = older | {"test": 0.5}  # another model's score: the answers are not kept
    assert "test_correct" not in fm.with_test_correct(tmp_path / "x", wrong, test.load_processor(model_dir), test)
    assert "is not the recorded 0.5000" in capsys.readouterr().out


def test_the_report_gives_each_delta_vs_the_reference_its_interval_and_the_claims_their_bootstrap(
        tmp_path, monkeypatch):
    monkeypatch.setattr(fs, "test_movies", lambda: MOVIES)
    monkeypatch.setattr(report, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(report, "DOCS", tmp_path / "docs")
    ref = {"test": 0.95, "epoch": 1, "history": [{"epoch": 1, "dev": 0.9, "test": 0.95}],
           "test_correct": answers(set(range(0, 200, 20)))}  # 10 errors, one in each even movie
    timing = {"b32": {"speedup": 3.1, "speedup_iqr": 0.2}, "theoretical": 3.0}
    table = spec.points("rotten-tomatoes")
    points = spec.by_name(table)
    records = []
    for seed, wrong in zip((42, 43, 44), (range(0, 200, 10), range(5, 200, 10), range(3, 200, 10)), strict=True):
        struct = {"test": 0.9, "dev": 0.9, "test_correct": answers(set(wrong))}  # 20 errors, two per movie
        drop = {"test": 0.8, "dev": 0.8, "test_correct": answers(set(range(0, 200, 5)))}  # 40 errors, 4 per movie
        for name, result in (("bp-struct-3.0", struct), ("layer-drop-2", drop)):
            records.append(runner.record(points[name], seed, result, ref, None, timing, 2.0, "pass-1", "Xeon"))
    section = report.task_section("rotten-tomatoes", records, ref, table, {"missing": [], "unreachable": []})
    report.write_results({"rotten-tomatoes": section}, records)
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    struct_row = next(line for line in text.splitlines() if line.startswith("| bp-struct-3.0 |"))
    assert "| -5.00 [-" in struct_row  # Δ reference with its bootstrap interval
    assert "vs layer-drop-2 +10.00 at the same or higher speed (3.10x vs 3.10x) (larger than the seed spread " \
           "(0.00); paired bootstrap over test movies and seeds: 95% CI [+" in text
    assert "one timing pass, `pass-1` on Xeon" in text
    assert (tmp_path / "docs" / "frontier_rotten-tomatoes.png").is_file()
    saved = json.loads((tmp_path / "results" / "frontier.json").read_text())
    assert [r["test_correct"] for r in saved] == [r["test_correct"] for r in records]  # carried to other machines
    assert {r["timing_run"] for r in saved} == {"pass-1"} and {r["task"] for r in saved} == {"rotten-tomatoes"}
    mixed = records[:3] + [r | {"timing_run": "pass-2"} for r in records[3:]]
    with pytest.raises(ValueError, match="would mix timing passes"):
        report.task_section("rotten-tomatoes", mixed, ref, table, {})


def test_a_task_without_movies_resamples_each_test_example_on_its_own():
    row = {"task": "20newsgroups", "correct": ["1011"]}
    assert fv.clusters_of(row) == ("0", "1", "2", "3")
    assert fv.clusters_of({"task": "rotten-tomatoes", "correct": ["1"]}) == fs.test_movies()
