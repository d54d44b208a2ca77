"""What every figure shares: matplotlib on the Agg backend (files only, never a display), the
resolution, saving a figure as one PNG, and layer names on axes."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402  (the figure modules take plt from here: Agg first)

DPI = 120
PathLike = str | os.PathLike[str]


def short_layer_name(name: str) -> str:
    """``layer1.0.conv1.weight`` -> ``layer1.0.conv1`` (axis labels)."""
    return name.removesuffix(".weight")


def save_figure(fig: plt.Figure, path: PathLike) -> Path:
    """Write ``fig`` to ``path`` as a PNG (folders created), close it, return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return target
