"""Data named the Hugging Face way: saved DatasetDict folders with configs and splits, parquet, the hub offline.

Everything is built in code and saved to a temporary folder (``save_to_disk``, ``to_parquet``): nothing is
downloaded. The hub path runs the real ``datasets`` code in offline mode, or a mocked ``load_dataset``.
"""

import json
import random
import sys

import pytest
from tiny import save_tiny_bert

datasets = pytest.importorskip("datasets")

from blockprune.cli import main  # noqa: E402
from blockprune.tasks import DataError, load_task  # noqa: E402

WORDS = ["great", "dull", "moving", "flat", "sharp", "tedious", "funny", "awful"]
SPLIT_SIZES = {"train": 48, "validation_matched": 24, "test": 12}
PAIR = {"text_column": "sentence1", "text_pair_column": "sentence2"}


def glue_like(n: int, seed: int) -> datasets.Dataset:
    rng = random.Random(seed)
    rows = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
    for i in range(n):
        rows["sentence1"].append(" ".join(rng.choices(WORDS, k=4)))
        rows["sentence2"].append(" ".join(rng.choices(WORDS, k=3)))
        rows["label"].append(i % 2)
        rows["idx"].append(i)
    return datasets.Dataset.from_dict(rows)


@pytest.fixture(scope="module")
def splits():
    return datasets.DatasetDict({name: glue_like(n, seed) for seed, (name, n) in enumerate(SPLIT_SIZES.items())})


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory, splits):
    """``<root>/mnli``: a saved DatasetDict per config, as ``--dataset <root> --dataset-config mnli`` reads it."""
    root = tmp_path_factory.mktemp("glue")
    splits.save_to_disk(str(root / "mnli"))
    return root


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny randomly initialised 2-label BERT that uses the embedded MiniLM tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tinybert"))


def as_examples(split: datasets.Dataset) -> list[tuple[str, str, int]]:
    return list(zip(split["sentence1"], split["sentence2"], split["label"], strict=True))


def task_examples(examples) -> list[tuple[str, str, int]]:
    return [(e.text, e.text_pair, e.label) for e in examples]


# ---------------------------------------------------------------- load_task on saved folders


def test_saved_config_and_named_splits_load_in_order(glue_dir, splits):
    task = load_task(dataset=str(glue_dir), dataset_config="mnli", validation_split="validation_matched",
                     test_split="test", **PAIR)
    assert task_examples(task.train_examples) == as_examples(splits["train"])
    assert task_examples(task.eval_examples) == as_examples(splits["validation_matched"])
    assert task_examples(task.test_examples) == as_examples(splits["test"])
    assert task.label_names == ["0", "1"]
    assert task.describe()["num_test"] == SPLIT_SIZES["test"]
    assert "validation=validation_matched" in task.source and "test=test" in task.source
    scored = task.test_task()
    assert scored.eval_examples == task.test_examples and scored.train_examples == task.train_examples
    assert task.eval_examples != task.test_examples  # the original task is unchanged


def test_train_split_and_subsampling_apply_to_the_named_splits(glue_dir, splits):
    task = load_task(dataset=str(glue_dir), dataset_config="mnli", train_split="validation_matched",
                     validation_split="test", test_split="train", max_eval_samples=5, **PAIR)
    assert task_examples(task.train_examples) == as_examples(splits["validation_matched"])
    assert task.num_eval == 5 and len(task.test_examples) == 5
    assert set(task_examples(task.test_examples)) <= set(as_examples(splits["train"]))


def test_a_dataset_dict_folder_without_configs(tmp_path, splits):
    splits.save_to_disk(str(tmp_path / "plain"))
    task = load_task(dataset=str(tmp_path / "plain"), validation_split="validation_matched", **PAIR)
    assert task.num_train == SPLIT_SIZES["train"] and task.test_examples == []
    with pytest.raises(DataError, match=r"without configs; leave dataset_config \('mnli'\) out"):
        load_task(dataset=str(tmp_path / "plain"), dataset_config="mnli", validation_split="validation_matched")


def test_bad_split_lists_the_available_splits(glue_dir):
    with pytest.raises(DataError, match=r"no split 'validation'; its splits are \['train', 'validation_matched', "
                                        r"'test'\]\. .*--validation-split"):
        load_task(dataset=str(glue_dir), dataset_config="mnli", **PAIR)
    with pytest.raises(DataError, match=r"no split 'dev', 'held'; its splits"):
        load_task(dataset=str(glue_dir), dataset_config="mnli", validation_split="dev", test_split="held", **PAIR)


