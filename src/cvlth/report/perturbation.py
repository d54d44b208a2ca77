"""The perturbation section: each IMP ticket beside variants of its mask, at measured sparsity."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cvlth.report.document import Figure, Section, Table, pct, pm, slug
from cvlth.report.inputs import StudyFiles
from cvlth.results.outputs import PerturbationPoint

VARIANT_ORDER = ("ticket", "complement", "complement_matched", "random", "random_layerwise", "perturbed")
# Labels of the mask variants; a variant not listed (a newer one) is shown under its own name.
VARIANT_LABELS = {
    "ticket": "imp ticket",
    "complement": "complement 1 − m",
    "complement_matched": "complement, count-matched",
    "random": "random (global)",
    "random_layerwise": "random, layer-matched",
}


def _perturbation_rows(curves: Sequence[Sequence[PerturbationPoint]]) -> list[list[str]]:
    """One row per ticket level (per sparsity for points without a level), one cell per variant."""

    def key(point: PerturbationPoint) -> tuple[int, float]:
        return (0, point.level) if point.level is not None else (1, point.sparsity)

    rows = []
    for k in sorted({key(p) for points in curves for p in points}):
        cells = []
        for points in curves:
            p = next((p for p in points if key(p) == k), None)
            cells.append("–" if p is None else f"{pm(p.mean, p.std)} (n={p.n}) at {pct(p.sparsity)}")
        rows.append([str(k[1]) if k[0] == 0 else "–", *cells])
    return rows


def _variant_label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


def perturbation_section(files: StudyFiles, figures: Path) -> Section:
    from cvlth.analysis.plots.curves import plot_perturbation

    section = Section("Perturbation sensitivity", "perturbation")
    section.blocks.append(
        "Each IMP ticket fine-tuned beside variants of its mask (mean ± std over seeds): the complement "
        "1 − m (sparsity 1 − s), the complement subsampled per layer to the ticket's kept count, a random "
        "mask with the ticket's per-layer counts and the ticket with a share of its kept and pruned "
        "entries swapped. Every point sits at the sparsity of the mask actually fine-tuned."
    )
    dense = {
        (files.source(r.source).pretraining, r.task): (r.dense.mean, r.dense.std) for r in files.matching
    }
    groups: dict[tuple[str, str], dict[str, Sequence[PerturbationPoint]]] = {}
    for curve in files.perturbation or []:
        groups.setdefault((curve.source, curve.task), {})[curve.variant] = curve.points
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    for (source, task), unordered in groups.items():
        variants = dict(sorted(unordered.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))
        curves = {
            _variant_label(v): [(p.sparsity, p.mean, p.std) for p in points] for v, points in variants.items()
        }
        path = plot_perturbation(
            curves,
            figures / f"perturbation-{slug(source)}-{slug(task)}.png",
            title=f"{source} → {task}",
            metric=f"test {files.study.task_metric(task) if task in files.study.tasks else 'metric'}",
            dense=dense.get((files.source(source).pretraining, task)),
        )
        section.blocks.append(Figure(path, f"{source} → {task}: mask variants at their measured sparsity."))
        rows = _perturbation_rows(list(variants.values()))
        section.blocks.append(
            Table(
                ["level", *(_variant_label(v) for v in variants)],
                rows,
                f"{source} → {task}: mean ± std (seeds) at the measured sparsity",
            )
        )
        if rows:
            shown = [
                f"{_variant_label(v)} {c}" for v, c in zip(variants, rows[-1][1:], strict=True) if c != "–"
            ]
            section.facts.append(f"{source} → {task} at level {rows[-1][0]}: " + "; ".join(shown) + ".")
    if not groups:
        section.blocks.append("perturbation.json holds no curves.")
    return section
