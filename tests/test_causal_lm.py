"""Causal-LM task: reading documents, block grouping, padding, perplexity by hand, training, one error per bad input.

The models are tiny GPT-2 and Llama configs built in code, with a 40-word WordLevel tokenizer built in code
(``tiny_lm_tokenizer``); ``tiny_lm_folder`` saves both into a folder, as the CLI tests need.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from blockprune.app.finetune import TrainSettings, train
from blockprune.tasks import CausalLMCollator, CausalLMTask, DataError, group_blocks, load_task, read_documents

WORDS = [f"w{i}" for i in range(37)]
SPECIAL = ["<pad>", "<unk>", "<eos>"]
VOCAB = len(SPECIAL) + len(WORDS)


def tiny_lm_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer over ``w0 .. w36`` with pad (0), unk (1) and eos (2) tokens."""
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>", model_max_length=128
    )


def tiny_lm_config(family: str) -> transformers.PretrainedConfig:
    """A 2-layer, hidden-32, 4-head causal LM config (Llama: 2 KV heads, gated MLP) over the tiny vocabulary."""
    common = dict(vocab_size=VOCAB, bos_token_id=2, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128, **common)
    return transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=64, max_position_embeddings=128, **common)


def tiny_lm(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(tiny_lm_config(family)).eval()


def tiny_lm_folder(path: Path, family: str, seed: int = 0) -> Path:
    """Save a seeded tiny causal LM of ``family`` and its tokenizer into ``path``."""
    tiny_lm(family, seed).save_pretrained(path)
    tiny_lm_tokenizer().save_pretrained(path)
    return path


def counting_text(lines: int, seed: int = 0, length: int = 12) -> str:
    """Lines of counting sequences ``w{k} w{k+1} ...`` (mod 37): easy to learn, so training must lower perplexity."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(WORDS), (lines,), generator=generator).tolist()
    return "".join(" ".join(WORDS[(s + j) % len(WORDS)] for j in range(length)) + "\n" for s in starts)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_lm_tokenizer()


@pytest.fixture
def text_files(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text(counting_text(40, seed=1), encoding="utf-8")
    valid = tmp_path / "valid.txt"
    valid.write_text(counting_text(8, seed=2), encoding="utf-8")
    return train, valid


# ---------------------------------------------------------------- reading


def test_txt_is_one_document_per_non_blank_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("\ufeffw1 w2\n\n   \n  w3 w4  \nw5\n", encoding="utf-8")
    assert read_documents(path) == ["w1 w2", "w3 w4", "w5"]


def test_record_files_read_the_text_column(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"body": "w1 w2", "id": 1}\n{"body": "w3", "id": 2}\n', encoding="utf-8")
    csv = tmp_path / "a.csv"
    csv.write_text("body,id\nw1 w2,1\nw3,2\n", encoding="utf-8")
    assert read_documents(jsonl, "body") == read_documents(csv, "body") == ["w1 w2", "w3"]
    task = load_task("causal-lm", train_file=jsonl, validation_file=csv, text_column="body")
    assert task.train_examples == ["w1 w2", "w3"] and task.eval_examples == ["w1 w2", "w3"]


def test_load_task_aliases_metric_direction_and_describe(text_files):
    train, valid = text_files
    task = load_task("clm", train_file=train, validation_file=valid, max_length=16)
    assert isinstance(task, CausalLMTask) and task.name == "causal-lm"
    assert task.metric_name == "perplexity" and task.higher_is_better is False
    assert task.better(10.0, 12.0) and not task.better(12.0, 10.0)
    described = task.describe()
    assert described["higher_is_better"] is False and described["max_length"] == 16
    assert (described["num_train"], described["num_eval"]) == (40, 8)
    assert task.model_class() is transformers.AutoModelForCausalLM


def test_holdout_is_seeded_by_document_and_max_samples_count_documents(text_files):
    train, _ = text_files
    a = load_task("causal-lm", train_file=train, seed=3)
    b = load_task("causal-lm", train_file=train, seed=3)
    c = load_task("causal-lm", train_file=train, seed=4)
    assert a.eval_examples == b.eval_examples and a.eval_examples != c.eval_examples
    assert a.num_train + a.num_eval == 40 and 2 <= a.num_eval <= 6
    assert not set(a.eval_examples) & set(a.train_examples)  # duplicate lines stay on one side
    small = load_task("causal-lm", train_file=train, seed=3, max_train_samples=5, max_eval_samples=2)
    assert (small.num_train, small.num_eval) == (5, 2)
    assert set(small.train_examples) <= set(a.train_examples)


# ---------------------------------------------------------------- blocks and padding


def test_group_blocks_joins_with_separator_and_handles_the_tail():
    docs = [[5, 6, 7], [8, 9], [10]]
    assert group_blocks(docs, 3, separator=2, keep_tail=True) == [[5, 6, 7], [2, 8, 9], [2, 10]]
    assert group_blocks(docs, 3, separator=2, keep_tail=False) == [[5, 6, 7], [2, 8, 9]]
    assert group_blocks(docs, 4, separator=None, keep_tail=True) == [[5, 6, 7, 8], [9, 10]]
    assert group_blocks([[5, 6, 7]], 8, separator=None, keep_tail=False) == [[5, 6, 7]]  # only block: kept
    assert group_blocks([[5, 6, 7, 8, 9]], 4, separator=None, keep_tail=True) == [[5, 6, 7, 8]]  # 1-token tail
    with pytest.raises(DataError, match="max_length=1"):
        group_blocks(docs, 1, separator=None, keep_tail=True)


def test_train_blocks_are_full_eval_keeps_every_token(tokenizer):
    task = CausalLMTask(["w1 w2 w3", "w4 w5"], ["w1 w2 w3", "w4 w5"], max_length=4)
    train = list(task.train_dataset(tokenizer))
    evaluation = list(task.eval_dataset(tokenizer))
    ids = tokenizer.convert_tokens_to_ids
    assert [f["input_ids"] for f in train] == [ids(["w1", "w2", "w3", "<eos>"])]
    assert [f["input_ids"] for f in evaluation] == [ids(["w1", "w2", "w3", "<eos>"]), ids(["w4", "w5"])]
    for feature in train + evaluation:
        assert feature["labels"] == feature["input_ids"]
        assert feature["attention_mask"] == [1] * len(feature["input_ids"])
    assert len(list(task.train_dataset(tokenizer, max_length=2))) == 3  # the pipeline's max_length wins


def test_collator_pads_inputs_masks_and_ignores_padded_labels(tokenizer):
    task = CausalLMTask(["w1"], ["w1"])
    batch = task.collate(tokenizer)([{"input_ids": [5, 6, 7], "labels": [5, 6, 7]}, {"input_ids": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]  # pad id of the tokenizer
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert CausalLMCollator(pad_id=2)([{"input_ids": [4]}, {"input_ids": [4, 4]}])["input_ids"][0, 1] == 2


def test_too_little_text_is_one_clear_error(tokenizer):
    task = CausalLMTask(["w1"], ["w1"])
    with pytest.raises(DataError, match="fewer than 2 tokens"):
        task.train_dataset(tokenizer)


# ---------------------------------------------------------------- evaluate


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_perplexity_is_exp_of_the_models_own_mean_loss(family, tokenizer):
    model = tiny_lm(family)
    task = CausalLMTask([], [counting_text(6, seed=5)], max_length=8)
    features = list(task.eval_dataset(tokenizer))
    assert all(len(f["input_ids"]) == 8 for f in features)  # 6 * 12 words + 5 separators = 77 tokens... full blocks
    metrics = task.evaluate(model, tokenizer, batch_size=3, progress=False)
    batch = task.collate(tokenizer)(features)
    with torch.no_grad():
        expected = float(model(**batch).loss)
    assert metrics["tokens"] == len(features) * 7
    assert metrics["loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)


def test_padding_does_not_change_perplexity(tokenizer):
    """A short tail block padded in a batch scores the same as when it runs alone."""
    model = tiny_lm("gpt2")
    task = CausalLMTask([], ["w1 w2 w3 w4 w5 w6 w7"], max_length=5)  # blocks of 5 and 2 tokens
    together = task.evaluate(model, tokenizer, batch_size=2, progress=False)
    alone = task.evaluate(model, tokenizer, batch_size=1, progress=False)
    assert together["tokens"] == alone["tokens"] == 4 + 1
    assert together["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-5)


def test_a_model_with_constant_logits_has_perplexity_equal_to_the_vocabulary(tokenizer):
    model = tiny_lm("llama")
    with torch.no_grad():
        model.lm_head.weight.zero_()
    task = CausalLMTask([], [counting_text(3)], max_length=16)
    assert task.evaluate(model, tokenizer, progress=False)["perplexity"] == pytest.approx(VOCAB, rel=1e-5)


def test_evaluate_restores_training_mode(tokenizer):
    model = tiny_lm("gpt2").train()
    CausalLMTask([], ["w1 w2 w3"]).evaluate(model, tokenizer, progress=False)
    assert model.training


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_training_with_distillation_lowers_perplexity(family, tmp_path, tokenizer, text_files):
    """The pipeline's train() on this task (Trainer, collator, 3-D distillation) learns the counting text."""
    train_file, valid_file = text_files
    task = load_task("causal-lm", train_file=train_file, validation_file=valid_file, max_length=32)
    model = tiny_lm(family)
    teacher = copy.deepcopy(model)
    before = task.evaluate(model, tokenizer, progress=False)["perplexity"]
    settings = TrainSettings(epochs=8, learning_rate=1e-2, batch_size=8, max_length=32, progress=False,
                             save_steps=10_000, alpha=0.5)
    train(model, task, tokenizer, tmp_path / "run", settings, teacher=teacher)
    after = task.evaluate(model, tokenizer, progress=False)["perplexity"]
    assert after < 0.5 * before, (before, after)


def test_load_processor_is_the_folders_tokenizer(tmp_path):
    folder = tiny_lm_folder(tmp_path / "lm", "gpt2")
    task = CausalLMTask(["w1 w2"], ["w1 w2"])
    loaded = task.load_processor(folder)
    assert loaded("w3 w4")["input_ids"] == tiny_lm_tokenizer()("w3 w4")["input_ids"]
    assert loaded.eos_token_id == 2


# ---------------------------------------------------------------- one clear error per bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.txt"):
        load_task("causal-lm", train_file=tmp_path / "nope.txt")
    with pytest.raises(DataError, match=r"not found: .*nope\.jsonl"):
        load_task("causal-lm", train_file=tmp_path / "nope.jsonl")


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_empty_text_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt holds no text"):
        load_task("causal-lm", train_file=path)


def test_not_utf8(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9 w1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.txt is not UTF-8"):
        load_task("causal-lm", train_file=path)


def test_unsupported_extension(tmp_path):
    path = tmp_path / "book.pdf"
    path.write_bytes(b"%PDF")
    with pytest.raises(DataError, match=r"Unsupported text file type '\.pdf'.*\.txt"):
        load_task("causal-lm", train_file=path)


def test_missing_text_column_lists_the_available_ones(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"body": "w1"}) + "\n" + json.dumps({"body": "w2"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'text' \(text_column\).*\['body'\]"):
        load_task("causal-lm", train_file=path, validation_file=path)


def test_empty_texts_name_their_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["w1", " ", "w2", None]), encoding="utf-8")
    with pytest.raises(DataError, match=r"2 row\(s\).*\[2, 4\]"):
        load_task("causal-lm", train_file=path, validation_file=path)


def test_single_document_cannot_be_held_out(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("w1 w2 w3\n", encoding="utf-8")
    with pytest.raises(DataError, match="single document.*validation_file"):
        load_task("causal-lm", train_file=path)


def test_no_data_and_stray_options(text_files):
    train, _ = text_files
    with pytest.raises(DataError, match="causal-lm has no embedded dataset"):
        load_task("causal-lm")
    with pytest.raises(DataError, match=r"\['label_column'\] do\(es\) not apply to task 'causal-lm'"):
        load_task("causal-lm", train_file=train, label_column="label")
    with pytest.raises(DataError, match="Unknown metric 'accuracy'"):
        load_task("causal-lm", train_file=train, metric="accuracy")
