"""Tests for blockprune.report.render / plots: a fake run folder (tiny BERT with zeroed head and neurons + a hand-written
report.json) rendered to Markdown, self-contained HTML and PNGs; density maps checked against the zeros."""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny import FFN, HEAD_DIM, HEADS, HIDDEN, LAYERS, tiny_model

from blockprune import plots
from blockprune.report.render import MissingReportError, ReportError, render_report
from blockprune.report.sections import headline
from blockprune.surgery.arch import find_blocks, get_arch, get_path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ZERO_HEAD = 1          # head zeroed in layer 0 (Q/K/V rows and O columns)
ZERO_NEURONS = range(10, 40)  # FFN neurons zeroed in layer 1 (up rows and down columns)

REPORT: dict[str, Any] = {
    "format": "blockprune-report", "version": 1,
    "task": "text-classification", "metric_name": "accuracy",
    "data": {"task": "text-classification", "source": "embedded rotten_tomatoes", "num_train": 8530,
             "num_eval": 1066, "metric": "accuracy", "max_length": 128},
    "model": "tiny-bert", "preset": "struct",
    "target": {"kind": "speedup", "value": 2.0, "achieved": 2.13},
    "pruning": {"config": {"attention_block": "head", "ffn_block": [1, -1], "attention_method": "topk",
                           "ffn_method": "topk", "sparsity": 0.5},
                "density": {"attention": 0.875, "ffn": 0.766, "overall": 0.82, "modules": {}}},
    "teacher": {"metric": 0.842, "metrics": {"accuracy": 0.842}, "latency_ms": {"1": 5.1, "32": 460.0}},
    "final": {"metric": 0.835, "metrics": {"accuracy": 0.835}, "latency_ms": {"1": 2.4, "32": 220.0}},
    "speedup": {"measured": 2.09, "measured_by_batch": {"1": 2.1, "32": 2.09}, "theoretical": 2.2,
                "seq_len": 128, "threads": 2, "device": "cpu"},
    "params": {"linear": {"before": 16384, "after": 12000}, "total": {"before": 23586, "after": 19202},
               "non_embedding": {"before": 18274, "after": 13890}},
    "flops_per_token": {"before": 40000, "after": 30000},
    "heads_kept": [HEADS - 1, HEADS], "heads_total": [HEADS, HEADS],
    "ffn_width": [FFN, FFN - len(ZERO_NEURONS)], "ffn_total": [FFN, FFN],
    "stages": {"bench": {"seconds": 60.5}, "evaluate": {"seconds": 12.0}, "prune": {"seconds": 1500.2},
               "shrink": {"seconds": 2.3}, "teacher": {"seconds": 230.1}},  # sorted by name, as json sort_keys does
    "command": "blockprune prune --preset struct --target-speedup 2 --output runs/demo",
    "versions": {"blockprune": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "python": "3.11.7"},
    "machine": {"platform": "Linux-x86_64", "cpu_count": 2},
    "created": "2026-11-25T16:00:00Z",
}


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    (run_dir / "report.json").write_text(json.dumps(report), encoding="utf-8")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A run folder: masked tiny BERT under prune/model (one head and 30 neurons zeroed) + report.json."""
    model = tiny_model("bert")
    layers = model.bert.encoder.layer
    rows = slice(ZERO_HEAD * HEAD_DIM, (ZERO_HEAD + 1) * HEAD_DIM)
    with torch.no_grad():
        attention = layers[0].attention
        for linear in (attention.self.query, attention.self.key, attention.self.value):
            linear.weight[rows] = 0
        attention.output.dense.weight[:, rows] = 0
        layers[1].intermediate.dense.weight[list(ZERO_NEURONS)] = 0
        layers[1].output.dense.weight[:, list(ZERO_NEURONS)] = 0
    model.save_pretrained(tmp_path / "prune" / "model")
    write_report(tmp_path, REPORT)
    return tmp_path


class _Refs(HTMLParser):
    """Collects every tag name and every src/href attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [(tag, name, value or "") for name, value in attrs if name in ("src", "href")]


def test_render_writes_every_file(run_dir: Path) -> None:
    paths = render_report(run_dir)
    expected = {"report.md", "report.html", "plots/density_maps.png", "plots/heads_per_layer.png",
                "plots/ffn_width.png", "plots/tradeoff.png"}
    assert set(paths) == expected
    for key, path in paths.items():
        assert path == run_dir / key and path.is_file()
    for key in expected - {"report.md", "report.html"}:
        assert paths[key].read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_html_is_self_contained_and_shows_the_key_numbers(run_dir: Path) -> None:
    page = render_report(run_dir)["report.html"].read_text(encoding="utf-8")
    refs = _Refs()
    refs.feed(page)
    assert "script" not in refs.tags and "link" not in refs.tags
    images = [value for tag, _, value in refs.refs if tag == "img"]
    assert len(images) == 4
    assert all(value.startswith("data:image/png;base64,") for _, _, value in refs.refs)
    assert all(base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC) for src in images)
    assert "http" not in "".join(value for _, _, value in refs.refs)
    assert "url(" not in page and "@import" not in page
    for text in ("2.1\u00d7 faster, \u22120.7 points accuracy", "84.2%", "83.5%", "2.09\u00d7", "2.10\u00d7",
                 "2.20\u00d7", "2.00\u00d7 speedup", "2.13\u00d7 speedup", "16.38 k \u2192 12.00 k",
                 "40.00 k \u2192 30.00 k", "blockprune prune --preset struct"):
        assert text in page, text


