"""Extractive QA: SQuAD parsing, windowed features, span post-processing, SQuAD metrics, evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import tiny_model
from transformers import AutoTokenizer

from blockprune.tasks import (
    DataError,
    QATask,
    answer_tokens,
    embedded_model_path,
    exact_match,
    f1,
    load_task,
    normalize_answer,
    postprocess,
    qa_features,
    read_squad,
    squad_scores,
)

FILLER = " ".join(f"Sentence {i} talks about nothing in particular and fills the page." for i in range(30))
LONG_CONTEXT = f"The river Ouse flows through York. {FILLER} The castle was built in 1068 by William. {FILLER}"
SQUAD = {
    "version": "1.1",
    "data": [
        {
            "title": "Paris",
            "paragraphs": [
                {
                    "context": "Paris is the capital of France. The Eiffel Tower was finished in 1889.",
                    "qas": [
                        {
                            "id": "q1",
                            "question": "What is the capital of France?",
                            "answers": [{"text": "Paris", "answer_start": 0}],
                        },
                        {
                            "id": "q2",
                            "question": "When was the Eiffel Tower finished?",
                            "answers": [{"text": "1889", "answer_start": 65}, {"text": "in 1889", "answer_start": 62}],
                        },
                    ],
                }
            ],
        },
        {
            "title": "York",
            "paragraphs": [
                {
                    "context": LONG_CONTEXT,
                    "qas": [
                        {
                            "id": "q3",
                            "question": "Which river flows through York?",
                            "answers": [{"text": "Ouse", "answer_start": LONG_CONTEXT.index("Ouse")}],
                        },
                        {
                            "id": "q4",
                            "question": "Who built the castle?",
                            "answers": [{"text": "William", "answer_start": LONG_CONTEXT.index("William")}],
                        },
                    ],
                }
            ],
        },
    ],
}
MAX_LENGTH, STRIDE = 64, 16


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_path())


@pytest.fixture
def squad_file(tmp_path: Path) -> Path:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(SQUAD), encoding="utf-8")
    return path


@pytest.fixture
def examples(squad_file):
    return read_squad(squad_file)


# ---------------------------------------------------------------- parsing


def test_read_nested_squad(examples):
    assert [e.id for e in examples] == ["q1", "q2", "q3", "q4"]
    assert examples[1].answers == ("1889", "in 1889") and examples[1].answer_starts == (65, 62)
    assert examples[3].context == LONG_CONTEXT


def test_flat_jsonl_and_answer_start_correction(tmp_path):
    context = "Alpha beta gamma. Delta epsilon."
    rows = [
        {"id": "a", "question": "Which?", "context": context, "answers": {"text": ["Delta"], "answer_start": [3]}},
        {"id": "b", "question": "Which?", "context": context, "answers": [{"text": "beta", "answer_start": 6}]},
    ]
    path = tmp_path / "flat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    parsed = read_squad(path)
    assert parsed[0].answer_starts == (context.index("Delta"),)  # off start moved to the real occurrence
    assert parsed[1].answers == ("beta",) and parsed[1].answer_starts == (6,)


@pytest.mark.parametrize(
    ("qa", "message"),
    [
        ({"id": "x", "question": "Q?", "answers": [{"text": "zebra", "answer_start": 0}]}, "'zebra' does not occur"),
        ({"id": "x", "question": "Q?", "answers": []}, "no \\(or an empty\\) answer.*SQuAD v1"),
        ({"id": "x", "question": " ", "answers": [{"text": "Paris", "answer_start": 0}]}, "empty question"),
    ],
)
def test_bad_questions_are_named(tmp_path, qa, message):
    data = {"data": [{"title": "t", "paragraphs": [{"context": "Paris is nice.", "qas": [qa]}]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"bad\\.json: question id 'x'.*{message}"):
        read_squad(path)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_squad(tmp_path / "missing.json")
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_squad(tmp_path / "empty.json")
    (tmp_path / "other.json").write_text(json.dumps([{"text": "hi", "label": 1}]))
    with pytest.raises(DataError, match=r"not SQuAD v1 data: no field \['question', 'context', 'answers'\]"):
        read_squad(tmp_path / "other.json")


# ---------------------------------------------------------------- features


def test_training_positions_map_back_to_the_answer_text(examples, tokenizer):
    train = qa_features(examples, tokenizer, MAX_LENGTH, STRIDE, train=True)
    evaluation = qa_features(examples, tokenizer, MAX_LENGTH, STRIDE, train=False)
    assert len(train) == len(evaluation)  # same windows in both modes
    windows = [sum(f["example_index"] == i for f in train) for i in range(len(examples))]
    assert windows[0] == windows[1] == 1 and windows[2] >= 3 and windows[3] >= 3
    found = set()
    for feature, offsets_feature in zip(train, evaluation, strict=True):
        assert len(feature["input_ids"]) <= MAX_LENGTH and "labels" not in feature
        example = examples[feature["example_index"]]
        start, end = feature["start_positions"], feature["end_positions"]
        if start == 0:  # answer outside this window: both point at CLS
            assert end == 0 and feature["input_ids"][0] == tokenizer.cls_token_id
            continue
        offsets = offsets_feature["offset_mapping"]
        assert example.context[offsets[start][0] : offsets[end][1]] == example.answers[0]
        found.add(feature["example_index"])
    assert found == {0, 1, 2, 3}
    assert any(f["start_positions"] == 0 for f in train)  # the long context has windows without the answer


def test_windows_overlap_by_the_stride(examples, tokenizer):
    evaluation = qa_features(examples[3:], tokenizer, MAX_LENGTH, STRIDE, train=False)
    spans = [[o for o in f["offset_mapping"] if o is not None] for f in evaluation]
    for previous, current in zip(spans, spans[1:], strict=False):
        assert previous[-STRIDE:] == current[:STRIDE]
    assert spans[0][0][0] == 0 and spans[-1][-1][1] == len(LONG_CONTEXT.rstrip())
    assert all(f["example_id"] == "q4" for f in evaluation)


def test_answer_tokens_outside_window_is_cls():
    offsets = [None, (10, 15), (16, 20), None]
    assert answer_tokens(offsets, 12, 6, cls_index=0) == (1, 2)  # starts and ends inside tokens
    assert answer_tokens(offsets, 5, 3, cls_index=0) == (0, 0)
    assert answer_tokens(offsets, 16, 10, cls_index=0) == (0, 0)


def test_slow_tokenizer_and_bad_windows_are_refused(examples, tokenizer):
    class Slow:
        is_fast = False

    with pytest.raises(DataError, match="fast tokenizer"):
        qa_features(examples, Slow(), 64, 16, train=True)
    with pytest.raises(DataError, match="doc_stride=64 must be"):
        qa_features(examples, tokenizer, 64, 64, train=True)
    with pytest.raises(DataError, match="larger max_length"):
        qa_features(examples, tokenizer, 12, 4, train=True)


# ---------------------------------------------------------------- post-processing


def hand_logits(features, targets: dict[int, tuple[int, int, float]]):
    """Logits of -10 everywhere (plus 2 padding positions), with peaks at (start, end) for chosen features."""
    starts, ends = [], []
    for i, feature in enumerate(features):
        s = torch.full((len(feature["input_ids"]) + 2,), -10.0)
        e = s.clone()
        if i in targets:
            start, end, height = targets[i]
            s[start], e[end] = height, height
        starts.append(s)
        ends.append(e)
    return starts, ends


def gold_span(example, feature) -> tuple[int, int]:
    return answer_tokens(feature["offset_mapping"], example.answer_starts[0], len(example.answers[0]), 0)


def test_postprocess_recovers_gold_answers_across_windows(examples, tokenizer):
    features = qa_features(examples, tokenizer, MAX_LENGTH, STRIDE, train=False)
    targets = {}
    for i, feature in enumerate(features):
        start, end = gold_span(examples[feature["example_index"]], feature)
        if start:  # the window holds the answer: a strong peak there
            targets.setdefault(feature["example_index"], (i, start, end))
    peaks = {i: (s, e, 10.0) for i, s, e in targets.values()}
    for i, feature in enumerate(features):  # weaker wrong peaks in every other window of the long example
        context = [j for j, o in enumerate(feature["offset_mapping"]) if o is not None]
        if i not in peaks and feature["example_index"] == 3:
            peaks[i] = (context[0], context[1], 5.0)
    predictions = postprocess(examples, features, *hand_logits(features, peaks))
    assert predictions == ["Paris", "1889", "Ouse", "William"]
    assert squad_scores(predictions, [e.answers for e in examples]) == {"exact_match": 1.0, "f1": 1.0}


def test_postprocess_skips_invalid_spans(examples, tokenizer):
    features = qa_features(examples[:1], tokenizer, MAX_LENGTH, STRIDE, train=False)
    offsets = features[0]["offset_mapping"]
    context = [j for j, o in enumerate(offsets) if o is not None]
    start, end = gold_span(examples[0], features[0])
    starts, ends = hand_logits(features, {0: (start, end, 5.0)})
    assert (start, end) == (context[0], context[0])
    starts[0][1], ends[0][1] = 50.0, 50.0  # question token: not in the context
    starts[0][context[3]], ends[0][context[0]] = 40.0, 40.0  # end before start (would win with 80)
    assert postprocess(examples[:1], features, starts, ends) == ["Paris"]
    starts, ends = hand_logits(features, {0: (context[0], context[4], 9.0)})  # a 5-token span...
    ends[0][context[0]] = 1.0  # ...and a weaker 1-token one
    assert postprocess(examples[:1], features, starts, ends, max_answer_length=4) == ["Paris"]
    text = postprocess(examples[:1], features, starts, ends, max_answer_length=5)[0]
    assert text == examples[0].context[offsets[context[0]][0] : offsets[context[4]][1]] != "Paris"


# ---------------------------------------------------------------- metrics


def test_normalization_and_exact_match():
    assert normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert exact_match("the Ouse.", ["River Ouse", "Ouse"]) == 1.0
    assert exact_match("Ouse river", ["River Ouse"]) == 0.0


def test_partial_overlap_f1_by_hand():
    # prediction tokens {quick, brown, fox}, gold {quick, red, fox, jumps}: 2 common, P=2/3, R=1/2 -> F1=4/7
    assert f1("the quick brown fox", ["quick red fox jumps"]) == pytest.approx(4 / 7)
    assert f1("the quick brown fox", ["quick red fox jumps", "brown fox"]) == pytest.approx(0.8)  # max over golds
    assert f1("", ["anything"]) == 0.0
    scores = squad_scores(["the quick brown fox", "Paris"], [["quick red fox jumps"], ["paris"]])
    assert scores["f1"] == pytest.approx((4 / 7 + 1) / 2) and scores["exact_match"] == 0.5


# ---------------------------------------------------------------- the task


def test_load_task_qa_from_files(squad_file):
    task = load_task("qa", train_file=squad_file, validation_file=squad_file, max_length=MAX_LENGTH, doc_stride=STRIDE)
    assert isinstance(task, QATask)
    assert (task.name, task.metric_name, task.num_train, task.num_eval) == ("question-answering", "f1", 4, 4)
    assert task.model_class().__name__ == "AutoModelForQuestionAnswering"
    held = load_task("question-answering", train_file=squad_file, seed=0)
    assert held.num_train + held.num_eval == 4 and held.num_eval in (1, 2)
    assert not {e.context for e in held.train_examples} & {e.context for e in held.eval_examples}


def test_evaluate_matches_postprocessing_of_the_models_own_logits(squad_file, tokenizer):
    model = tiny_model("bert", "qa", vocab_size=tokenizer.vocab_size, max_position_embeddings=512)
    task = load_task("qa", train_file=squad_file, validation_file=squad_file, max_length=MAX_LENGTH, doc_stride=STRIDE)
    metrics = task.evaluate(model, tokenizer, batch_size=3, progress=False)
    features = task.eval_dataset(tokenizer)
    starts, ends = [], []
    with torch.no_grad():
        for feature in features:  # one window at a time, unpadded
            inputs = {k: torch.tensor([feature[k]]) for k in tokenizer.model_input_names}
            out = model(**inputs)
            starts.append(out.start_logits[0])
            ends.append(out.end_logits[0])
    predictions = postprocess(task.eval_examples, features, starts, ends)
    expected = squad_scores(predictions, [e.answers for e in task.eval_examples])
    assert set(metrics) == {"f1", "exact_match"}
    assert metrics["f1"] == pytest.approx(expected["f1"]) and 0.0 <= metrics["f1"] <= 1.0
    assert metrics["exact_match"] == pytest.approx(expected["exact_match"])
    assert task.predict(model, tokenizer, progress=False) == predictions
    train = task.train_dataset(tokenizer)
    batch = task.collate(tokenizer)([train[0], train[1]])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    loss = model(**batch).loss
    assert torch.isfinite(loss)
