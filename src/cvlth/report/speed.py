"""The speed section: what each ticket's sparsity buys at inference, against the dense classifier."""

from __future__ import annotations

from pathlib import Path

from cvlth.analysis.plots.palette import palette_colors
from cvlth.report.document import Figure, Section, Table, pct
from cvlth.report.inputs import StudyFiles
from cvlth.report.styles import FINDER_STYLES, SHADES, shade
from cvlth.results.outputs import SpeedPoint


def _label(point: SpeedPoint) -> str:
    return f"{point.source}→{point.task}" if point.task else point.source


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _curve_styles(
    files: StudyFiles, points: list[SpeedPoint]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """As the report's other figures: a colour per pre-training, shaded per ticket; a line style per
    finder."""
    sources = {_label(p): files.source(p.source) for p in points}
    base = palette_colors(list(dict.fromkeys(s.pretraining for s in sources.values())))
    finders = list(dict.fromkeys(s.finder for s in sources.values()))
    colors, styles, shown = {}, {}, dict.fromkeys(base, 0)
    for label, source in sources.items():
        colors[label] = shade(base[source.pretraining], SHADES[shown[source.pretraining] % len(SHADES)])
        shown[source.pretraining] += 1
        styles[label] = FINDER_STYLES[finders.index(source.finder) % len(FINDER_STYLES)]
    return colors, styles


def speed_section(files: StudyFiles, figures: Path) -> Section:
    from cvlth.analysis.plots.curves import plot_against_sparsity

    section = Section("Inference speed", "speed")
    points = files.speed or []
    section.blocks.append(
        "Each ticket's classifier (the study's backbone with the ticket's mask applied) against the "
        "dense one: median latency of one batch over interleaved rounds, on every engine present "
        "(PyTorch eager, ONNX Runtime, cvlth's sparse kernels, DeepSparse when installed). The speed-up "
        "is the ticket on its fastest engine over the fastest dense engine; cvlth's is the ticket on "
        "cvlth's own kernel. Above 1× the ticket runs faster."
    )
    if not points:
        section.blocks.append("speed.json holds no timings.")
        return section
    threads = sorted({p.threads for p in points})
    colors, styles = _curve_styles(files, points)
    for batch in sorted({p.batch for p in points}):
        at_batch = [p for p in points if p.batch == batch]
        curves: dict[str, list[tuple[float, float, float | None]]] = {}
        for point in sorted(at_batch, key=lambda p: p.sparsity):
            curves.setdefault(_label(point), []).append((point.sparsity, point.speedup, None))
        sparsities = sorted({p.sparsity for p in at_batch})
        path = plot_against_sparsity(
            curves,
            figures / f"speed-batch{batch}.png",
            title=f"inference speed-up at batch {batch} ({', '.join(map(str, threads))} threads)",
            ylabel="speed-up over the fastest dense engine",
            baselines={"dense (1×)": [(s, 1.0, None) for s in sparsities]},
            colors=colors,
            styles=styles,
        )
        section.blocks.append(Figure(path, f"Speed-up against sparsity at batch {batch}."))
        rows = []
        for point in sorted(at_batch, key=lambda p: (_label(p), p.level)):
            dense_engine, dense_seconds = point.fastest("dense")
            ticket_engine, ticket_seconds = point.fastest("ticket")
            rows.append(
                [
                    _label(point),
                    str(point.level),
                    pct(point.sparsity),
                    f"{dense_seconds * 1e3:.2f} ({dense_engine})",
                    f"{ticket_seconds * 1e3:.2f} ({ticket_engine})",
                    _ratio(point.speedup),
                    _ratio(point.cvlth_speedup),
                ]
            )
        section.blocks.append(
            Table(
                ["ticket", "level", "sparsity", "dense ms", "ticket ms", "speed-up", "cvlth's kernel"],
                rows,
                f"batch {batch}: medians of one batch's latency",
            )
        )
        best = max(at_batch, key=lambda p: p.speedup)
        section.facts.append(
            f"Inference at batch {batch}: the best ticket speed-up is {best.speedup:.2f}× "
            f"({_label(best)} at {pct(best.sparsity)}, on {best.fastest('ticket')[0]})."
        )
    return section
