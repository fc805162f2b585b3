"""Tiny, seeded models of every supported architecture, built in code (no downloads).

Shared by the test files: ``tiny_model("bert")`` gives a 2-layer, hidden-32, 4-head (head size 8),
FFN-64 model in eval mode; ``tiny_inputs()`` gives a padded batch for it. Keep this module small and
stable: many tests depend on the exact sizes below.

Every family of the architecture table has a tiny config here (``FAMILY_TYPES``): encoder-decoders have
2 encoder and 2 decoder layers, Llama-like decoders 2 key/value heads (2 query heads each), ViT takes
16x16 images in 8x8 patches. ``tiny_batch(model_type, task)`` gives inputs with labels for any of them.

Example:
    >>> model = tiny_model("distilbert")
    >>> logits = model(**tiny_inputs()).logits
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from torch import nn

HIDDEN = 32
LAYERS = 2
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
FFN = 64
VOCAB = 100
MAX_POSITIONS = 64
NUM_LABELS = 2

KV_HEADS = 2
IMAGE_SIZE = 16

MODEL_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")
"""The BERT-like encoders (same linear sizes, same tasks)."""
FAMILY_TYPES: tuple[str, ...] = (*MODEL_TYPES, "mpnet", "deberta-v2", "vit", "bart", "t5", "gpt2", "llama",
                                 "mistral", "qwen2")
"""Every model type of the architecture table."""

_TASKS = {
    "base": transformers.AutoModel,
    "seq-cls": transformers.AutoModelForSequenceClassification,
    "qa": transformers.AutoModelForQuestionAnswering,
    "mlm": transformers.AutoModelForMaskedLM,
    "causal-lm": transformers.AutoModelForCausalLM,
    "seq2seq": transformers.AutoModelForSeq2SeqLM,
    "image-cls": transformers.AutoModelForImageClassification,
}

_BERT_FIELDS = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN)
_TEXT = dict(vocab_size=VOCAB, max_position_embeddings=MAX_POSITIONS)
_TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_LLAMA_FIELDS = dict(_BERT_FIELDS, num_key_value_heads=KV_HEADS, head_dim=HIDDEN // HEADS, **_TEXT, **_TOKENS)
_FIELDS: dict[str, dict[str, object]] = {
    "distilbert": dict(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN, **_TEXT),
    "electra": dict(_BERT_FIELDS, embedding_size=HIDDEN, **_TEXT),
    "deberta-v2": dict(_BERT_FIELDS, relative_attention=True, pos_att_type=["c2p", "p2c"], position_buckets=8,
                       share_att_key=False, **_TEXT),
    "vit": dict(_BERT_FIELDS, image_size=IMAGE_SIZE, patch_size=8, num_channels=3),
    "bart": dict(d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS, encoder_attention_heads=HEADS,
                 decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN, decoder_start_token_id=2,
                 forced_eos_token_id=None, **_TEXT, **_TOKENS),
    "t5": dict(d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS, num_decoder_layers=LAYERS,
               num_heads=HEADS, relative_attention_num_buckets=8, vocab_size=VOCAB, decoder_start_token_id=0,
               pad_token_id=0, eos_token_id=1),
    "gpt2": dict(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN, vocab_size=VOCAB,
                 n_positions=MAX_POSITIONS, bos_token_id=1, eos_token_id=2),
    "llama": _LLAMA_FIELDS,
    "mistral": _LLAMA_FIELDS,
    "qwen2": _LLAMA_FIELDS,
}

DEFAULT_TASK: dict[str, str] = {"vit": "image-cls", "bart": "seq2seq", "t5": "seq2seq", "gpt2": "causal-lm",
                                "llama": "causal-lm", "mistral": "causal-lm", "qwen2": "causal-lm"}
"""The task the family tests use (default ``seq-cls``)."""


def tiny_config(model_type: str, **overrides: object) -> transformers.PretrainedConfig:
    """Return the tiny config of ``model_type``; ``overrides`` replace any field."""
    fields = dict(_FIELDS.get(model_type, dict(_BERT_FIELDS, **_TEXT)))
    fields.update(num_labels=NUM_LABELS)
    fields.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **fields)


def tiny_model(model_type: str, task: str = "seq-cls", seed: int = 0, attn_implementation: str = "sdpa",
               **overrides: object) -> nn.Module:
    """Build a seeded tiny model of ``model_type`` for ``task`` (a key of ``_TASKS``), in eval mode.

    Families without an SDPA implementation (MPNet, DeBERTa-v2) are built with eager attention.
    """
    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    try:
        model = _TASKS[task].from_config(config, attn_implementation=attn_implementation)
    except ValueError:
        if attn_implementation != "sdpa":
            raise
        torch.manual_seed(seed)
        model = _TASKS[task].from_config(config, attn_implementation="eager")
    return model.eval()


def tiny_inputs(batch: int = 2, seq_len: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded batch of token ids with an attention mask; the last row is padded after half its length."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, seq_len), generator=generator)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
    attention_mask[-1, seq_len // 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def tiny_batch(model_type: str, task: str | None = None, batch: int = 4, seq_len: int = 8,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded batch with labels for ``model_type`` on ``task`` (default: its ``DEFAULT_TASK``).

    Text: ``tiny_inputs`` plus class labels (``seq-cls``), the ids themselves (``causal-lm``; padding
    ignored) or, for ``seq2seq``, the ids as decoder inputs and shifted ids as targets. Images: random
    pixels and class labels.
    """
    task = task or DEFAULT_TASK.get(model_type, "seq-cls")
    generator = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, NUM_LABELS, (batch,), generator=generator)
    if task == "image-cls":
        pixels = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        return {"pixel_values": pixels, "labels": labels}
    inputs = tiny_inputs(batch, seq_len, seed)
    if task == "causal-lm":
        return {**inputs, "labels": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)}
    if task == "seq2seq":
        targets = torch.roll(inputs["input_ids"], 1, dims=1)
        return {**inputs, "decoder_input_ids": inputs["input_ids"], "labels": targets}
    return {**inputs, "labels": labels}


def prune_at_random(model: nn.Module, preset: str = "struct", sparsity: float = 0.5, seed: int = 0) -> nn.Module:
    """Patch ``model`` with a preset, give it seeded random scores, jump to the end of the schedule, finalize.

    The model keeps its full shapes with zeros where the random masks pruned (ready for ``shrink``).
    """
    from blockprune import Pruner, PruningConfig

    pruner = Pruner(model, PruningConfig.preset(preset, sparsity=sparsity))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for group in pruner.groups:
            group.scores.copy_(torch.randn(group.scores.shape, generator=generator))
    pruner.step(10, 10)
    return pruner.finalize()


def save_tiny_bert(path: Path) -> Path:
    """A tiny randomly initialised BERT classifier (seed 0) saved with the embedded MiniLM tokenizer into ``path``."""
    from blockprune.tasks import embedded_model_path

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                     intermediate_size=FFN, vocab_size=30522, max_position_embeddings=128)
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(embedded_model_path()).save_pretrained(path)
    return path


def write_review_csvs(folder: Path, sizes: dict[str, int], positive: list[str], negative: list[str],
                      seed: int = 0) -> Path:
    """CSV files ``{name: rows}`` of 5-word reviews (columns ``review``, ``sentiment`` = pos/neg) drawn from the
    two word lists with one seeded generator, in the order of ``sizes``."""
    import csv
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in sizes.items():
        with open(folder / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["review", "sentiment"])
            for _ in range(rows):
                label = rng.random() < 0.5
                writer.writerow([" ".join(rng.choices(positive if label else negative, k=5)), "pos" if label else "neg"])
    return folder
