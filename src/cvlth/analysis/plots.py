"""Figures for the analyses. Every function takes plain data, writes one PNG and returns its path.

Colours are fixed per pre-training source (:data:`SOURCE_COLORS`) so that, e.g., SimCLR is orange
in every figure of a report; names not in the palette get the next colour of :data:`EXTRA_COLORS`
(:func:`palette_colors` gives a whole set of names their colours, for callers that style figures).
Sparsities are fractions in [0, 1] (as :attr:`Mask.sparsity`); accuracy axes plot x = remaining
weights in % on a log scale that decreases to the right (100, 80, 64, ...), as in the paper.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.ticker import FixedLocator, NullLocator  # noqa: E402

from cvlth.scope import natural_sorted  # noqa: E402

DPI = 120

SOURCE_COLORS: dict[str, str] = {
    "imagenet": "#1f77b4",
    "supervised": "#1f77b4",
    "simclr": "#ff7f0e",
    "moco": "#2ca02c",
    "random": "#7f7f7f",
    "omp": "#9467bd",
}
EXTRA_COLORS: tuple[str, ...] = ("#d62728", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79")
# Mask kinds of the perturbation study; "random" keeps its grey.
KIND_COLORS: dict[str, str] = {
    "imp": "#1f77b4",
    "complement": "#d62728",
    "count-matched": "#8c564b",  # the count-matched complement (longest key wins over "complement")
    "perturbed": "#ff7f0e",
}

Curve = Sequence[tuple[float, float, float | None]]  # (sparsity, mean, std or None)
PathLike = str | os.PathLike[str]


# --- colours ----------------------------------------------------------------------------


def _palette_color(name: str, extra: Mapping[str, str] | None) -> str | None:
    palette = {**SOURCE_COLORS, **(extra or {})}
    key = name.lower()
    if key in palette:
        return palette[key]
    for known in sorted(palette, key=len, reverse=True):  # longest first: "imagenet" before "imp"
        if known in key:
            return palette[known]
    return None


def source_color(name: str, extra: Mapping[str, str] | None = None, index: int = 0) -> str:
    """The fixed colour of a source; names like "moco_v2" match their key ("moco").

    Unknown names take ``EXTRA_COLORS[index % len(EXTRA_COLORS)]``.
    """
    return _palette_color(name, extra) or EXTRA_COLORS[index % len(EXTRA_COLORS)]


def palette_colors(names: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A colour per name: the fixed one for known names (see :func:`source_color`); unknown names
    cycle through EXTRA_COLORS in order. Figures of one report share colours by calling this."""
    result: dict[str, str] = {}
    unknown = 0
    for name in names:
        color = _palette_color(name, extra)
        if color is None:
            color = EXTRA_COLORS[unknown % len(EXTRA_COLORS)]
            unknown += 1
        result[name] = color
    return result


def short_layer_name(name: str) -> str:
    """``layer1.0.conv1.weight`` -> ``layer1.0.conv1`` (axis labels)."""
    return name.removesuffix(".weight")


# --- helpers ----------------------------------------------------------------------------


def _save(fig: plt.Figure, path: PathLike) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return target


def _remaining_percent(sparsity: float) -> float:
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be a fraction in [0, 1], got {sparsity}")
    return 100.0 * (1.0 - sparsity)


def _format_percent(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _thin_ticks(values: list[float], max_ticks: int = 12) -> list[float]:
    """Keep at most ``max_ticks`` of the sorted (descending) values, always the first and last."""
    if len(values) <= max_ticks:
        return values
    step = math.ceil((len(values) - 1) / (max_ticks - 1))
    kept = values[::step]
    return kept if kept[-1] == values[-1] else [*kept, values[-1]]


def _spread(values: list[float], min_ratio: float = 1.06) -> list[float]:
    """Drop ticks (descending) closer than ``min_ratio`` to the last one kept: measured sparsities
    of several masks differ by a few weights and would print on top of each other."""
    kept: list[float] = []
    for value in values:
        if not kept or kept[-1] / max(value, 1e-12) >= min_ratio:
            kept.append(value)
    return kept


def _curve_arrays(curve: Curve) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """x = remaining % (points at 100% sparsity dropped: log axis), mean, std (None if no std)."""
    points = sorted((p for p in curve if _remaining_percent(p[0]) > 0), key=lambda p: p[0])
    x = np.array([_remaining_percent(p[0]) for p in points], dtype=float)
    mean = np.array([p[1] for p in points], dtype=float)
    stds = [p[2] if len(p) > 2 else None for p in points]
    if all(s is None for s in stds):
        return x, mean, None
    return x, mean, np.array([np.nan if s is None else s for s in stds], dtype=float)


def _plot_curves(
    ax: plt.Axes,
    curves: Mapping[str, Curve],
    colors: Mapping[str, str],
    markers: bool = True,
    styles: Mapping[str, tuple[str, str]] | None = None,
    band_alpha: float = 0.18,
) -> list[float]:
    """One line (+ std band) per curve; returns all x values plotted.

    ``styles``: curve name -> (line style, marker), e.g. one per ticket finder.
    """
    xs: list[float] = []
    for name, curve in curves.items():
        x, mean, std = _curve_arrays(curve)
        if not x.size:
            continue
        ls, marker = (styles or {}).get(name, ("-", "o"))
        ax.plot(
            x, mean, ls=ls, marker=marker if markers else None, ms=4, lw=1.8, color=colors[name], label=name
        )
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, color=colors[name], alpha=band_alpha, lw=0)
        xs.extend(x.tolist())
    return xs


