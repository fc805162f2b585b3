"""The figures of a run report: where the weights went, what shrink kept, and the speed/accuracy trade-off.

Density maps read the finalized (masked, not yet shrunk) weights straight from ``model.safetensors``: the
architecture table gives the dotted path of every pruned matrix inside one block, matched as a key suffix,
so no model class is built. Each matrix is cut into the pruning blocks of the run's config and every block
is shown as the fraction of its weights that are still non-zero.

Every figure function returns PNG bytes instead of writing a file, so the report can compute all of them
before it writes anything. Figures use matplotlib's Agg canvas directly (no pyplot, no global backend).

Example:
    >>> maps = load_density_maps("run/prune/model", attention_block="head", ffn_block=[1, -1])  # doctest: +SKIP
    >>> png = density_figure(maps)                                                             # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from blockprune.surgery.arch import ArchSpec, UnsupportedModelError, get_arch

MAX_CELLS = 64
"""A density map shows at most this many cells per side; larger block grids are averaged down to it."""

_DPI = 100


class DensityMapError(ValueError):
    """The density maps cannot be drawn from a run folder; the message names the file or setting."""


@dataclass(frozen=True)
class MatrixDensity:
    """Block densities of one pruned matrix.

    Attributes:
        layer: index of the transformer block.
        name: short label ("Q", "K", "V", "O", "up", "gate", "down").
        grid: fraction of non-zero weights per block, ``[row_blocks, col_blocks]`` of the ``[out, in]`` matrix.
        density: fraction of non-zero weights in the whole matrix.
        unit: what one block is ("head", "neuron" or "block"), for labels.
    """

    layer: int
    name: str
    grid: np.ndarray
    density: float
    unit: str


def block_density(weight: torch.Tensor | np.ndarray, block: Sequence[int]) -> np.ndarray:
    """Fraction of non-zero entries in each ``(rows, cols)`` block of a 2-D ``weight`` (-1 = full extent).

    Example:
        >>> w = torch.ones(4, 4); w[:2] = 0
        >>> block_density(w, (2, -1)).tolist()
        [[0.0], [1.0]]

    Raises:
        DensityMapError: the block does not tile the matrix.
    """
    nonzero = torch.as_tensor(weight) != 0
    out, inp = nonzero.shape
    rows = out if block[0] == -1 else int(block[0])
    cols = inp if block[1] == -1 else int(block[1])
    if rows <= 0 or cols <= 0 or out % rows or inp % cols:
        raise DensityMapError(f"block {tuple(block)} does not tile a matrix of shape {(out, inp)} (out x in)")
    blocks = nonzero.reshape(out // rows, rows, inp // cols, cols).double().mean(dim=(1, 3))
    return blocks.numpy()


def _block_for(role: str, setting: object, head_dim: int | None) -> tuple[tuple[int, int], str]:
    """Block shape and unit name used for a matrix of ``role`` ("qkv", "o", "up", "down")."""
    if setting == "head":
        if head_dim is None:
            raise DensityMapError("attention_block is 'head' but the number of heads is unknown (config.json)")
        return ((-1, head_dim) if role == "o" else (head_dim, -1)), "head"
    if not (isinstance(setting, Sequence) and len(setting) == 2 and all(isinstance(v, int) for v in setting)):
        raise DensityMapError(f"block setting {setting!r} in report.json is neither 'head' nor [rows, cols]")
    block = (int(setting[0]), int(setting[1]))
    if block == (1, -1) and role in ("up", "down"):
        return ((-1, 1) if role == "down" else (1, -1)), "neuron"
    return block, "block"


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise DensityMapError(f"no *.safetensors weights in {model_dir} (the pruned model is saved there by prune)")
    return files


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DensityMapError(f"cannot read {path}: {err}") from None


def _index_keys(files: list[Path], spec: ArchSpec) -> dict[tuple[int, str], tuple[Path, str]]:
    """Map (layer, dotted path inside the block) -> (file, key) for every ``*.weight`` under the layer list."""
    pattern = re.compile(rf"(?:^|\.){re.escape(spec.layers)}\.(\d+)\.(.+)\.weight$")
    from safetensors import safe_open

    found: dict[tuple[int, str], tuple[Path, str]] = {}
    for file in files:
        with safe_open(os.fspath(file), framework="pt") as handle:
            for key in handle.keys():
                match = pattern.search(key)
                if match:
                    found[(int(match.group(1)), match.group(2))] = (file, key)
    return found


def _matrices(spec: ArchSpec) -> list[tuple[str, str, str]]:
    """(label, dotted path, role) of every prunable matrix of one block, in display order."""
    many = len(spec.attention) > 1
    out: list[tuple[str, str, str]] = []
    for i, attn in enumerate(spec.attention):
        tag = str(i + 1) if many else ""
        out += [(f"Q{tag}", attn.q, "qkv"), (f"K{tag}", attn.k, "qkv"), (f"V{tag}", attn.v, "qkv"),
                (f"O{tag}", attn.o, "o")]
    out.append(("up", spec.ffn.up, "up"))
    if spec.ffn.gate:
        out.append(("gate", spec.ffn.gate, "up"))
    out.append(("down", spec.ffn.down, "down"))
    return out


def _num_heads(config: dict, spec: ArchSpec, heads_total: Sequence[int] | None, layer: int) -> int | None:
    if heads_total is not None and layer < len(heads_total) and heads_total[layer]:
        return int(heads_total[layer])
    for key in (spec.attention[0].heads_attr, "num_attention_heads", "n_heads", "n_head"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return int(config[key])
    return None


def load_density_maps(model_dir: str | os.PathLike[str], attention_block: object, ffn_block: object,
                      heads_total: Sequence[int] | None = None) -> list[MatrixDensity]:
    """Block densities of every prunable matrix of the masked model saved in ``model_dir``.

    Args:
        model_dir: folder with ``config.json`` and ``*.safetensors`` (full shapes, zeros where pruned).
        attention_block: the run's ``attention_block`` ("head" or ``[rows, cols]``).
        ffn_block: the run's ``ffn_block`` (``[1, -1]`` means FFN neurons: up rows, down columns).
        heads_total: heads per layer before pruning (report.json); else read from config.json.

    Returns:
        One :class:`MatrixDensity` per (layer, matrix), layer by layer.

    Example:
        >>> maps = load_density_maps("run/prune/model", "head", [1, -1])   # doctest: +SKIP
        >>> maps[0].name, maps[0].grid.shape                                # doctest: +SKIP
        ('Q', (12, 1))

    Raises:
        DensityMapError: no weights or config, unsupported model type, or blocks that do not tile.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    try:
        spec = get_arch(str(config.get("model_type", "")))
    except UnsupportedModelError as err:
        raise DensityMapError(str(err)) from None
    index = _index_keys(_weight_files(model_dir), spec)
    layers = sorted({layer for layer, _ in index})
    maps: list[MatrixDensity] = []
    for layer in layers:
        heads = _num_heads(config, spec, heads_total, layer)
        for label, path, role in _matrices(spec):
            if (layer, path) not in index:
                continue
            file, key = index[(layer, path)]
            with safe_open(os.fspath(file), framework="pt") as handle:
                weight = handle.get_tensor(key)
            size = weight.shape[0] if role == "qkv" else weight.shape[1]
            head_dim = size // heads if heads and size % heads == 0 else None
            setting = attention_block if role in ("qkv", "o") else ffn_block
            block, unit = _block_for(role, setting, head_dim)
            grid = block_density(weight, block)
            maps.append(MatrixDensity(layer, label, grid, int((weight != 0).sum()) / weight.numel(), unit))
    if not maps:
        raise DensityMapError(f"no matrix under '*{spec.layers}.<i>.' found in the weights of {model_dir}")
    return maps


