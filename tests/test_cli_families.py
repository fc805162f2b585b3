"""``blockprune prune`` end to end on decoder and vision families: causal-lm on tiny GPT-2 / Llama, image
classification on a tiny ViT, each with data the test writes.

Each run goes teacher → prune → shrink → evaluate → bench → report through the real CLI entry point, then the
final model folder is loaded with ``blockprune.load_pruned`` and must (1) give the same logits as the pruned
full-size model (masks baked in as zeros) and (2) score the metric the report says.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from test_causal_lm import counting_text, tiny_lm_folder
from test_images import tiny_vit_folder, write_image_folder

import blockprune
from blockprune.cli import main
from blockprune.tasks import load_task

COMMON = ["--preset", "struct", "--sparsity", "0.5", "--epochs", "1", "--teacher-epochs", "1",
          "--bench-repeats", "1", "--no-progress", "--seed", "0"]


def prune(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    code = main(["prune", *args, *COMMON, "--output-dir", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    return json.loads((out / "report.json").read_text()), printed.out


def max_logit_diff(pruned_dir: Path, final_dir: Path, model_class: type, batch: dict[str, torch.Tensor]) -> float:
    dense = model_class.from_pretrained(pruned_dir).eval()
    small = blockprune.load_pruned(final_dir, model_class=model_class)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.inference_mode():
        return float((dense(**inputs).logits - small(**inputs).logits).abs().max())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_prune_causal_lm_end_to_end(tmp_path, capsys, family):
    model_dir = tiny_lm_folder(tmp_path / family, family)
    (tmp_path / "train.txt").write_text(counting_text(60, seed=1), encoding="utf-8")
    (tmp_path / "valid.txt").write_text(counting_text(10, seed=2), encoding="utf-8")
    out = tmp_path / "run"
    report, printed = prune(["--task", "causal-lm", "--model", str(model_dir), "--train-file",
                             str(tmp_path / "train.txt"), "--validation-file", str(tmp_path / "valid.txt"),
                             "--max-train-samples", "50", "--max-length", "32", "--batch-size", "8",
                             "--learning-rate", "1e-3", "--teacher-learning-rate", "1e-3"], out, capsys)
    assert report["task"] == "causal-lm" and report["metric_name"] == "perplexity"
    assert report["higher_is_better"] is False and report["data"]["num_train"] == 50
    for stage in ("teacher", "final"):
        assert math.isfinite(report[stage]["metric"]) and report[stage]["metric"] >= 1.0
        assert report[stage]["metric"] == pytest.approx(math.exp(report[stage]["metrics"]["loss"]), rel=1e-6)
    assert "lower is better" in printed
    assert sum(report["heads_kept"]) < sum(report["heads_total"])  # struct at 0.5 really removed heads

    task = load_task("causal-lm", train_file=tmp_path / "train.txt", validation_file=tmp_path / "valid.txt",
                     max_length=32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "model")
    batch = task.collate(tokenizer)(list(task.eval_dataset(tokenizer)))
    cls = transformers.AutoModelForCausalLM
    assert max_logit_diff(out / "prune" / "model", out / "model", cls, batch) <= 1e-4
    final = blockprune.load_pruned(out / "model", model_class=cls)
    assert task.evaluate(final, tokenizer, progress=False)["perplexity"] == pytest.approx(report["final"]["metric"],
                                                                                         rel=1e-5)
    assert main(["eval", str(out / "model"), "--task", "causal-lm", "--train-file", str(tmp_path / "train.txt"),
                 "--validation-file", str(tmp_path / "valid.txt"), "--max-length", "32"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["perplexity"] == pytest.approx(report["final"]["metric"], rel=1e-5)


def test_prune_image_classification_end_to_end(tmp_path, capsys):
    model_dir = tiny_vit_folder(tmp_path / "vit", processor=False)  # the processor comes from the config
    train = write_image_folder(tmp_path / "train", per_class=8)
    val = write_image_folder(tmp_path / "val", per_class=3, seed=1)
    out = tmp_path / "run"
    report, printed = prune(["--task", "image-classification", "--model", str(model_dir), "--train-file", str(train),
                             "--validation-file", str(val), "--batch-size", "4", "--learning-rate", "3e-3",
                             "--teacher-learning-rate", "3e-3"], out, capsys)
    assert report["task"] == "image-classification" and report["metric_name"] == "accuracy"
    assert report["higher_is_better"] is True and report["data"]["label_names"] == ["blue", "red"]
    assert 0.0 <= report["final"]["metric"] <= 1.0 and report["teacher"]["metric"] == 1.0  # colours are easy
    assert "points" in printed
    assert sum(report["heads_kept"]) < sum(report["heads_total"])

    processor = transformers.AutoImageProcessor.from_pretrained(out / "model")  # saved with every model
    task = load_task("image-classification", train_file=train, validation_file=val)
    batch = task.collate(processor)(list(task.eval_dataset(processor)))
    cls = transformers.AutoModelForImageClassification
    assert max_logit_diff(out / "prune" / "model", out / "model", cls, batch) <= 1e-4
    final = blockprune.load_pruned(out / "model", model_class=cls)
    assert task.evaluate(final, processor, progress=False)["accuracy"] == report["final"]["metric"]
    assert main(["eval", str(out / "model"), "--task", "image-classification", "--train-file", str(train),
                 "--validation-file", str(val)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == report["final"]["metric"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "image-classification"], "reads a local image folder"),
        (["--task", "image-classification", "--train-file", "{images}"], "is not an image model"),  # MiniLM default
        (["--task", "causal-lm"], "causal-lm has no embedded dataset"),
        (["--task", "causal-lm", "--train-file", "{images}/red/0.png"], "Unsupported text file type '.png'"),
        (["--task", "causal-lm", "--train-file", "{text}", "--label-column", "y"], "do(es) not apply"),
    ],
)
def test_bad_input_for_the_new_tasks_fails_fast_with_one_clear_error(tmp_path, capsys, extra, message):
    images = write_image_folder(tmp_path / "images", per_class=2)
    text = tmp_path / "train.txt"
    text.write_text(counting_text(4), encoding="utf-8")
    args = [a.format(images=images, text=text) for a in extra]
    assert main(["prune", *args, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1
    assert not (tmp_path / "run" / "teacher").exists()  # nothing trained
