"""Tiny, seeded models of every supported architecture, built in code (no downloads).

Shared by the test files: ``tiny_model("bert")`` gives a 2-layer, hidden-32, 4-head (head size 8),
FFN-64 model in eval mode; ``tiny_inputs()`` gives a padded batch for it. Keep this module small and
stable: many tests depend on the exact sizes below.

Example:
    >>> model = tiny_model("distilbert")
    >>> logits = model(**tiny_inputs()).logits
"""

from __future__ import annotations

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

MODEL_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "electra", "distilbert")

_TASKS = {
    "base": transformers.AutoModel,
    "seq-cls": transformers.AutoModelForSequenceClassification,
    "qa": transformers.AutoModelForQuestionAnswering,
    "mlm": transformers.AutoModelForMaskedLM,
}


def tiny_config(model_type: str, **overrides: object) -> transformers.PretrainedConfig:
    """Return the tiny config of ``model_type``; ``overrides`` replace any field."""
    if model_type == "distilbert":
        fields: dict[str, object] = dict(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN)
    else:
        fields = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN)
        if model_type == "electra":
            fields["embedding_size"] = HIDDEN
    fields.update(vocab_size=VOCAB, max_position_embeddings=MAX_POSITIONS, num_labels=NUM_LABELS)
    fields.update(overrides)
    return transformers.AutoConfig.for_model(model_type, **fields)


def tiny_model(model_type: str, task: str = "seq-cls", seed: int = 0, attn_implementation: str = "sdpa",
               **overrides: object) -> nn.Module:
    """Build a seeded tiny model of ``model_type`` for ``task`` ("base", "seq-cls", "qa", "mlm"), in eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    model = _TASKS[task].from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def tiny_inputs(batch: int = 2, seq_len: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded batch of token ids with an attention mask; the last row is padded after half its length."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, VOCAB, (batch, seq_len), generator=generator)
    attention_mask = torch.ones(batch, seq_len, dtype=torch.long)
    attention_mask[-1, seq_len // 2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}