# ----------------------------------------------------------------------------------------------- drawing
def _figure(width: float, height: float):  # noqa: ANN202 - matplotlib types stay internal
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:  # noqa: ANN001
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def _pool(grid: np.ndarray, max_cells: int = MAX_CELLS) -> np.ndarray:
    """Average a grid down to at most ``max_cells`` per side (groups as even as possible)."""
    for axis in (0, 1):
        n = grid.shape[axis]
        if n > max_cells:
            parts = np.array_split(np.arange(n), max_cells)
            starts = np.array([part[0] for part in parts])
            counts = np.array([len(part) for part in parts], dtype=np.float64)
            sums = np.add.reduceat(grid, starts, axis=axis)
            grid = sums / (counts[:, None] if axis == 0 else counts[None, :])
    return grid


def _display_grid(item: MatrixDensity) -> np.ndarray:
    """Grid as drawn: one-column grids (heads of Q/K/V, neurons of up) turn into left-to-right strips."""
    grid = item.grid.T if item.grid.shape[1] == 1 and item.grid.shape[0] > 1 else item.grid
    return _pool(grid)


def density_figure(maps: Sequence[MatrixDensity], caption: str = "") -> bytes:
    """A layers x matrices grid of block-density heatmaps with one shared colorbar (PNG bytes).

    Example:
        >>> png = density_figure(load_density_maps("run/prune/model", "head", [1, -1]))  # doctest: +SKIP
    """
    layers = sorted({m.layer for m in maps})
    names = list(dict.fromkeys(m.name for m in maps))
    by_key = {(m.layer, m.name): m for m in maps}
    fig = _figure(1.6 * len(names) + 1.3, 1.1 * len(layers) + 1.3)
    axes = fig.subplots(len(layers), len(names), squeeze=False)
    image = None
    for r, layer in enumerate(layers):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            item = by_key.get((layer, name))
            if item is None:
                ax.set_axis_off()
                continue
            grid = _display_grid(item)
            image = ax.imshow(grid, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
            ax.set_title(f"{name}: {item.density:.0%} kept", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    if image is not None:
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=min(1.0, 3.0 / max(len(layers), 1)) ** 0.3)
        bar.set_label("fraction of weights kept per block")
    fig.suptitle("Kept weights per block, before shrink", fontsize=12)
    if caption:
        fig.supxlabel(caption, fontsize=9)
    return _png(fig)


def structure_figure(kept: Sequence[int], total: Sequence[int], what: str) -> bytes:
    """Bars of ``kept`` per layer drawn over light bars of ``total`` (PNG bytes); ``what`` names the unit.

    Example:
        >>> png = structure_figure([4, 2], [4, 4], "attention heads")
    """
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    x = np.arange(len(kept))
    ax.bar(x, total, color="#d9dee5", width=0.7, label="before pruning")
    ax.bar(x, kept, color="#2f6db5", width=0.7, label="kept after shrink")
    top = max([*total, 1])
    for i, (k, t) in enumerate(zip(kept, total, strict=False)):
        ax.text(i, max(k, 0) + top * 0.02, f"{k}/{t}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [str(i) for i in x])
    ax.set_xlabel("layer")
    ax.set_ylabel(what)
    ax.set_ylim(0, top * 1.32)
    share = sum(kept) / max(sum(total), 1)
    ax.set_title(f"{what[:1].upper()}{what[1:]} per layer: {sum(kept)} of {sum(total)} kept ({share:.0%})")
    ax.legend(loc="upper right", ncols=2, fontsize=8, framealpha=0.9)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _as_percent(value: float, scale: float) -> str:
    return f"{value * scale:.1f}%" if scale == 100 else f"{value:.3g}"


def tradeoff_figure(teacher_metric: float, final_metric: float, speedup: float, metric_name: str,
                    label: str = "pruned", theoretical: float | None = None, higher_is_better: bool = True) -> bytes:
    """This run's (speedup, metric) next to the dense teacher at (1.0, teacher metric) (PNG bytes).

    Metrics in [0, 1] are drawn in percent, their change in points; with ``higher_is_better=False``
    (perplexity) the change and the axis say "lower is better". Example:
        >>> png = tradeoff_figure(0.84, 0.83, 2.1, "accuracy", "hybrid-filled", theoretical=2.3)
        >>> png = tradeoff_figure(12.3, 13.1, 2.1, "perplexity", higher_is_better=False)
    """
    scale = 100.0 if 0 <= teacher_metric <= 1 and 0 <= final_metric <= 1 else 1.0
    teacher, final = teacher_metric * scale, final_metric * scale
    fig = _figure(7.0, 4.2)
    ax = fig.add_subplot()
    ax.axhline(teacher, color="#888888", linestyle="--", linewidth=1, label=f"teacher {metric_name}")
    ax.scatter([1.0], [teacher], s=70, color="#555555", zorder=3, label="dense teacher")
    ax.scatter([speedup], [final], s=90, color="#2f6db5", zorder=3, label=f"{label} (measured)")
    xs = [1.0, speedup]
    if theoretical:
        ax.scatter([theoretical], [final], s=70, facecolors="none", edgecolors="#2f6db5", zorder=3,
                   label=f"{label} (theoretical, from FLOPs)")
        xs.append(theoretical)
    ax.annotate(f"dense teacher\n{_as_percent(teacher_metric, scale)}", (1.0, teacher), xytext=(-10, 10),
                textcoords="offset points", ha="right", va="bottom", fontsize=9)
    change = f"{final - teacher:+.1f}".replace("-", "\u2212")
    if higher_is_better:
        change += " points"
    else:
        change += f"{' points' if scale == 100 else ''}, lower is better"
    ax.annotate(f"{label}\n{speedup:.2f}\u00d7, {_as_percent(final_metric, scale)}\n({change})", (speedup, final),
                xytext=(10, -10), textcoords="offset points", ha="left", va="top", fontsize=9)
    span = max(abs(teacher - final), 0.5 if scale == 100 else 0.005)
    ax.set_ylim(min(teacher, final) - 2.2 * span, max(teacher, final) + 1.6 * span)
    ax.set_xlim(0.5, max(xs) * 1.3 + 0.2)
    ax.set_xlabel("speedup over the dense teacher (\u00d7)")
    axis = f"{metric_name} (%)" if scale == 100 else metric_name
    ax.set_ylabel(axis if higher_is_better else f"{axis}, lower is better")
    ax.set_title(f"{metric_name.capitalize()} vs speedup")
    ax.legend(loc="lower left", fontsize=8, framealpha=0.9)
    ax.grid(alpha=0.3)
    return _png(fig)
