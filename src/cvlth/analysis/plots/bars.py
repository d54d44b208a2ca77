"""Grouped bars per layer, one bar per source side by side, layers in natural order (``layer3.2``
before ``layer3.10``): per-layer sparsity and fully pruned kernels beside the random expectation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cvlth.analysis.plots.figure import PathLike, plt, save_figure, short_layer_name
from cvlth.analysis.plots.palette import palette_colors
from cvlth.scope import natural_sorted


def _grouped_bars(
    ax: plt.Axes,
    data: Mapping[str, Mapping[str, float]],
    layers: list[str],
    colors: Mapping[str, str] | None = None,
) -> tuple[np.ndarray, float]:
    """Bars per layer, one per source side by side; returns the x centres and the group width."""
    colors = {**palette_colors(list(data)), **(colors or {})}
    group = 0.8
    width = group / max(len(data), 1)
    centres = np.arange(len(layers))
    for k, (source, values) in enumerate(data.items()):
        heights = [values.get(layer, np.nan) for layer in layers]
        offsets = centres - group / 2 + (k + 0.5) * width
        ax.bar(offsets, heights, width=width, color=colors[source], label=source, lw=0)
    return centres, group


def _layer_order(data: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every layer of any source, in natural order (``layer3.2`` before ``layer3.10``)."""
    return natural_sorted({layer for values in data.values() for layer in values})


def _layer_axis(ax: plt.Axes, centres: np.ndarray, layers: list[str]) -> None:
    ax.set_xticks(centres, labels=[short_layer_name(layer) for layer in layers], rotation=90, fontsize=8)
    ax.set_xlim(-0.6, len(layers) - 0.4)


def _legend_above(ax: plt.Axes, entries: int, title: str) -> None:
    """Legend in rows between title and axes, so it never hides a tall bar; the title goes above it.

    As many columns as the figure's width holds (at most 6); the title is lifted by one line per row.
    """
    ncol = max(1, min(entries, 6, int(ax.figure.get_figwidth() / 2.3)))
    ax.legend(frameon=False, fontsize=9, ncol=ncol, loc="lower left", bbox_to_anchor=(0, 1.0))
    ax.set_title(title, pad=8 + 15 * math.ceil(entries / ncol))


def _max_value(data: Mapping[str, Mapping[str, float]]) -> float:
    return max((v for values in data.values() for v in values.values()), default=0.0)


def _layer_figure_width(n_layers: int) -> float:
    return min(max(6.0, 0.32 * n_layers + 2.0), 24.0)


def plot_layer_sparsity(
    layer_sparsity: Mapping[str, Mapping[str, float]],
    path: PathLike,
    title: str = "Per-layer sparsity",
    colors: Mapping[str, str] | None = None,
) -> Path:
    """Grouped bars: sparsity (%) of every layer, one bar per source (``colors``: source -> colour)."""
    layers = _layer_order(layer_sparsity)
    percent = {s: {layer: 100.0 * v for layer, v in values.items()} for s, values in layer_sparsity.items()}
    fig, ax = plt.subplots(figsize=(_layer_figure_width(len(layers)), 4.2))
    centres, _ = _grouped_bars(ax, percent, layers, colors)
    _layer_axis(ax, centres, layers)
    ax.set_ylim(0, 100)
    ax.set_ylabel("sparsity (%)")
    ax.grid(True, axis="y", alpha=0.3)
    _legend_above(ax, len(layer_sparsity), title)
    return save_figure(fig, path)


def plot_zero_kernels(
    counts: Mapping[str, Mapping[str, int]],
    expected_random: Mapping[str, float] | None,
    path: PathLike,
    title: str = "Fully pruned kernels per layer",
    colors: Mapping[str, str] | None = None,
) -> Path:
    """Grouped bars of fully pruned kernels per layer and source; black ticks = random expectation.

    Counts span orders of magnitude across a ResNet, so the y axis is symmetric-log (zero stays 0).
    """
    layers = _layer_order(counts)
    fig, ax = plt.subplots(figsize=(_layer_figure_width(len(layers)), 4.2))
    centres, group = _grouped_bars(ax, counts, layers, colors)
    if expected_random:
        expected = [expected_random.get(layer, np.nan) for layer in layers]
        ax.hlines(expected, centres - group / 2, centres + group / 2, colors="black", lw=1.8, zorder=3)
        ax.plot([], [], color="black", lw=1.6, label="random mask (expected)")  # legend entry only
    _layer_axis(ax, centres, layers)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(
        0,
        3.0 * max(_max_value(counts), max(expected_random.values(), default=0) if expected_random else 0, 1),
    )
    ax.set_ylabel("fully pruned kernels")
    ax.grid(True, axis="y", alpha=0.3)
    _legend_above(ax, len(counts) + 1, title)
    return save_figure(fig, path)
