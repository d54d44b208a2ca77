"""Figures against remaining weights: accuracy of tickets per source or per mask kind (mean line, std
band, the dense accuracy as a band) and any mask measure (IoU, zero kernels) beside its random-mask
baseline. The x axis is remaining weights in % on a log scale that decreases to the right (100, 80,
64, ...), as in the paper; points at 100% sparsity are left out (log axis)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator

from cvlth.analysis.plots.figure import PathLike, plt, save_figure
from cvlth.analysis.plots.palette import KIND_COLORS, palette_colors

Curve = Sequence[tuple[float, float, float | None]]  # (sparsity, mean, std or None)


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


def _legend(ax: plt.Axes, title: str | None = None) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing plotted (e.g. only 100%-sparse points): no legend
        ax.legend(frameon=False, fontsize=9, loc="best", title=title)


# --- figures ----------------------------------------------------------------------------


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
