"""The structure sections: overlap (IoU) between tickets and fully pruned kernels at every level,
and per-layer sparsity at the level nearest the paper's 79.03%, all read from the mask files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlth.report.document import Figure, Section, Table, pct, slug
from cvlth.report.inputs import StudyFiles
from cvlth.report.styles import PAIR_COLORS, ticket_colors
from cvlth.results.outputs import TicketEntry

REPRESENTATIVE_SPARSITY = 0.7903  # the paper shows kernels and layer sparsity at 79.03% (level 7)
MAX_IOU_TICKETS = 10  # tickets whose pairwise IoU is computed at every level
MAX_IOU_PAIRS = 12  # curves per IoU figure
MAX_LAYER_TICKETS = 6  # bars per layer
METHOD_PRIORITY = {"imp-upstream": 0, "omp": 1, "imp-downstream": 2, "random": 3}


def _levels(files: StudyFiles) -> dict[int, float]:
    levels: dict[int, float] = {}
    for ticket in files.tickets:
        for level, value in ticket.levels.items():
            levels.setdefault(level, value.sparsity)
    return dict(sorted(levels.items()))


def _nearest(levels: dict[int, float], target: float) -> int:
    return min(levels, key=lambda level: (abs(levels[level] - target), level))


def _heatmap_ticket(files: StudyFiles, level: int) -> TicketEntry | None:
    candidates = [t for t in files.tickets if level in t.levels]
    first = next(iter(files.study.pretrainings), None)
    for test in (
        lambda t: t.method == "imp-upstream" and t.pretraining == first,
        lambda t: t.method == "imp-upstream",
        lambda t: t.method.startswith("imp"),
        lambda t: True,
    ):
        found = next((t for t in candidates if test(t)), None)
        if found is not None:
            return found
    return None


def ranked(tickets: Sequence[TicketEntry], limit: int) -> tuple[list[TicketEntry], list[TicketEntry]]:
    order = sorted(range(len(tickets)), key=lambda i: (METHOD_PRIORITY.get(tickets[i].method, 9), i))
    ranked = [tickets[i] for i in order]
    return ranked[:limit], ranked[limit:]


def _masks_at(files: StudyFiles, tickets: Sequence[TicketEntry], level: int) -> dict[str, Any]:
    """Masks of these tickets at ``level`` that cover the same weights as the first one."""
    masks: dict[str, Any] = {}
    for ticket in tickets:
        if level not in ticket.levels:
            continue
        mask = files.mask(ticket, level)
        if masks and mask.shapes != next(iter(masks.values())).shapes:
            continue
        masks[ticket.label] = mask
    return masks


@dataclass
class LevelScan:
    """Mask structure at every level: pairwise IoU and fully pruned kernels of the chosen tickets."""

    levels: dict[int, float]  # level -> nominal sparsity
    pairs: dict[tuple[str, str], dict[int, tuple[float, float]]]  # (a, b) -> level -> (IoU, random IoU)
    kernels: dict[str, dict[int, Any]]  # ticket label -> level -> KernelReport


def scan_levels(
    files: StudyFiles, iou_tickets: Sequence[TicketEntry], kernel_tickets: Sequence[TicketEntry]
) -> LevelScan:
    """One pass over the levels, holding one level's masks at a time (a ResNet-50 mask is ~25 MB:
    every ticket at every level would not fit). The random IoU keeps each pair's per-layer densities."""
    from cvlth.analysis.kernels import kernel_report
    from cvlth.analysis.overlap import random_iou

    levels = _levels(files)
    pairs: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    kernels: dict[str, dict[int, Any]] = {t.label: {} for t in kernel_tickets}
    for level in levels:
        masks = _masks_at(files, iou_tickets, level)
        names = list(masks)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                pairs.setdefault((a, b), {})[level] = (masks[a].iou(masks[b]), random_iou(masks[a], masks[b]))
        for ticket in kernel_tickets:
            if level in ticket.levels:
                kernels[ticket.label][level] = kernel_report(files.mask(ticket, level))
        files.release_masks()
    return LevelScan(levels, pairs, kernels)