def test_markdown_has_the_tables_and_links_the_plots(run_dir: Path) -> None:
    text = render_report(run_dir)["report.md"].read_text(encoding="utf-8")
    assert f"| 0 | {HEADS - 1} | {HEADS} | 75% |" in text
    assert f"| 1 | {HEADS} | {HEADS} | 100% |" in text
    assert f"| 1 | {FFN - len(ZERO_NEURONS)} | {FFN} | 53% |" in text
    assert "| prune | 1500.2 | 25 min 00 s | 83% |" in text
    stage_rows = [text.index(f"| {stage} | ") for stage in ("teacher", "prune", "shrink", "evaluate", "bench")]
    assert stage_rows == sorted(stage_rows)  # pipeline order, not alphabetical
    assert "| Data | embedded rotten_tomatoes (train 8,530, eval 1,066, max length 128) |" in text
    assert "| Change | \u22120.7 points |" in text
    for name in ("density_maps", "heads_per_layer", "ffn_width", "tradeoff"):
        assert f"(plots/{name}.png)" in text
    assert "Figure skipped" not in text


def test_density_maps_show_the_zeroed_head_and_neurons(run_dir: Path) -> None:
    maps = plots.load_density_maps(run_dir / "prune" / "model", "head", [1, -1], REPORT["heads_total"])
    by_key = {(m.layer, m.name): m for m in maps}
    assert len(maps) == LAYERS * 6
    for name in ("Q", "K", "V"):
        item = by_key[(0, name)]
        assert item.unit == "head" and item.grid.shape == (HEADS, 1)
        assert item.grid[ZERO_HEAD, 0] == 0.0
        assert np.all(np.delete(item.grid, ZERO_HEAD, axis=0) == 1.0)
        assert item.density == pytest.approx(1 - 1 / HEADS)
    assert by_key[(0, "O")].grid.shape == (1, HEADS) and by_key[(0, "O")].grid[0, ZERO_HEAD] == 0.0
    up, down = by_key[(1, "up")], by_key[(1, "down")]
    assert up.unit == "neuron" and up.grid.shape == (FFN, 1) and down.grid.shape == (1, FFN)
    zeroed = np.zeros(FFN, dtype=bool)
    zeroed[list(ZERO_NEURONS)] = True
    assert np.array_equal(up.grid[:, 0] == 0, zeroed) and np.array_equal(down.grid[0] == 0, zeroed)
    assert down.density == pytest.approx(1 - len(ZERO_NEURONS) / FFN)
    assert np.all(by_key[(1, "Q")].grid == 1.0)


@pytest.mark.parametrize("model_type", ["distilbert", "roberta"])
def test_density_maps_follow_the_arch_table_and_tile_blocks(tmp_path: Path, model_type: str) -> None:
    model = tiny_model(model_type)
    spec = get_arch(model)
    block = find_blocks(model)[1]
    with torch.no_grad():
        get_path(block, spec.attention[0].q).weight[0:8, 8:16] = 0
        get_path(block, spec.ffn.up).weight[16:32, 0:16] = 0
    model.save_pretrained(tmp_path)
    maps = {(m.layer, m.name): m for m in plots.load_density_maps(tmp_path, [8, 8], [16, 16])}
    q, up = maps[(1, "Q")], maps[(1, "up")]
    assert q.unit == "block" and q.grid.shape == (HIDDEN // 8, HIDDEN // 8)
    assert q.grid[0, 1] == 0.0 and (q.grid == 0).sum() == 1
    assert up.grid.shape == (FFN // 16, HIDDEN // 16) and up.grid[1, 0] == 0.0 and (up.grid == 0).sum() == 1
    assert np.all(maps[(0, "Q")].grid == 1.0)


def test_block_density_counts_nonzeros_per_tile() -> None:
    weight = torch.ones(4, 6)
    weight[0:2, 0:3] = 0       # one tile fully pruned
    weight[2, 3] = 0           # one weight of another tile
    grid = plots.block_density(weight, (2, 3))
    assert grid.tolist() == [[0.0, 1.0], [1.0, 5 / 6]]
    assert plots.block_density(weight, (1, 1)).shape == (4, 6)
    with pytest.raises(plots.DensityMapError, match=r"\(4, 4\) does not tile"):
        plots.block_density(weight, (4, 4))


def test_missing_report_json_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MissingReportError, match=r"report\.json does not exist.*blockprune prune"):
        render_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ReportError, match=r"report\.json is not valid JSON"):
        render_report(tmp_path)


