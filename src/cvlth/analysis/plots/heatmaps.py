"""Heatmaps: the pairwise IoU of tickets (each cell beside its random-mask baseline) and the kernel
maps of a mask (which k×k kernels are fully pruned, per output and input channel)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import LinearSegmentedColormap

from cvlth.analysis.plots.figure import PathLike, plt, save_figure, short_layer_name
from cvlth.scope import natural_sorted

_KERNEL_CMAP = LinearSegmentedColormap.from_list("kernels", ["#0b0b2b", "#ffe14d"])


def plot_iou_heatmap(
    names: Sequence[str],
    matrix: Sequence[Sequence[float]] | np.ndarray,
    random_matrix: Sequence[Sequence[float]] | np.ndarray | None,
    path: PathLike,
    title: str = "",
) -> Path:
    """Pairwise IoU, each cell annotated with its value and the random-mask baseline."""
    values = np.asarray(matrix, dtype=float)
    baseline = None if random_matrix is None else np.asarray(random_matrix, dtype=float)
    size = len(names)
    if values.shape != (size, size) or (baseline is not None and baseline.shape != values.shape):
        raise ValueError(f"IoU matrices must be {size}×{size} for {size} names")
    side = max(3.2, 1.25 * size + 1.6)
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    off_diagonal = np.where(np.eye(size, dtype=bool), np.nan, values)  # self-IoU is trivially 1
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#e6e6e6")
    image = ax.imshow(off_diagonal, cmap=cmap, vmin=0.0, vmax=1.0)
    for i in range(size):
        for j in range(size):
            if i == j:
                continue
            text = "–" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
            if baseline is not None and not np.isnan(baseline[i, j]):
                text += f"\n(rand {baseline[i, j]:.2f})"
            dark_cell = not values[i, j] >= 0.6  # NaN cells too
            ax.text(j, i, text, ha="center", va="center", fontsize=9, color="white" if dark_cell else "black")
    ax.set_xticks(range(size), labels=list(names), rotation=30, ha="right")
    ax.set_yticks(range(size), labels=list(names))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="IoU of kept weights")
    ax.set_title(title)
    return save_figure(fig, path)


def _select_kernel_maps(mask: Mapping, blocks: Sequence[str] | None) -> dict[str, np.ndarray]:
    from cvlth.analysis.kernels import kernel_map  # torch-heavy; only needed here

    four_d = {name: mask[name] for name in natural_sorted(mask) if mask[name].ndim == 4}
    if blocks is not None:
        chosen = {n: t for n, t in four_d.items() if any(n.startswith(b) for b in blocks)}
    else:
        chosen = {n: t for n, t in four_d.items() if t.shape[2] * t.shape[3] > 1} or four_d
    return {name: kernel_map(tensor) for name, tensor in chosen.items()}


def plot_kernel_heatmaps(
    mask: Mapping, path: PathLike, blocks: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """Grid of kernel maps (rows = output, columns = input channels; bright = fully pruned).

    ``mask``: a :class:`~cvlth.masks.Mask` (or mapping name -> bool tensor). ``blocks``: name
    prefixes such as ``["layer1.0", "layer4.2"]`` selecting the layers to show; by default every
    layer with spatial (k×k, k>1) kernels, which is what the paper shows.
    """
    maps = _select_kernel_maps(mask, blocks)
    if not maps:
        raise ValueError(f"no 4-D conv layer matches blocks={list(blocks or [])}")
    cols = min(len(maps), 6)
    rows = math.ceil(len(maps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows + 0.4), squeeze=False)
    for ax, (name, kmap) in zip(axes.flat, maps.items(), strict=False):
        ax.imshow(kmap, cmap=_KERNEL_CMAP, vmin=0, vmax=1, interpolation="antialiased", aspect="auto")
        ax.set_title(f"{short_layer_name(name)}\n{kmap.mean():.1%} zero", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(maps) :]:
        ax.axis("off")
    sparsity = _mask_sparsity(mask)
    fig.suptitle(title or f"Fully pruned kernels (bright) at {sparsity:.2%} sparsity", fontsize=11)
    fig.supxlabel("input channels", fontsize=9)
    fig.supylabel("output channels", fontsize=9)
    return save_figure(fig, path)


def _mask_sparsity(mask: Mapping) -> float:
    total = sum(t.numel() for t in mask.values())
    kept = sum(int(t.sum()) for t in mask.values())
    return 1.0 - kept / total if total else 0.0