def _pair_groups(
    tickets: Sequence[TicketEntry], pairs: Sequence[tuple[str, str]]
) -> dict[str, list[tuple[str, str]]]:
    """The paper's two comparisons: the same finder across pre-trainings, and the tickets of one
    pre-training against each other (upstream vs downstream, IMP vs OMP, ...). Other pairs (other
    pre-training and other finder) are drawn only when there is neither; the table has them all."""
    by_label = {t.label: t for t in tickets}
    groups: dict[str, list[tuple[str, str]]] = {
        "across pre-trainings": [],
        "within a pre-training": [],
        "other pairs": [],
    }
    for a, b in pairs:
        ta, tb = by_label[a], by_label[b]
        if ta.pretraining == tb.pretraining:
            groups["within a pre-training"].append((a, b))
        elif ta.finder == tb.finder and ta.task == tb.task:
            groups["across pre-trainings"].append((a, b))
        else:
            groups["other pairs"].append((a, b))
    other = groups.pop("other pairs")
    kept = {name: group for name, group in groups.items() if group}
    return kept or ({"other pairs": other} if other else {})


def _equal_density_iou(sparsity: float) -> float:
    """p / (2 - p): the IoU of two independent random masks of density p = 1 - sparsity."""
    p = 1.0 - sparsity
    return p / (2.0 - p) if p < 2.0 else 1.0


def iou_section(files: StudyFiles, scan: LevelScan, figures: Path) -> Section:
    from cvlth.analysis.plots.curves import plot_against_sparsity

    section = Section("Mask overlap (IoU) against sparsity", "iou")
    chosen, left_out = ranked(files.tickets, MAX_IOU_TICKETS)
    text = (
        "IoU of kept weights between two tickets at the same level, at every level, against remaining "
        "weights; the black dashed line is the IoU two independent random masks of density p would "
        "have, p/(2−p). The table also gives, per level, the random IoU with each pair's own per-layer "
        "densities."
    )
    if left_out:
        text += f" Left out to keep the figures readable: {', '.join(t.label for t in left_out)}."
    section.blocks.append(text)
    if not scan.pairs:
        section.blocks.append("Fewer than two tickets of the same weights: no overlap to show.")
        return section
    baseline = {"random masks: p/(2−p)": [(s, _equal_density_iou(s), None) for s in scan.levels.values()]}
    for name, group in _pair_groups(chosen, list(scan.pairs)).items():
        shown, hidden = group[:MAX_IOU_PAIRS], group[MAX_IOU_PAIRS:]
        curves = {
            f"{a} / {b}": [
                (scan.levels[level], iou, None) for level, (iou, _) in sorted(scan.pairs[(a, b)].items())
            ]
            for a, b in shown
        }
        colors = {label: PAIR_COLORS[k % len(PAIR_COLORS)] for k, label in enumerate(curves)}
        path = plot_against_sparsity(
            curves,
            figures / f"iou-{slug(name)}.png",
            title=f"IoU of kept weights, {name}",
            ylabel="IoU of kept weights",
            baselines=baseline,
            colors=colors,
        )
        caption = f"IoU against remaining weights, {name} ({len(shown)} pairs)."
        if hidden:
            caption += f" Left out: {len(hidden)} more pairs."
        section.blocks.append(Figure(path, caption))
    rows = []
    for level, sparsity in scan.levels.items():
        at = {pair: values[level] for pair, values in scan.pairs.items() if level in values}
        if not at:
            continue
        mean_iou = sum(iou for iou, _ in at.values()) / len(at)
        mean_random = sum(r for _, r in at.values()) / len(at)
        (a, b), (iou, rand) = max(at.items(), key=lambda item: item[1][0] - item[1][1])
        rows.append(
            [
                f"{level} ({pct(sparsity)})",
                f"{_equal_density_iou(sparsity):.3f}",
                str(len(at)),
                f"{mean_iou:.3f}",
                f"{mean_random:.3f}",
                f"{a} / {b}: {iou:.3f} (random {rand:.3f})",
            ]
        )
    section.blocks.append(
        Table(
            [
                "level",
                "p/(2−p)",
                "pairs",
                "mean IoU",
                "mean random IoU (per-layer densities)",
                "pair furthest above random",
            ],
            rows,
            "Overlap at every level",
        )
    )
    last = rows[-1]
    section.facts.append(
        f"At level {last[0]} the mean IoU over {last[2]} pairs of tickets is {last[3]}, against {last[1]} "
        f"for two random masks of that density (p/(2−p)) and {last[4]} with the pairs' per-layer densities."
    )
    return section


def kernel_tickets(files: StudyFiles) -> tuple[list[TicketEntry], list[TicketEntry], TicketEntry | None]:
    """(tickets shown, tickets left out, the one whose kernel maps are drawn)."""
    levels = _levels(files)
    level = _nearest(levels, REPRESENTATIVE_SPARSITY)
    reference = _heatmap_ticket(files, level)
    chosen, left_out = ranked(files.tickets, MAX_LAYER_TICKETS)
    if reference is not None and reference not in chosen:
        chosen = [reference, *chosen[:-1]]
        left_out = [t for t in files.tickets if t not in chosen]
    return chosen, left_out, reference