def test_a_test_split_with_hidden_labels_is_refused(tmp_path, splits):
    hidden = datasets.DatasetDict({"train": splits["train"], "validation": splits["validation_matched"],
                                   "test": splits["test"].map(lambda row: {"label": -1})})
    hidden.save_to_disk(str(tmp_path / "hidden"))
    with pytest.raises(DataError, match=r"split 'test': every 'label' is -1, i.e. the labels are hidden"):
        load_task(dataset=str(tmp_path / "hidden"), test_split="test", **PAIR)
    assert load_task(dataset=str(tmp_path / "hidden"), **PAIR).num_eval == SPLIT_SIZES["validation_matched"]


def test_bad_or_missing_config_lists_the_available_configs(glue_dir):
    with pytest.raises(DataError, match=r"has no config 'mnlx'; its configs are \['mnli'\].*--dataset-config"):
        load_task(dataset=str(glue_dir), dataset_config="mnlx", **PAIR)
    with pytest.raises(DataError, match=r"holds several configs; its configs are \['mnli'\]"):
        load_task(dataset=str(glue_dir), **PAIR)


def test_folders_that_are_not_dataset_dicts(tmp_path, splits):
    with pytest.raises(DataError, match="Dataset folder not found"):
        load_task(dataset=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset saved with DatasetDict.save_to_disk"):
        load_task(dataset=str(tmp_path / "empty"))
    splits["train"].save_to_disk(str(tmp_path / "table"))
    with pytest.raises(DataError, match=r"single Dataset .*pass it as train_file="):
        load_task(dataset=str(tmp_path / "table"))


def test_saved_single_datasets_and_parquet_files_are_train_and_validation_files(tmp_path, splits):
    splits["train"].save_to_disk(str(tmp_path / "train_table"))
    splits["validation_matched"].to_parquet(str(tmp_path / "dev.parquet"))
    task = load_task(train_file=tmp_path / "train_table", validation_file=tmp_path / "dev.parquet", **PAIR)
    assert task_examples(task.train_examples) == as_examples(splits["train"])
    assert task_examples(task.eval_examples) == as_examples(splits["validation_matched"])
    splits.save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"holds a DatasetDict with named splits; pass it as dataset="):
        load_task(train_file=tmp_path / "dict", **PAIR)


def test_parquet_rows_are_checked_like_csv_rows(tmp_path, splits):
    train = splits["train"].to_pandas()
    train.loc[[2, 6], "sentence1"] = ""
    train.to_parquet(tmp_path / "train.parquet")
    splits["validation_matched"].to_parquet(str(tmp_path / "dev.parquet"))
    with pytest.raises(DataError, match=r"train\.parquet: column 'sentence1' is empty or NaN in 2 row\(s\).*\[3, 7\]"):
        load_task(train_file=tmp_path / "train.parquet", validation_file=tmp_path / "dev.parquet", **PAIR)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken\.parquet is not a readable parquet file"):
        load_task(train_file=tmp_path / "broken.parquet")


def test_causal_lm_and_qa_read_named_splits(tmp_path):
    docs = datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": [f"{s} words {i}" for i in range(4)]})
                                 for s in ("train", "valid", "test")})
    docs.save_to_disk(str(tmp_path / "docs"))
    lm = load_task("causal-lm", dataset=str(tmp_path / "docs"), validation_split="valid", test_split="test")
    assert lm.eval_examples == [f"valid words {i}" for i in range(4)]
    assert lm.test_examples == [f"test words {i}" for i in range(4)]
    qa_row = {"id": "q1", "question": "Who?", "context": "Ann wrote it.",
              "answers": {"text": ["Ann"], "answer_start": [0]}}
    datasets.DatasetDict({s: datasets.Dataset.from_list([qa_row]) for s in ("train", "validation")}).save_to_disk(
        str(tmp_path / "qa"))
    qa = load_task("qa", dataset=str(tmp_path / "qa"))
    assert qa.eval_examples[0].answers == ("Ann",) and qa.test_examples == []
    with pytest.raises(DataError, match=r"has no split 'test'; its splits are \['train', 'validation'\]"):
        load_task("qa", dataset=str(tmp_path / "qa"), test_split="test")


def test_split_options_without_a_dataset_are_refused():
    with pytest.raises(DataError, match=r"test_split='test' .*no dataset= was given"):
        load_task(test_split="test")
    with pytest.raises(DataError, match=r"dataset_config='mnli', validation_split='validation_matched'"):
        load_task(train_file="t.csv", dataset_config="mnli", validation_split="validation_matched")


def test_saved_folder_without_datasets_package_says_how_to_install(glue_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"needs the 'datasets' package \(pip install 'blockprune\[hf\]'"):
        load_task(dataset=str(glue_dir), dataset_config="mnli")


# ---------------------------------------------------------------- the hub, offline or mocked


