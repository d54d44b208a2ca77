"""What the claims of :mod:`cvlth.results.claims` are checked on, gathered from a study: what each
ticket source is (from the study config) and the mask measures of its upstream IMP tickets (IoU
between pre-trainings at the first and last level, fully pruned kernels near 79.03%)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cvlth.results.claims import ClaimInputs, MaskFacts, SourceInfo
from cvlth.results.matching import MatchingResult
from cvlth.results.outputs import PerturbationCurve, TicketEntry
from cvlth.study.config import PretrainEntry, StudyConfig

KERNEL_SPARSITY = 0.7903  # the paper's kernel figures are at 79.03% (level 7)
IMPORT_KINDS = {"torchvision": "supervised", "timm": "supervised", "simclr": "simclr", "moco": "moco"}
OBJECTIVE_KINDS = ("supervised", "simclr", "moco")
DENSE_PREDICTION = ("detection", "segmentation")

MaskLoader = Callable[[TicketEntry, int], Any]  # (ticket, level) -> cvlth.masks.Mask


def pretraining_kind(entry: PretrainEntry) -> str | None:
    """supervised, simclr or moco: the objective θ_p was trained with (or its import format's)."""
    for recipe in (entry.recipe, entry.upstream):
        if recipe is not None and recipe.objective.name in OBJECTIVE_KINDS:
            return recipe.objective.name
    return IMPORT_KINDS.get(entry.import_source)


def simclr_temperature(entry: PretrainEntry) -> float | None:
    recipe = entry.recipe or entry.upstream
    if recipe is None or recipe.objective.name != "simclr":
        return None
    return float(recipe.objective.options.get("temperature", 0.5))


def source_infos(study: StudyConfig) -> dict[str, SourceInfo]:
    """Every (pre-training, finder) label of the matching table -> what it is."""
    infos = {}
    for name, entry in study.pretrainings.items():
        for f in study.finders:
            infos[f"{name}/{f.name}"] = SourceInfo(
                name, pretraining_kind(entry), f.name, f.method, f.stage, f.rewind
            )
    return infos


def claim_inputs(
    study: StudyConfig,
    matching: Sequence[MatchingResult],
    perturbation: Sequence[PerturbationCurve] | None,
    masks: MaskFacts | None,
) -> ClaimInputs:
    temperatures = {name: simclr_temperature(entry) for name, entry in study.pretrainings.items()}
    return ClaimInputs(
        matching=list(matching),
        sources=source_infos(study),
        task_data={task: recipe.data.name for task, recipe in study.tasks.items()},
        dense_prediction=frozenset(
            task for task, recipe in study.tasks.items() if recipe.objective.name in DENSE_PREDICTION
        ),
        domain_shift=tuple(study.domain_shift_tasks),
        task_groups={name: tuple(tasks) for name, tasks in study.task_groups.items()},
        perturbation=perturbation,
        masks=masks,
        simclr_temperatures={name: t for name, t in temperatures.items() if t is not None},
    )


def mask_facts(
    study: StudyConfig, tickets: Sequence[TicketEntry], load: MaskLoader, release: Callable[[], None]
) -> MaskFacts:
    """IoU of upstream IMP masks between pre-trainings (same finder, same finder seed) at the first
    and last common level, and fully pruned kernels of each pre-training's first upstream IMP
    finder at the level nearest 79.03%. ``release`` forgets loaded masks (one level at a time)."""
    from cvlth.analysis.overlap import random_iou

    upstream = [t for t in tickets if t.method == "imp-upstream"]
    facts = MaskFacts()
    order = list(study.pretrainings)
    for i, a in enumerate(order):
        for b in order[i + 1 :]:
            for finder in dict.fromkeys(t.finder for t in upstream):
                pairs = [
                    (ta, tb)
                    for ta in upstream
                    for tb in upstream
                    if (ta.pretraining, tb.pretraining) == (a, b)
                    and ta.finder == tb.finder == finder
                    and ta.finder_seed == tb.finder_seed
                ]
                levels = (
                    sorted(set.intersection(*(set(t.levels) for pair in pairs for t in pair)))
                    if pairs
                    else []
                )
                if len(levels) < 2:
                    continue
                first, last = levels[0], levels[-1]
                values = []
                for ta, tb in pairs:
                    iou_first = load(ta, first).iou(load(tb, first))
                    release()
                    ma, mb = load(ta, last), load(tb, last)
                    values.append((iou_first, ma.iou(mb), random_iou(ma, mb)))
                    release()
                sparsity = pairs[0][0].levels
                facts.iou[(a, b, finder)] = (sparsity[first].sparsity, sparsity[last].sparsity, values)
    _kernel_facts(facts, order, upstream, load, release)
    return facts


def _kernel_facts(
    facts: MaskFacts,
    order: list[str],
    upstream: list[TicketEntry],
    load: MaskLoader,
    release: Callable[[], None],
) -> None:
    from cvlth.analysis.kernels import kernel_report

    for pretraining in order:
        own = [t for t in upstream if t.pretraining == pretraining]
        if not own:
            continue
        finder = own[0].finder
        runs = [t for t in own if t.finder == finder]
        levels = runs[0].levels
        level = min(levels, key=lambda k: (abs(levels[k].sparsity - KERNEL_SPARSITY), k))
        values = []
        for ticket in runs:
            if level in ticket.levels:
                values.append(halves(kernel_report(load(ticket, level))))
                release()
        facts.kernels[pretraining] = (levels[level].sparsity, values)


def halves(report: Any) -> tuple[float, float, float]:
    """(share of k×k kernels fully pruned, that share in the first half of the k×k layers in network
    order, and in the second half) of a :class:`~cvlth.analysis.kernels.KernelReport`."""
    spatial = [layer for layer in report.layers if not layer.pointwise]
    middle = len(spatial) // 2

    def share(layers: list[Any]) -> float:
        kernels = sum(layer.kernels for layer in layers)
        return sum(layer.zero_kernels for layer in layers) / kernels if kernels else 0.0

    return share(spatial), share(spatial[:middle]), share(spatial[middle:])