def structure_section(files: StudyFiles, scan: LevelScan, figures: Path) -> Section:
    from cvlth.analysis.plots.bars import plot_layer_sparsity, plot_zero_kernels
    from cvlth.analysis.plots.curves import plot_against_sparsity
    from cvlth.analysis.plots.heatmaps import plot_kernel_heatmaps

    section = Section("Fully pruned kernels and layer sparsity", "structure")
    if not scan.levels:
        section.blocks.append("No ticket masks in tickets.json.")
        return section
    chosen, left_out, reference = kernel_tickets(files)
    colors = ticket_colors(files, chosen)
    text = (
        "Fully pruned kernels count k×k kernels (k > 1) with no weight kept; 1×1 convolutions are left out. "
        "The share of such kernels is shown at every level, beside (dotted) "
        "the share expected for a random mask with the same per-layer densities."
    )
    if left_out:
        text += f" Left out: {', '.join(t.label for t in left_out)}."
    section.blocks.append(text)
    reports = {label: by_level for label, by_level in scan.kernels.items() if by_level}
    curves = {
        label: [(scan.levels[k], 100.0 * r.zero_kernel_ratio, None) for k, r in sorted(by_level.items())]
        for label, by_level in reports.items()
    }
    baselines = {
        label: [
            (scan.levels[k], 100.0 * r.expected_random_zero_kernel_ratio, None)
            for k, r in sorted(by_level.items())
        ]
        for label, by_level in reports.items()
    }
    path = plot_against_sparsity(
        curves,
        figures / "zero-kernel-ratio.png",
        title="Fully pruned k×k kernels against sparsity",
        ylabel="fully pruned k×k kernels (%)",
        baselines=baselines,
        baseline_label="random mask, same per-layer densities",
        colors=colors,
    )
    section.blocks.append(
        Figure(path, "Share of fully pruned k×k kernels at every level, one line per ticket.")
    )
    rows = []
    for level, sparsity in scan.levels.items():
        cells = []
        for label in reports:
            r = reports[label].get(level)
            cells.append(
                "–"
                if r is None
                else f"{100 * r.zero_kernel_ratio:.2f}% (random {100 * r.expected_random_zero_kernel_ratio:.2f}%)"
            )
        rows.append([f"{level} ({pct(sparsity)})", *cells])
    section.blocks.append(
        Table(["level", *reports], rows, "Fully pruned k×k kernels (share of all k×k kernels)")
    )

    level = _nearest(scan.levels, REPRESENTATIVE_SPARSITY)
    sparsity = scan.levels[level]
    at = {label: by_level[level] for label, by_level in reports.items() if level in by_level}
    if not at:
        return section
    section.blocks.append(
        f"Per layer, at level {level} ({pct(sparsity)} sparsity, the level nearest the paper's 79.03%); "
        "layers in network order."
    )
    path = plot_layer_sparsity(
        {label: r.layer_sparsity() for label, r in at.items()},
        figures / "layer-sparsity.png",
        title=f"Per-layer sparsity at {pct(sparsity)} (level {level})",
        colors=colors,
    )
    section.blocks.append(Figure(path, "Sparsity of every pruned layer, one bar per ticket."))
    ref_name = reference.label if reference is not None and reference.label in at else next(iter(at))
    path = plot_zero_kernels(
        {label: r.zero_kernel_counts() for label, r in at.items()},
        at[ref_name].expected_random_counts(),
        figures / "zero-kernels.png",
        title=f"Fully pruned kernels per layer at {pct(sparsity)} (level {level})",
        colors=colors,
    )
    section.blocks.append(
        Figure(
            path,
            f"Fully pruned k×k kernels per layer (log scale); black ticks: expected count for a random mask "
            f"with the per-layer densities of {ref_name}.",
        )
    )
    ref = at[ref_name]
    section.facts.append(
        f"At {pct(sparsity)} sparsity, {ref_name} has {ref.zero_kernels:,} fully pruned k×k kernels of "
        f"{ref.kernels:,}, against {ref.expected_random_zero_kernels:,.1f} expected for a random mask with the "
        "same per-layer densities."
    )
    if reference is not None and level in reference.levels:
        path = plot_kernel_heatmaps(
            files.mask(reference, level),
            figures / "kernel-heatmap.png",
            title=f"{reference.label}: fully pruned kernels (bright) at {pct(sparsity)} sparsity",
        )
        files.release_masks()
        section.blocks.append(
            Figure(path, f"Kernel maps of {reference.label}: rows = output, columns = input channels.")
        )
    return section
