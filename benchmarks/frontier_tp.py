"""The torch-pruning peer: the maintained structural-pruning library run the way its own BERT example runs it.

``torch_pruning`` (1.6.1, in the ``dev`` extra; it needs only torch and numpy) traces the
reference's dependency graph, scores channel groups with its Taylor importance (|w · ∂L/∂w| summed over the
group, gradients of the task loss on ``TAYLOR_BATCHES`` training batches), and removes **whole heads** and **FFN
neurons** with a **global** ranking (``global_pruning=True``: layers end up uneven). The hidden size (the residual
stream) is left alone, as in blockprune's ``struct``, unless a point cuts it (``hidden_sparsity``: :func:`cut_hidden`). The totals removed are those ``struct`` reaches at the same
target: heads ``attention_sparsity`` of all heads, neurons ``sparsity`` of all neurons (torch-pruning's global
ratio lands within ~1% of the neuron total: 4,558 kept instead of 4,608 at 2x), so the theoretical speedup is the
same to about 1% (2.02 vs 2.00 measured by the frontier's FLOPs count at 2x). The pruned model is then distilled from the reference with the same budget as every other run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockprune.engine.taylor import TAYLOR_BATCHES  # the peer ranks on as many batches as struct's Taylor start


def _heads(model: nn.Module) -> dict[nn.Module, int]:
    """Query, key and value linears of every self-attention, mapped to its head count (torch-pruning's input)."""
    counts = {}
    for layer in model.base_model.encoder.layer:
        attention = layer.attention.self
        for linear in (attention.query, attention.key, attention.value):
            counts[linear] = attention.num_attention_heads
    return counts


def _ignored(model: nn.Module) -> list[nn.Module]:
    """Modules whose output channels stay: the residual stream (embeddings, attention output, FFN output),
    the pooler and the classifier; what is left to prune is heads (Q/K/V rows) and FFN neurons (up rows)."""
    ignored = [model.base_model.embeddings, model.classifier]
    if getattr(model.base_model, "pooler", None) is not None:
        ignored.append(model.base_model.pooler)
    for layer in model.base_model.encoder.layer:
        ignored += [layer.attention.output, layer.output]
    return ignored


def accumulate_task_gradients(model: nn.Module, task: Any, tokenizer: Any, batches: int, seed: int) -> None:
    """Sum the gradients of the task loss (labels) over ``batches`` shuffled training batches of 32."""
    loader = torch.utils.data.DataLoader(task.train_dataset(tokenizer), batch_size=32, shuffle=True,
                                         collate_fn=task.collate(tokenizer),
                                         generator=torch.Generator().manual_seed(seed))
    model.train()
    model.zero_grad()
    for index, batch in enumerate(loader):
        if index == batches:
            break
        model(**batch).loss.backward()


def prune_like_struct(model: nn.Module, tokenizer: Any, task: Any, head_ratio: float, ffn_ratio: float,
                      seed: int) -> dict[str, Any]:
    """Remove ``head_ratio`` of all heads and ``ffn_ratio`` of all FFN neurons, ranked globally by Taylor
    importance; returns the per-layer shapes kept."""
    import torch_pruning as tp

    heads = _heads(model)
    example = dict(tokenizer(["a sample sentence for tracing"], return_tensors="pt"))
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupTaylorImportance(), global_pruning=True,
        pruning_ratio=ffn_ratio, num_heads=heads, prune_num_heads=True, prune_head_dims=False,
        head_pruning_ratio=head_ratio, ignored_layers=_ignored(model),
        output_transform=lambda out: out.logits.sum())
    accumulate_task_gradients(model, task, tokenizer, TAYLOR_BATCHES, seed)
    pruner.step()
    model.zero_grad(set_to_none=True)
    for layer in model.base_model.encoder.layer:
        attention = layer.attention.self
        attention.num_attention_heads = pruner.num_heads[attention.query]
        attention.all_head_size = attention.query.out_features
    shapes = [{"heads": layer.attention.self.num_attention_heads, "ffn": layer.intermediate.dense.out_features}
              for layer in model.base_model.encoder.layer]
    return {"shapes": shapes}


def cut_hidden(model: nn.Module, tokenizer: Any, task: Any, sparsity: float, seed: int) -> int:
    """torch-pruning's own residual cut: the one channel group that spans the embeddings, every LayerNorm, the
    input columns of Q/K/V, FFN-up and the pooler and the output rows of attention-output and FFN-down, ranked by
    its Taylor importance (task-loss gradients on ``TAYLOR_BATCHES`` batches), ``sparsity`` of it removed; heads,
    neurons and the pooler's output stay. LayerNorms are sliced, not re-normalised: the distillation after it
    is what adapts the model (blockprune's own cut trains with a masked LayerNorm instead). Returns the width."""
    import torch_pruning as tp

    example = dict(tokenizer(["a sample sentence for tracing"], return_tensors="pt"))
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupTaylorImportance(), global_pruning=False, pruning_ratio=0.0,
        pruning_ratio_dict={model.base_model.embeddings.word_embeddings: sparsity}, num_heads=_heads(model),
        prune_num_heads=False, prune_head_dims=False, ignored_layers=[model.classifier],
        output_transform=lambda out: out.logits.sum())
    accumulate_task_gradients(model, task, tokenizer, TAYLOR_BATCHES, seed)
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.base_model.embeddings.word_embeddings.embedding_dim


def torch_pruning_baseline(folder: Path, teacher_dir: Path, tokenizer: Any, dev: Any, test: Any, target: float,
                           epochs: float, seed: int, settings: dict[str, Any] | None = None,
                           sparsity: float | None = None) -> dict[str, Any]:
    """torch-pruning (Taylor, global, heads + neurons) to ``struct``'s totals at ``target`` (or, given ``sparsity``,
    at that FFN sparsity and the ``attention_sparsity`` of ``settings``: a pinned measured plan), then distilled.

    ``settings``: the point's pinned struct fields (frontier_spec.STRUCT), so its totals are the declared recipe's;
    with ``hidden_sparsity`` the residual is cut first (:func:`cut_hidden`, to the planner's width) and the heads
    and neurons are then removed to the totals the planner gives at that width."""
    import frontier_methods as fm

    from blockprune.app.options import RunOptions, pruning_config

    done = fm.read_done(folder)
    if done is not None:
        return done
    config = pruning_config(RunOptions(preset="struct", target_speedup=None if sparsity is not None else target,
                                       sparsity=sparsity, pruning=dict(settings or {})), str(teacher_dir))
    head_ratio = config.sparsity if config.attention_sparsity is None else config.attention_sparsity
    student = fm.load_classifier(teacher_dir)
    torch.manual_seed(seed)
    width = cut_hidden(student, tokenizer, dev, config.hidden_sparsity, seed) if config.hidden_sparsity else None
    pruned = prune_like_struct(student, tokenizer, dev, head_ratio, config.sparsity, seed) | {"hidden": width}
    result = fm.distil(student, teacher_dir, folder, tokenizer, dev, test, epochs, seed, shrunk=True)
    return fm.write_done(folder, pruned | {"head_ratio": head_ratio, "ffn_ratio": config.sparsity} | result)
