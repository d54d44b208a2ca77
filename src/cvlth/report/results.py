"""The result sections: what was run, accuracy against remaining weights, matching tables, and
the summary's statements about them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from cvlth.report.document import UNDECIDED, Figure, Section, Table, ci, num, pct, pm, slug
from cvlth.report.inputs import StudyFiles
from cvlth.report.styles import styles
from cvlth.results.matching import (
    ALL_TASKS,
    DECISION_TEXT,
    PRETRAINING_TASK,
    MatchingResult,
    MatchingRow,
    SeedStats,
    margin_text,
    runs_needed_text,
    size_text,
    task_text,
    universal_matching,
)


def setup_section(files: StudyFiles, now: datetime) -> Section:
    study = files.study
    b = study.backbone
    finders = []
    for f in study.finders:
        detail = f.method if f.method != "imp" else f"imp, {f.stage}, rewind to {f.rewind}"
        if f.seeds is not None:  # several independent finder runs, or one with another seed
            detail += f", finder seeds {', '.join(str(s) for s in f.seeds)}"
        finders.append(f"{f.name} ({detail})")
    sparsities = [1.0 - (1.0 - study.fraction) ** level for level in range(1, study.rounds + 1)]
    grid = (
        ", ".join(pct(s) for s in sparsities)
        if len(sparsities) <= 8
        else (f"{pct(sparsities[0])}, {pct(sparsities[1])}, …, {pct(sparsities[-1])}")
    )
    table = Table(
        ["", ""],
        [
            ["backbone", f"{b.arch}, width {b.width}, {b.stem} stem, {b.in_channels} input channel(s)"],
            ["pre-trainings", ", ".join(study.pretrainings)],
            ["tasks", ", ".join(study.tasks)],
            ["ticket finders", "; ".join(finders)],
            ["rounds", f"{study.rounds} (pruning {study.fraction:.0%} per round: {grid})"],
            ["transfer levels", ", ".join(str(level) for level in study.levels)],
            ["seeds", ", ".join(str(s) for s in study.seeds)],
            [
                "metric",
                "test "
                + ", ".join(f"{study.task_metric(t)} ({t})" for t in study.tasks)
                + " at the best validation epoch; on the pre-training task (upstream IMP): the objective's "
                "metric (top-1 accuracy, or Eq. 2 retrieval accuracy on backbone features for SimCLR/MoCo)",
            ],
            ["perturbation", "yes" if study.perturbation is not None else "no"],
            ["results written", files.results_time.strftime("%Y-%m-%d %H:%M")],
            ["report generated", now.strftime("%Y-%m-%d %H:%M")],
        ],
    )
    return Section("What was run", "setup", [table])


def task_order(files: StudyFiles) -> list[str]:
    """Fig. 2's pre-training task first, then the study's tasks, then any other task named."""
    ordered = [t for t in (PRETRAINING_TASK, *files.study.tasks) if any(r.task == t for r in files.matching)]
    return ordered + sorted({r.task for r in files.matching} - set(ordered))


def _metric_label(results: Sequence[MatchingResult]) -> str:
    """``test accuracy``, or every metric with its sources when they differ (Fig. 2: top-1 for
    supervised, Eq. 2 retrieval accuracy on backbone features for SimCLR/MoCo)."""
    metrics = list(dict.fromkeys(r.metric for r in results))
    return f"test {metrics[0]}" if len(metrics) == 1 else "test " + " / ".join(metrics)


def accuracy_section(files: StudyFiles, figures: Path) -> Section:
    from cvlth.analysis.plots.curves import plot_accuracy_by_source

    section = Section("Accuracy vs remaining weights", "accuracy")
    colors, finder_styles = styles(files)
    section.blocks.append(
        "One line per ticket source (its mean over runs; the band is the mean's 95% confidence interval, "
        "none for a single run); colour = pre-training, line style "
        "and marker = ticket finder. Dashed horizontal lines: each pre-training's dense model; the hatched "
        "band below each is its matching band [mean − std, mean]: a ticket whose mean is at or above the "
        "band's lower edge matches. The pre-training task (the paper's Fig. 2) has one figure per "
        "pre-training: its upstream IMP tickets after their round's training against θ_p untrained."
    )
    panels: list[tuple[str, str, list[MatchingResult]]] = []  # (figure name, title, results)
    for task in task_order(files):
        results = [r for r in files.matching if r.task == task]
        if task == PRETRAINING_TASK:
            for pretraining in dict.fromkeys(files.source(r.source).pretraining for r in results):
                own = [r for r in results if files.source(r.source).pretraining == pretraining]
                panels.append((f"pretraining-{pretraining}", f"{pretraining}: its own {task}", own))
        else:
            panels.append((task, task, results))
    for name, title, results in panels:
        metric = _metric_label(results)
        curves = {
            r.source: [(row.sparsity, row.stats.mean, _half_width(row.stats)) for row in r.rows]
            for r in results
        }
        dense: dict[str, tuple[float, float]] = {}
        for r in results:
            dense.setdefault(files.source(r.source).pretraining, (r.dense.mean, r.dense.std))
        line_colors = {
            **{r.source: colors.get(files.source(r.source).pretraining, "#333333") for r in results},
            **colors,
        }
        line_styles = {
            r.source: finder_styles.get(files.source(r.source).finder, ("-", "o")) for r in results
        }
        path = plot_accuracy_by_source(
            curves,
            dense,
            figures / f"accuracy-{slug(name)}.png",
            title=f"{title}: {metric} vs remaining weights",
            metric=metric,
            colors=line_colors,
            styles=line_styles,
        )
        section.blocks.append(Figure(path, f"{title}: {metric} of every ticket source."))
    return section


def _half_width(stats: SeedStats) -> float | None:
    """Half the width of the mean's 95% interval (the plots' band), None for a single run."""
    interval = stats.ci95
    return None if interval is None else (interval[1] - interval[0]) / 2


def _cell(row: MatchingRow) -> str:
    """mean ± std [95% CI] (n), the headline verdict and, when the runs do not settle it, undecided."""
    mark = "✓ matching" if row.matching else "✗"
    text = f"{pm(row.stats.mean, row.stats.std)} {ci(row.stats.ci95)} (n={row.stats.n}) {mark}"
    margin = f"; mean − threshold {margin_text(row.margin)}"
    needed = runs_needed_text(row)
    return text + margin + ("" if row.decided else f" · {UNDECIDED}" + (f" ({needed})" if needed else ""))


def matching_section(files: StudyFiles) -> Section:
    section = Section("Extreme matching sparsity", "matching")
    section.blocks.append(
        "A ticket matches when its mean over its runs (every finder seed x every seed) is at least the "
        "dense mean minus one standard deviation "
        "(dense of its own pre-training); the extreme matching sparsity is the highest sparsity at which it "
        "matches (none: it matches at no sparsity tested), beside its monotone reading: the highest "
        "sparsity up to which every sparsity tested matches. Every mean carries its 95% confidence "
        "interval (Student t over its runs, [–] for one run) and n, its number of runs. "
        + DECISION_TEXT
        + " Undecided cells are greyed."
    )
    tasks = task_order(files)
    sources = list(dict.fromkeys(r.source for r in files.matching))
    by_key = {(r.source, r.task): r for r in files.matching}
    groups = dict(files.study.task_groups)
    universal = {(u.source, u.group): u for u in universal_matching(files.matching, groups)}
    if PRETRAINING_TASK in tasks:
        section.blocks.append(
            f"The {PRETRAINING_TASK} column is the paper's Fig. 2: each upstream IMP ticket after its "
            "round's training and θ_p untrained, on the pre-training task's test split, in the "
            "objective's metric (top-1 accuracy supervised, Eq. 2 retrieval accuracy on backbone features for SimCLR/MoCo); "
            "θ_p is evaluated without training by each IMP run, so its std is 0 and the threshold is its "
            "value (unless its objective heads are new, drawn from each finder seed)."
        )
    section.blocks.append(
        "Universal: the highest sparsity, among those evaluated on every task of the group, at which the "
        "source matches on all of them at once; `all` is every downstream task of the source, the other "
        "columns are the study's `task_groups`. A task-specific finder (downstream IMP) has none: each "
        "task has its own ticket."
    )
    group_names = [ALL_TASKS, *groups]
    rows = []
    for source in sources:
        cells = [_extremes(by_key[(source, t)]) if (source, t) in by_key else "–" for t in tasks]
        universal_cells = []
        for group in group_names:
            u = universal.get((source, group))
            universal_cells.append(
                "–"
                if u is None
                else f"{pct(u.universal_matching_sparsity)} / {pct(u.monotone_universal_sparsity)}"
            )
        rows.append([source, *cells, *universal_cells])
    headers = [
        "universal (all downstream tasks)",
        *(f"universal ({g}: {', '.join(groups[g])})" for g in groups),
    ]
    section.blocks.append(
        Table(
            ["ticket source", *tasks, *headers],
            rows,
            "Extreme matching sparsity, the paper's reading / monotone (rows: source)",
        )
    )
    undecided = sum(r.undecided for r in files.matching)
    total = sum(len(r.rows) for r in files.matching)
    section.blocks.append(f"{undecided} of {total} matching verdicts are undecided by their runs.")
    for source in sources:
        results = {t: by_key[(source, t)] for t in tasks if (source, t) in by_key}
        sparsities = sorted({row.sparsity for r in results.values() for row in r.rows})
        header = ["sparsity", "remaining", *(f"{task_text(r)} ({r.metric})" for r in results.values())]
        table_rows = [
            ["test size", "", *(size_text(r.test_size) for r in results.values())],
            [
                "dense",
                "100%",
                *(
                    f"{pm(r.dense.mean, r.dense.std)} {ci(r.dense.ci95)} (n={r.dense.n})"
                    for r in results.values()
                ),
            ],
            ["threshold", "", *(f"≥ {num(r.threshold)}" for r in results.values())],
        ]
        for s in sparsities:
            cells = []
            for r in results.values():
                row = next((row for row in r.rows if row.sparsity == s), None)
                cells.append("–" if row is None else _cell(row))
            table_rows.append([pct(s), pct(1.0 - s), *cells])
        undecided = sum(r.undecided for r in results.values())
        caption = f"{source}: test metric per task, mean ± std [95% CI] (n); {undecided} undecided"
        section.blocks.append(Table(header, table_rows, caption))
    return section


def beside_section(files: StudyFiles) -> Section:
    """The matching rule in the metrics read beside each task's headline one (detection's AP50, AP75
    and VOC07 11-point AP50; segmentation's last mIoU beside its best): per source, one table."""
    section = Section("Beside the headline metrics", "beside")
    section.blocks.append(
        "The same matching rule, in the metrics read beside each task's headline one: detection's AP50 "
        "(map50), AP75 (map75) and VOC07's 11-point AP50 (voc07_ap50) beside AP@[.5:.95] (map); "
        "segmentation's last evaluation (miou@final) beside the reported mIoU, the best over "
        "evaluations as the paper's. Extreme matching sparsity, the paper's reading / monotone:"
    )
    sources = list(dict.fromkeys(r.source for r in files.beside))
    for source in sources:
        results = [r for r in files.beside if r.source == source]
        sparsities = sorted({row.sparsity for r in results for row in r.rows})
        header = ["sparsity", *(f"{task_text(r)} ({r.metric})" for r in results)]
        table_rows = [
            ["extreme", *(_extremes(r) for r in results)],
            [
                "dense",
                *(f"{pm(r.dense.mean, r.dense.std)} {ci(r.dense.ci95)} (n={r.dense.n})" for r in results),
            ],
        ]
        for sparsity in sparsities:
            cells = []
            for r in results:
                row = next((row for row in r.rows if row.sparsity == sparsity), None)
                cells.append("–" if row is None else _cell(row))
            table_rows.append([pct(sparsity), *cells])
        section.blocks.append(Table(header, table_rows, f"{source}: metrics beside the headline one"))
    return section


