"""Colours fixed per pre-training source (:data:`SOURCE_COLORS`) and per mask kind of the perturbation
study (:data:`KIND_COLORS`), so that, e.g., SimCLR is orange in every figure of a report; names not in
the palette get the next colour of :data:`EXTRA_COLORS`. :func:`palette_colors` gives a whole set of
names their colours, for callers that style figures. Imports no plotting library."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
