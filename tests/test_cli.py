"""The `blockprune` CLI end to end on a tiny BERT (with the embedded tokenizer) and a small CSV dataset."""

import json

import pytest
import torch
import transformers
from tiny import save_tiny_bert, write_review_csvs

from blockprune import load_pruned
from blockprune.cli import main
from blockprune.tasks import embedded_model_path

WORDS_POS = ["great", "wonderful", "moving", "sharp", "funny", "brilliant"]
WORDS_NEG = ["dull", "boring", "messy", "flat", "tedious", "awful"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny randomly initialised BERT that uses the embedded MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tinybert"))


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return write_review_csvs(tmp_path_factory.mktemp("data"), {"train.csv": 96, "dev.csv": 32}, WORDS_POS, WORDS_NEG)


def prune_args(tiny_dir, data_files, out, *extra):
    return ["prune", "--model", str(tiny_dir), "--train-file", str(data_files / "train.csv"),
            "--validation-file", str(data_files / "dev.csv"), "--text-column", "review", "--label-column",
            "sentiment", "--epochs", "1", "--teacher-epochs", "1", "--fill-epochs", "1", "--batch-size", "16",
            "--learning-rate", "1e-3", "--teacher-learning-rate", "1e-3", "--bench-repeats", "2", "--no-progress",
            "--max-length", "32", "--output-dir", str(out), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["struct", "hybrid-filled", "struct --fill",
                                    "hybrid-filled --target-speedup 1.3 --set head_pressure=0"])
def test_prune_end_to_end_writes_model_and_report(tiny_dir, data_files, tmp_path, preset, capsys):
    out = tmp_path / preset.replace(" ", "").replace("=", "")
    preset, *flags = preset.split()
    flops = "--target-speedup" in flags  # a speedup target counts FLOPs: emptied heads buy FFN neurons
    extra = ([] if flops else ["--sparsity", "0.5"]) + ["--ffn-multiple", str(multiple := 1 if flops else 12), *flags] + (
        ["--set", "attention_block=[8,8]"] if preset == "hybrid-filled" else [])
    assert main(prune_args(tiny_dir, data_files, out, "--preset", preset, *extra)) == 0
    printed = capsys.readouterr()
    assert "speedup measured" in printed.out
    assert "Loading weights" not in printed.err and "it/s]" not in printed.err  # --no-progress: no bars at all
    report = json.loads((out / "report.json").read_text())
    for key in ("task", "metric_name", "preset", "target", "command", "versions", "heads_kept", "ffn_width"):
        assert key in report, key
    assert report["preset"] == preset and report["metric_name"] == "accuracy"
    assert report["command"].startswith("blockprune prune --model")
    assert 0.0 <= report["final"]["metric"] <= 1.0 and 0.0 <= report["teacher"]["metric"] <= 1.0
    assert report["params"]["linear"]["after"] < report["params"]["linear"]["before"]
    assert report["speedup"]["theoretical"] > 1.0 and report["speedup"]["measured"] > 0
    assert report["target"]["seq_len"] == 32  # achieved at --max-length, where the target was solved
    config = report["pruning"]["config"]
    assert config["ffn_budget"] == ("flops" if flops else "fixed")  # a --sparsity target counts weights
    assert config["seq_len"] == (32 if flops else 128)  # heads' FLOPs counted at --max-length
    assert config["head_pressure"] == (1.0 if preset == "hybrid-filled" and "head_pressure=0" not in flags else 0.0)
    if flops:  # the target is met in FLOPs at --max-length, on the shrunk model
        assert report["target"]["kind"] == "speedup" and report["target"]["achieved"] >= 1.3 * 0.95
    else:  # the target is met in weights
        assert report["pruning"]["density"]["overall"] == pytest.approx(0.5, abs=0.05)
        assert sum(report["ffn_width"]) <= 0.55 * 2 * 64
    assert report["heads_total"] == [4, 4] and report["ffn_total"] == [64, 64]  # read from the dense modules
    if preset == "struct":
        assert report["heads_kept"] == [2, 2]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert list((out / "plots").glob("*.png"))
    filled = preset == "hybrid-filled" or "--fill" in flags  # the recipe's fill stage, or asked for by --fill
    assert (out / "fill" / "done.json").is_file() == filled
    assert ("fill" in report["stages"]) == filled
    # the final model loads at its small shapes and reproduces the evaluated accuracy
    model = load_pruned(out / "model")
    widths = [layer.intermediate.dense.out_features for layer in model.bert.encoder.layer]
    assert widths == [-(-w // multiple) * multiple for w in report["ffn_width"]]  # kept + zero padding
    assert flops or any(w % 12 for w in report["ffn_width"])  # so the padding really happened (the target counts it)
    for layer, kept in zip(model.bert.encoder.layer, report["ffn_width"], strict=True):  # still zero after fill
        assert not layer.output.dense.weight[:, kept:].any() and not layer.intermediate.dense.weight[kept:].any()
    assert main(["eval", str(out / "model"), "--train-file", str(data_files / "train.csv"), "--validation-file",
                 str(data_files / "dev.csv"), "--text-column", "review", "--label-column", "sentiment",
                 "--max-length", "32"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(report["final"]["metric"])

    # a second run of the same command skips every stage
    done = {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")}
    assert main(prune_args(tiny_dir, data_files, out, "--preset", preset, *extra)) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/done.json")} == done
    report = json.loads((out / "report.json").read_text())

    # a bench done.json from before the per-layer totals were recorded is measured again, nothing else
    bench = out / "bench" / "done.json"
    old = json.loads(bench.read_text())
    bench.write_text(json.dumps({k: v for k, v in old.items() if k not in ("heads_before", "ffn_before")}))
    assert main(prune_args(tiny_dir, data_files, out, "--preset", preset, *extra)) == 0
    assert json.loads(bench.read_text())["heads_before"] == [4, 4]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/done.json") if p != bench} == {
        p: t for p, t in done.items() if p != bench}
    report = json.loads((out / "report.json").read_text())
    assert report["heads_total"] == [4, 4]

    # the same folder with other options is refused, nothing overwritten
    assert main(prune_args(tiny_dir, data_files, out, "--preset", preset, "--sparsity", "0.3")) == 2
    assert "sparsity" in capsys.readouterr().err
    assert json.loads((out / "report.json").read_text()) == report


def test_shrink_and_bench_commands(tiny_dir, tmp_path, capsys):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_dir)
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.value.weight[:8] = 0  # head 0 of layer 0
        model.bert.encoder.layer[0].attention.self.value.bias[:8] = 0
        model.bert.encoder.layer[1].output.dense.weight[:, :32] = 0  # half the neurons of layer 1
    model.save_pretrained(tmp_path / "masked")
    assert main(["shrink", str(tmp_path / "masked"), str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert "[[3], [4]]" in out and "[64, 32]" in out
    small = load_pruned(tmp_path / "small")
    inputs = {"input_ids": torch.randint(5, 30000, (2, 10))}
    with torch.no_grad():
        assert torch.allclose(small(**inputs).logits, model.eval()(**inputs).logits, atol=1e-4)
    assert main(["bench", str(tmp_path / "small"), "--reference", str(tiny_dir), "--batch-sizes", "1,2",
                 "--repeats", "2", "--seq-len", "16"]) == 0
    assert "theoretical speedup" in capsys.readouterr().out


@pytest.mark.parametrize("with_tokenizer", [False, True])
def test_shrink_keeps_the_image_processor_and_tokenizer(tmp_path, with_tokenizer):
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    image_size=16, patch_size=8, num_labels=2)
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        model.vit.layers[0].attention.v_proj.weight[:8] = 0  # head 0 of layer 0
        model.vit.layers[0].attention.v_proj.bias[:8] = 0
    model.save_pretrained(tmp_path / "masked")
    mean = [0.25, 0.5, 0.75]
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=mean,
                                   image_std=[0.5] * 3).save_pretrained(tmp_path / "masked")
    if with_tokenizer:
        transformers.AutoTokenizer.from_pretrained(embedded_model_path()).save_pretrained(tmp_path / "masked")
    assert main(["shrink", str(tmp_path / "masked"), str(tmp_path / "small")]) == 0
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / "small")
    assert list(processor.image_mean) == mean and (processor.size["height"], processor.size["width"]) == (16, 16)
    assert (tmp_path / "small" / "tokenizer_config.json").is_file() == with_tokenizer
    if with_tokenizer:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "small")
        assert tokenizer("a fine film")["input_ids"] == transformers.AutoTokenizer.from_pretrained(
            embedded_model_path())("a fine film")["input_ids"]
    small = load_pruned(tmp_path / "small")
    assert small.vit.layers[0].attention.v_proj.out_features == 24
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(small(pixel_values=pixels).logits, model(pixel_values=pixels).logits, atol=1e-4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target-speedup", "100"], "cannot be reached"),
        (["--target-speedup", "0.5"], "greater than 1"),
        (["--preset", "struct", "--set", "sparsity=2"], "sparsity"),
        (["--preset", "hybrid", "--sparsity", "0.5", "--set", "ffn_budget=flops"], "give a --target-speedup"),
        (["--label-column", "nope"], "nope"),
        (["--teacher", "/does/not/exist"], "teacher"),
    ],
)
def test_bad_input_fails_fast_with_one_clear_error(tiny_dir, data_files, tmp_path, extra, message, capsys):
    args = prune_args(tiny_dir, data_files, tmp_path / "bad", *extra)
    if "--label-column" in extra:  # replace the good label column
        i = args.index("--label-column")
        del args[i:i + 2]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("blockprune prune: error:")
    assert not (tmp_path / "bad" / "teacher").exists()  # no long work started


def test_missing_model_path_is_one_clear_error(data_files, tmp_path, capsys):
    args = prune_args(tmp_path / "no-model", data_files, tmp_path / "out")
    assert main(args) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_command_checks_parity(tiny_dir, tmp_path, capsys):
    assert main(["export", str(tiny_dir), str(tmp_path / "m.onnx"), "--seq-len", "16", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.onnx").is_file() and "max |ONNX - PyTorch|" in out


@pytest.mark.slow
def test_prune_question_answering_end_to_end(tiny_dir, tmp_path):
    contexts = [
        ("The Eiffel Tower is in Paris and was finished in 1889.", "Where is the Eiffel Tower?", "Paris"),
        ("Marie Curie won two Nobel prizes, in physics and in chemistry.", "How many Nobel prizes?", "two"),
        ("The river Nile flows north through Egypt into the sea.", "Which way does the Nile flow?", "north"),
        ("Mount Fuji is the highest mountain in Japan at 3776 metres.", "How high is Mount Fuji?", "3776 metres"),
    ]
    articles = [{"title": f"t{i}", "paragraphs": [{"context": c, "qas": [
        {"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}]}]}
        for i, (c, q, a) in enumerate(contexts * 4)]
    for i, article in enumerate(articles):
        article["paragraphs"][0]["qas"][0]["id"] = f"q{i}"
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"version": "1.1", "data": articles}))
    out = tmp_path / "qa"
    args = ["prune", "--model", str(tiny_dir), "--task", "question-answering", "--train-file", str(squad),
            "--validation-file", str(squad), "--preset", "struct", "--sparsity", "0.5", "--epochs", "1",
            "--teacher-epochs", "1", "--batch-size", "8", "--max-length", "64", "--bench-repeats", "2",
            "--no-progress", "--output-dir", str(out)]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "question-answering" and report["metric_name"] == "f1"
    assert 0.0 <= report["final"]["metric"] <= 1.0 and "exact_match" in report["final"]["metrics"]
    assert report["heads_kept"] == [2, 2]
    model = load_pruned(out / "model")
    assert type(model).__name__ == "BertForQuestionAnswering"


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_dir, data_files, tmp_path):
    """The CLI under `torchrun --nproc_per_node 2` on CPU (DDP over gloo): rank 0 writes one consistent run."""
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    args = prune_args(tiny_dir, data_files, out, "--sparsity", "0.5")
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "blockprune.cli", *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("speedup measured") == 1  # only rank 0 reports
    report = json.loads((out / "report.json").read_text())
    assert report["heads_kept"] == [2, 2] and report["pruning"]["density"]["overall"] == pytest.approx(0.5)
    assert load_pruned(out / "model") is not None


def test_a_run_folder_pinned_before_an_option_existed_is_reused_at_its_default(tmp_path):
    from blockprune.app.options import RunError, RunOptions
    from blockprune.app.pipeline import Run

    options = dict(output_dir=str(tmp_path / "run"), max_train_samples=16, max_eval_samples=16, progress=False)
    Run(RunOptions(**options)).check_run_dir()
    pinned = tmp_path / "run" / "run_config.json"
    older = json.loads(pinned.read_text())
    del older["ffn_multiple"]  # as written by a version without --ffn-multiple
    pinned.write_text(json.dumps(older))
    Run(RunOptions(**options)).check_run_dir()  # at its default the new option changes nothing: accepted
    with pytest.raises(RunError, match=r"other options \(ffn_multiple differ\)"):
        Run(RunOptions(**options, ffn_multiple=8)).check_run_dir()
    with pytest.raises(RunError, match=r"--ffn-multiple 0 must be a whole number ≥ 1"):
        Run(RunOptions(**options, ffn_multiple=0))