def _extremes(result: MatchingResult) -> str:
    """The paper's reading / the monotone one."""
    return f"{pct(result.extreme_matching_sparsity)} / {pct(result.monotone_matching_sparsity)}"


def matching_facts(files: StudyFiles) -> list[str]:
    facts = []
    for task in task_order(files):
        results = sorted(
            (r for r in files.matching if r.task == task),
            key=lambda r: -1.0 if r.extreme_matching_sparsity is None else r.extreme_matching_sparsity,
            reverse=True,
        )
        matched = [
            f"{r.source} up to {pct(r.extreme_matching_sparsity)} (every level up to "
            f"{pct(r.monotone_matching_sparsity)})"
            for r in results
            if r.extreme_matching_sparsity is not None
        ]
        never = [r.source for r in results if r.extreme_matching_sparsity is None]
        tested = max((row.sparsity for r in results for row in r.rows), default=None)
        parts = []
        if matched:
            parts.append("highest matching sparsity: " + "; ".join(matched))
        if never:
            parts.append("no match at any sparsity tested: " + ", ".join(never))
        facts.append(f"{task} (sparsities tested up to {pct(tested)}): " + "; ".join(parts) + ".")
    universal = [
        u
        for u in universal_matching(files.matching, files.study.task_groups)
        if len(u.tasks) > 1 and u.group == ALL_TASKS
    ]
    if universal:
        facts.append(
            "Universal (matching on every downstream task at once): "
            + "; ".join(f"{u.source} up to {pct(u.universal_matching_sparsity)}" for u in universal)
            + "."
        )
    return facts