def _remaining_axis(ax: plt.Axes, xs: list[float]) -> None:
    """Log x axis of remaining weights, decreasing to the right, ticks at the plotted values."""
    ax.set_xscale("log")
    ticks = _thin_ticks(_spread(sorted({round(x, 6) for x in xs}, reverse=True)))
    if ticks:
        ax.set_xlim(max(ticks) * 1.08, min(ticks) / 1.08)  # inverted: 100% on the left
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([_format_percent(t) for t in ticks])
    ax.set_xlabel("remaining weights (%)")


def _dense_band(ax: plt.Axes, dense: tuple[float, float | None] | None) -> None:
    if dense is None:
        return
    mean, std = dense
    ax.axhline(mean, color="black", ls="--", lw=1.2, label="dense")
    if std:
        ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, lw=0)


# --- figures ----------------------------------------------------------------------------


def plot_accuracy_vs_remaining(
    curves: Mapping[str, Curve],
    dense: tuple[float, float | None] | None,
    path: PathLike,
    title: str = "",
    metric: str = "accuracy (%)",
) -> Path:
    """Accuracy vs remaining weights: one line (mean ± std band) per ticket source, dense as a band.

    ``curves``: source -> [(sparsity, mean, std or None), ...]; ``dense``: (mean, std or None).
    """
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = _plot_curves(ax, curves, palette_colors(list(curves)))
    _dense_band(ax, dense)
    _remaining_axis(ax, xs)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    return _save(fig, path)


def plot_accuracy_by_source(
    curves: Mapping[str, Curve],
    dense: Mapping[str, tuple[float, float | None]],
    path: PathLike,
    title: str = "",
    metric: str = "accuracy (%)",
    colors: Mapping[str, str] | None = None,
    styles: Mapping[str, tuple[str, str]] | None = None,
) -> Path:
    """Accuracy vs remaining weights of tickets from several pre-trainings, each with its own dense.

    ``curves``: ticket source -> [(sparsity, mean, std or None), ...], drawn with ``colors[source]``
    (default: the palette) and ``styles[source]`` = (line style, marker), std as a light band.
    ``dense``: pre-training -> (mean, std or None), drawn as a dashed line in ``colors[pretraining]``
    with its matching band [mean - std, mean] hatched: a ticket matches where its mean is at or above
    the band's lower edge.
    """
    palette = {**palette_colors(list(curves)), **palette_colors(list(dense)), **(colors or {})}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = _plot_curves(ax, curves, palette, styles=styles, band_alpha=0.1)
    for name, (mean, std) in dense.items():
        color = palette[name]
        label = f"{name} dense" + (" (hatched: matching band)" if std else "")
        ax.axhline(mean, color=color, ls="--", lw=1.1, alpha=0.9, label=label)
        if std:
            ax.axhspan(mean - std, mean, facecolor="none", edgecolor=color, hatch="///", alpha=0.45, lw=0)
    return _finish_remaining_plot(fig, ax, xs, metric, title, path)


def _finish_remaining_plot(
    fig: plt.Figure, ax: plt.Axes, xs: list[float], ylabel: str, title: str, path: PathLike
) -> Path:
    """Remaining-weights x axis, labels, grid, the legend outside on the right; saved to ``path``."""
    _remaining_axis(ax, xs)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_perturbation(
    curves: Mapping[str, Curve],
    path: PathLike,
    title: str = "",
    metric: str = "accuracy (%)",
    dense: tuple[float, float | None] | None = None,
) -> Path:
    """Accuracy vs remaining weights per mask kind (imp, complement, random, perturbed)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = _plot_curves(ax, curves, palette_colors(list(curves), KIND_COLORS))
    _dense_band(ax, dense)
    _remaining_axis(ax, xs)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, title="mask")
    return _save(fig, path)


def plot_against_sparsity(
    curves: Mapping[str, Curve],
    path: PathLike,
    title: str = "",
    ylabel: str = "",
    baselines: Mapping[str, Curve] | None = None,
    baseline_label: str = "random mask",
    colors: Mapping[str, str] | None = None,
    styles: Mapping[str, tuple[str, str]] | None = None,
) -> Path:
    """A quantity of each ticket (IoU of a pair, share of zero kernels, ...) against remaining weights.

    ``baselines``: what random masks would give. A key that names a curve is drawn dotted in that
    curve's colour (one legend entry, ``baseline_label``, for all of them); any other key is drawn
    black and dashed with the key as its label (e.g. ``"random masks: p/(2−p)"``).
    """
    palette = {**palette_colors(list(curves)), **(colors or {})}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = _plot_curves(ax, curves, palette, styles=styles, band_alpha=0.1)
    dotted = False
    for name, curve in (baselines or {}).items():
        x, mean, _ = _curve_arrays(curve)
        if not x.size:
            continue
        if name in curves:
            ax.plot(x, mean, ls=":", lw=1.3, color=palette[name])
            dotted = True
        else:
            ax.plot(x, mean, ls="--", lw=1.5, color="black", label=name)
        xs.extend(x.tolist())
    if dotted:
        ax.plot([], [], ls=":", lw=1.3, color="#555555", label=baseline_label)  # legend entry only
    return _finish_remaining_plot(fig, ax, xs, ylabel, title, path)


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
    return _save(fig, path)


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


def _legend(ax: plt.Axes, title: str | None = None) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing plotted (e.g. only 100%-sparse points): no legend
        ax.legend(frameon=False, fontsize=9, loc="best", title=title)


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
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)


def _mask_sparsity(mask: Mapping) -> float:
    total = sum(t.numel() for t in mask.values())
    kept = sum(int(t.sum()) for t in mask.values())
    return 1.0 - kept / total if total else 0.0
