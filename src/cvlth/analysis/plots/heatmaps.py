"""Heatmaps: the pairwise IoU of tickets (each cell beside its random-mask baseline) and the kernel
maps of a mask (which k×k kernels are fully pruned, per output and input channel)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.colors import LinearSegmentedColormap

from cvlth.analysis.plots.figure import PathLike, plt, save_figure, short_layer_name
from cvlth.scope import natural_sorted

_KERNEL_CMAP = LinearSegmentedColormap.from_list("kernels", ["#0b0b2b", "#ffe14d"])


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