def test_hub_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import time, so set it here too
    with pytest.raises(DataError, match=r"Could not reach dataset 'blockprune-tests/no-such-glue' \(config 'mnli'\) "
                                        r"on the Hugging Face hub.*offline mode is on.*dataset=\./folder"):
        load_task(dataset="blockprune-tests/no-such-glue", dataset_config="mnli")


def test_hub_cli_error_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    code = main(["eval", str(tmp_path), "--dataset", "blockprune-tests/no-such-glue", "--dataset-config", "mnli",
                 "--validation-split", "validation_matched"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("blockprune eval: error: Could not reach dataset 'blockprune-tests/no-such-glue'")


def test_hub_dataset_loads_once_with_its_config(monkeypatch, splits):
    calls = []

    def fake_load_dataset(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        if config != "mnli":
            raise ValueError(f"BuilderConfig '{config}' not found. Available: ['mnli', 'sst2']")
        return splits

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task(dataset="nyu-mll/glue", dataset_config="mnli", validation_split="validation_matched",
                     test_split="test", **PAIR)
    assert calls == [("nyu-mll/glue", "mnli", {})]
    assert task_examples(task.test_examples) == as_examples(splits["test"])
    assert task.source.startswith("hub: nyu-mll/glue/mnli")
    with pytest.raises(DataError, match=r"Could not load dataset 'nyu-mll/glue' \(config 'sst3'\).*"
                                        r"BuilderConfig 'sst3' not found\. Available: \['mnli', 'sst2'\]"):
        load_task(dataset="nyu-mll/glue", dataset_config="sst3", **PAIR)
    with pytest.raises(DataError, match=r"'nyu-mll/glue' config 'mnli' has no split 'validation'; its splits"):
        load_task(dataset="nyu-mll/glue", dataset_config="mnli", **PAIR)


# ---------------------------------------------------------------- the CLI end to end

HF_FLAGS = ["--text-column", "sentence1", "--text-pair-column", "sentence2", "--dataset-config", "mnli"]


def eval_json(capsys, *args) -> dict:
    assert main(["eval", *args, "--max-length", "32", *HF_FLAGS]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_scores_the_named_validation_and_test_splits(tiny_dir, glue_dir, capsys):
    both = eval_json(capsys, str(tiny_dir), "--dataset", str(glue_dir), "--validation-split", "validation_matched",
                     "--test-split", "test")
    test_only = eval_json(capsys, str(tiny_dir), "--dataset", str(glue_dir), "--validation-split", "test")
    validation_only = eval_json(capsys, str(tiny_dir), "--dataset", str(glue_dir), "--validation-split",
                                "validation_matched")
    assert both["test"] == pytest.approx(test_only)  # the "test" block is really the test split
    assert {k: v for k, v in both.items() if k != "test"} == pytest.approx(validation_only)
    assert "test" not in validation_only


def test_eval_bad_split_is_one_line(tiny_dir, glue_dir, capsys):
    assert main(["eval", str(tiny_dir), "--dataset", str(glue_dir), *HF_FLAGS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("blockprune eval: error: dataset ") and "its splits are ['train', 'validation_matched'" in err
    assert main(["eval", str(tiny_dir), "--train-file", "x.csv", "--test-split", "test"]) == 2
    assert "no dataset= was given" in capsys.readouterr().err


@pytest.mark.slow
def test_prune_end_to_end_on_a_saved_glue_config(tiny_dir, glue_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["prune", "--model", str(tiny_dir), "--dataset", str(glue_dir), *HF_FLAGS,
            "--validation-split", "validation_matched", "--test-split", "test", "--sparsity", "0.5",
            "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "16", "--learning-rate", "1e-3",
            "--teacher-learning-rate", "1e-3", "--bench-repeats", "2", "--no-progress", "--max-length", "32",
            "--ffn-multiple", "1", "--output-dir", str(out)]
    assert main(args) == 0
    assert "speedup measured" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["num_train"] == SPLIT_SIZES["train"]
    assert report["data"]["num_eval"] == SPLIT_SIZES["validation_matched"]
    assert report["data"]["num_test"] == SPLIT_SIZES["test"]
    for who in ("teacher", "final"):
        assert set(report[who]["test_metrics"]) == {"accuracy", "macro_f1", "loss"}
    final = eval_json(capsys, str(out / "model"), "--dataset", str(glue_dir), "--validation-split", "test")
    assert report["final"]["test_metrics"] == pytest.approx(final)  # the report's test score is the saved model's
    config = json.loads((out / "run_config.json").read_text())
    assert config["validation_split"] == "validation_matched" and config["test_split"] == "test"
    assert main([*args[:-1], str(out)]) == 0  # a re-run with the same options resumes (nothing differs)
    assert main([*args, "--validation-split", "test"]) == 2  # another split is another run
    assert "validation_split differ" in capsys.readouterr().err