def test_missing_optional_parts_are_skipped_with_a_note(tmp_path: Path) -> None:
    report = copy.deepcopy(REPORT)
    for key in ("heads_kept", "stages", "flops_per_token", "versions"):
        del report[key]
    del report["speedup"]["measured"]
    report["speedup"]["threads"] = None
    report["machine"] = "Linux-x86_64 (gpu: none)"
    write_report(tmp_path, report)  # and no prune/model folder at all
    paths = render_report(tmp_path)
    assert set(paths) == {"report.md", "report.html", "plots/ffn_width.png"}
    text = paths["report.md"].read_text(encoding="utf-8")
    assert "Figure skipped: no pruned weights in prune/model/" in text
    assert "report.json has no stage timings" in text
    assert "Figure skipped: report.json lacks speedup.measured." in text
    assert "'heads_kept'" in text and "| 1 | 34 | 64 | 53% |" in text
    assert "**\u22120.7 points accuracy on dev**" in text  # no test split: dev, labelled
    assert "None" not in text and "| machine | Linux-x86_64 (gpu: none) |" in text


def test_failed_plot_leaves_the_previous_report_intact(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = render_report(run_dir)
    before = {key: path.read_bytes() for key, path in paths.items()}
    changed = copy.deepcopy(REPORT)
    changed["final"]["metric"] = 0.5
    write_report(run_dir, changed)

    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("plotting failed midway")

    monkeypatch.setattr(plots, "density_figure", broken)
    with pytest.raises(RuntimeError, match="midway"):
        render_report(run_dir)
    assert {key: path.read_bytes() for key, path in paths.items()} == before
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(k[6:] for k in paths if "plots/" in k)
    assert [p.name for p in run_dir.iterdir() if p.name.startswith(".")] == []


def test_headline_signs_and_scales() -> None:
    better = copy.deepcopy(REPORT)
    better["final"]["metric"] = 0.845
    assert headline(better) == "2.1\u00d7 faster, +0.3 points accuracy on dev"
    points = copy.deepcopy(REPORT)
    points["teacher"]["metric"], points["final"]["metric"], points["metric_name"] = 88.0, 86.5, "f1"
    assert headline(points) == "2.1\u00d7 faster, \u22121.5 points f1 on dev"
    assert headline({}) == "Pruning report"


def test_lower_is_better_metric_is_worded_as_values_and_change(run_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    perplexity = copy.deepcopy(REPORT)
    perplexity.update(task="causal-lm", metric_name="perplexity", higher_is_better=False)
    perplexity["teacher"]["metric"], perplexity["final"]["metric"] = 12.3, 13.1
    assert headline(perplexity) == "2.1\u00d7 faster, perplexity 12.3 \u2192 13.1 on dev (+0.8, lower is better)"
    fraction = copy.deepcopy(REPORT)
    fraction.update(metric_name="error", higher_is_better=False)
    assert headline(fraction) == "2.1\u00d7 faster, error 84.2% \u2192 83.5% on dev (\u22120.7 points, lower is better)"
    assert headline(REPORT) == headline({**REPORT, "higher_is_better": True})  # absent means higher is better
    figures: list[Any] = []
    monkeypatch.setattr(plots, "_png", lambda fig: figures.append(fig) or PNG_MAGIC)
    write_report(run_dir, perplexity)
    text = render_report(run_dir)["report.md"].read_text(encoding="utf-8")
    assert "| Change | +0.80 (lower is better) |" in text and "+0.8 points" not in text
    (tradeoff,) = [fig for fig in figures if "vs speedup" in fig.axes[0].get_title()]
    labels = [t.get_text() for t in tradeoff.axes[0].texts]
    assert any("(+0.8, lower is better)" in label for label in labels), labels
    assert tradeoff.axes[0].get_ylabel() == "perplexity, lower is better"


def test_test_split_metrics_are_shown_beside_the_validation_ones(run_dir: Path) -> None:
    report = json.loads(json.dumps(REPORT))
    report["teacher"]["test_metrics"] = {"accuracy": 0.851}
    report["final"]["test_metrics"] = {"accuracy": 0.829}
    write_report(run_dir, report)
    text = render_report(run_dir)["report.md"].read_text(encoding="utf-8")
    assert "| Teacher accuracy (test split) | 85.1% |" in text
    assert "| Final accuracy (test split) | 82.9% |" in text
    # with a test split the dev rows say they are dev, and come after the held-out ones (as the headline does)
    assert "| Teacher accuracy (dev) |" in text and "| Change (dev) |" in text
    assert text.index("| Change (test split) |") < text.index("| Teacher accuracy (dev) |")
