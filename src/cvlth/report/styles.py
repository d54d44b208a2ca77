"""Colours and line styles of the report's figures, shared by all of them.

Each pre-training has its palette colour (:func:`cvlth.analysis.plots.palette.palette_colors`:
SimCLR is orange everywhere); the sources of one pre-training are shades of it, in finder order (random
masks greyed); each finder has its (line style, marker).
"""

from __future__ import annotations

from collections.abc import Sequence

from cvlth.analysis.plots.palette import palette_colors
from cvlth.report.inputs import StudyFiles
from cvlth.results.outputs import TicketEntry

FINDER_STYLES: tuple[tuple[str, str], ...] = (
    ("-", "o"),
    ("--", "s"),
    (":", "^"),
    ("-.", "D"),
    ("-", "v"),
    ("--", "P"),
    (":", "X"),
    ("-.", "*"),
)
SHADES = (0.0, -0.4, 0.45, -0.65, 0.7)  # per finder within one pre-training: base, darker, lighter, ...
PAIR_COLORS = (  # IoU curves: one per pair of tickets
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#393b79",
    "#7f7f7f",
    "#ad494a",
)


def shade(color: str, amount: float) -> str:
    """``amount`` < 0 darkens towards black, > 0 lightens towards white."""
    from matplotlib.colors import to_hex, to_rgb

    rgb = to_rgb(color)
    if amount < 0:
        return to_hex(tuple(c * (1 + amount) for c in rgb))
    return to_hex(tuple(c + (1 - c) * amount for c in rgb))


def mix(color: str, other: str, share: float) -> str:
    from matplotlib.colors import to_hex, to_rgb

    return to_hex(
        tuple(a * (1 - share) + b * share for a, b in zip(to_rgb(color), to_rgb(other), strict=True))
    )


def styles(files: StudyFiles) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Colours (keys: pre-training names and sources ``<pre-training>/<finder>``) and
    (line style, marker) per finder."""
    colors = palette_colors(list(files.study.pretrainings))
    finder_styles = {f.name: FINDER_STYLES[i % len(FINDER_STYLES)] for i, f in enumerate(files.study.finders)}
    sources = [r.source for r in files.matching] + [t.source for t in files.tickets]
    finders = {f.name: f.method for f in files.study.finders}
    for pretraining, base in list(colors.items()):
        k = 0
        own = [s for s in dict.fromkeys(sources) if files.source(s).pretraining == pretraining]
        for source in own:
            if finders.get(files.source(source).finder) == "random":
                colors[source] = mix(base, "#8c8c8c", 0.65)
            else:
                colors[source] = shade(base, SHADES[k % len(SHADES)])
                k += 1
    return colors, finder_styles


def ticket_colors(files: StudyFiles, tickets: Sequence[TicketEntry]) -> dict[str, str]:
    """Colour per ticket label: its source's colour, lighter for each further task of that source."""
    colors, _ = styles(files)
    seen: dict[str, int] = {}
    result = {}
    for ticket in tickets:
        k = seen.get(ticket.source, 0)
        seen[ticket.source] = k + 1
        base = colors.get(ticket.source) or colors.get(ticket.pretraining, "#333333")
        result[ticket.label] = shade(base, min(0.3 * k, 0.75))
    return result
