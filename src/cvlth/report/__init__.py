"""The study report: every result of a study in one offline HTML page and one Markdown file.

:func:`write_report` reads what ``cvlth study`` leaves in ``<store>/studies/<name>/``
(``study.yaml``, ``matching.json``, ``tickets.json`` and, if present, ``perturbation.json``), loads
the ticket masks it needs from the store and writes, into that same folder:

* ``figures/*.png`` -- accuracy vs remaining weights per task and on each pre-training task
  (Fig. 2), IoU between tickets and the share of fully pruned kernels at every level (curves
  against sparsity, beside their random-mask baselines), per-layer sparsity and pruned kernels at
  the level nearest 79.03%, a kernel heatmap, perturbation curves at the measured sparsity;
* ``report.md`` -- tables and links to the figures;
* ``report.html`` -- the same, self-contained: figures embedded as ``data:`` URIs, inline CSS, no
  external reference of any kind, so it opens offline and can be mailed as one file.

Everything shown is computed from those files; the "what this shows" section only restates numbers.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cvlth.atomic import atomic_write_text
from cvlth.errors import CvlthError
from cvlth.store import Store
from cvlth.study.matching import (
    PRETRAINING_TASK,
    MatchingResult,
    MatchingRow,
    SeedStats,
    universal_matching,
)

REPRESENTATIVE_SPARSITY = 0.7903  # the paper shows kernels and layer sparsity at 79.03% (level 7)
MAX_IOU_TICKETS = 10  # tickets whose pairwise IoU is computed at every level
MAX_IOU_PAIRS = 12  # curves per IoU figure
MAX_LAYER_TICKETS = 6  # bars per layer
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
VARIANT_ORDER = ("ticket", "complement", "complement_matched", "random", "perturbed")
METHOD_PRIORITY = {"imp-upstream": 0, "omp": 1, "imp-downstream": 2, "random": 3}
# Labels of the mask variants; a variant not listed (a newer one) is shown under its own name.
VARIANT_LABELS = {
    "ticket": "imp ticket",
    "complement": "complement 1 − m",
    "complement_matched": "complement, count-matched",
}
PAIR_COLORS = (
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


class ReportError(CvlthError):
    """The study folder lacks a file the report needs, or a file is malformed."""


# --- inputs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    """One ticket finder run of tickets.json: its masks per level."""

    label: str
    source: str
    pretraining: str
    finder: str
    task: str | None
    method: str
    levels: dict[int, tuple[float, str]]  # level -> (sparsity, mask path relative to the store)


@dataclass(frozen=True)
class PerturbationPoint:
    """One point of a perturbation curve: at the sparsity of the mask actually fine-tuned."""

    sparsity: float
    mean: float
    std: float
    n: int
    level: int | None = None  # the ticket's level (None in files written before levels were stored)


@dataclass
class StudyFiles:
    folder: Path
    store: Path
    study: Any  # StudyConfig
    matching: list[MatchingResult]
    tickets: list[Ticket]
    perturbation: list[dict[str, Any]] | None  # source, task, variant, points: list[PerturbationPoint]
    results_time: datetime
    _masks: dict[str, Any] = field(default_factory=dict)

    def rerun_hint(self) -> str:
        return _rerun_hint(self.folder, self.store)

    def mask(self, ticket: Ticket, level: int):  # noqa: ANN201 - Mask (torch is imported lazily)
        from cvlth.masks import Mask

        relative = ticket.levels[level][1]
        if relative not in self._masks:
            path = Store(self.store).artefact_path(relative, f"mask path in {self.folder / 'tickets.json'}")
            if not path.is_file():
                raise ReportError(
                    f"mask file {path} (ticket {ticket.label}, level {level}, listed in "
                    f"{self.folder / 'tickets.json'}) is missing",
                    hint=f"pass the store the study ran in with --store, or {self.rerun_hint()}",
                )
            self._masks[relative] = Mask.load(path)
        return self._masks[relative]


def _rerun_hint(folder: Path, store: Path) -> str:
    return f"run `cvlth study {folder / 'study.yaml'} --store {store}` (finished runs are reused)"


def _read_json(path: Path, hint: str) -> Any:
    if not path.is_file():
        raise ReportError(f"{path} not found: the study has not finished writing its results", hint=hint)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path} is not readable JSON ({exc})", hint=hint) from exc


def _malformed(path: Path, index: int, exc: Exception, hint: str) -> ReportError:
    return ReportError(f"{path} is malformed: entry {index}: {type(exc).__name__}: {exc}", hint=hint)


def _parse_matching(data: Any, path: Path, hint: str) -> list[MatchingResult]:
    if not isinstance(data, list):
        raise ReportError(f"{path} is malformed: expected a list of results", hint=hint)
    results = []
    for index, entry in enumerate(data):
        try:
            rows = tuple(
                MatchingRow(
                    sparsity=float(row["sparsity"]),
                    stats=SeedStats(mean=float(row["mean"]), std=float(row["std"]), n=int(row["n"])),
                    matching=bool(row["matching"]),
                )
                for row in entry["rows"]
            )
            dense = entry["dense"]
            results.append(
                MatchingResult(
                    source=str(entry["source"]),
                    task=str(entry["task"]),
                    dense=SeedStats(mean=float(dense["mean"]), std=float(dense["std"]), n=int(dense["n"])),
                    rows=rows,
                    metric=str(entry.get("metric", "accuracy")),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(path, index, exc, hint) from exc
    return results


def _ticket_label(entry: dict[str, Any]) -> str:
    source = str(entry["source"])
    return f"{source}→{entry['task']}" if entry.get("task") else source


def _parse_tickets(data: Any, path: Path, hint: str) -> list[Ticket]:
    if not isinstance(data, list):
        raise ReportError(f"{path} is malformed: expected a list of ticket finder runs", hint=hint)
    tickets = []
    for index, entry in enumerate(data):
        try:
            levels = {
                int(level): (float(value["sparsity"]), str(value["mask"]))
                for level, value in entry["levels"].items()
            }
            tickets.append(
                Ticket(
                    label=_ticket_label(entry),
                    source=str(entry["source"]),
                    pretraining=str(entry["pretraining"]),
                    finder=str(entry["finder"]),
                    task=entry.get("task"),
                    method=str(entry["method"]),
                    levels=levels,
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _malformed(path, index, exc, hint) from exc
    return tickets


def _parse_perturbation(data: Any, path: Path, hint: str) -> list[dict[str, Any]]:
    if not isinstance(data, list):
        raise ReportError(f"{path} is malformed: expected a list of curves", hint=hint)
    curves = []
    for index, entry in enumerate(data):
        try:
            points = [
                PerturbationPoint(
                    float(p["sparsity"]),
                    float(p["mean"]),
                    float(p["std"]),
                    int(p["n"]),
                    None if p.get("level") is None else int(p["level"]),
                )
                for p in entry["points"]
            ]
            curves.append(
                {"source": str(entry["source"]), "task": str(entry["task"]), "variant": str(entry["variant"])}
                | {"points": points}
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _malformed(path, index, exc, hint) from exc
    return curves


def read_study_files(study_dir: Path, store_root: Path | None = None) -> StudyFiles:
    """Load and check the files of a study folder (raises :class:`ReportError` naming the fix)."""
    from cvlth.study.config import load_study

    folder = Path(study_dir)
    store = Path(store_root) if store_root is not None else folder.parent.parent
    generic = "run `cvlth study CONFIG --store STORE` first; it writes STORE/studies/<name>/"
    if not folder.is_dir():
        raise ReportError(f"study folder {folder} does not exist", hint=generic)
    config_path = folder / "study.yaml"
    if not config_path.is_file():
        raise ReportError(f"{config_path} not found: {folder} is not a study folder", hint=generic)
    study = load_study(config_path)
    hint = _rerun_hint(folder, store)
    matching_path = folder / "matching.json"
    matching = _parse_matching(_read_json(matching_path, hint), matching_path, hint)
    tickets_path = folder / "tickets.json"
    tickets = _parse_tickets(_read_json(tickets_path, hint), tickets_path, hint)
    perturbation_path = folder / "perturbation.json"
    perturbation = None
    if perturbation_path.exists():
        perturbation = _parse_perturbation(_read_json(perturbation_path, hint), perturbation_path, hint)
    return StudyFiles(
        folder=folder,
        store=store,
        study=study,
        matching=matching,
        tickets=tickets,
        perturbation=perturbation,
        results_time=datetime.fromtimestamp(matching_path.stat().st_mtime),
    )


# --- document model: rendered both as Markdown and as HTML ---------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Any] = field(default_factory=list)  # str (paragraph), list[str] (bullets), Table, Figure


def _pct(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"


def _num(value: float) -> str:
    return f"{value:.4f}"


def _pm(mean: float, std: float) -> str:
    return f"{_num(mean)} ± {_num(std)}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


# --- sections -----------------------------------------------------------------------------


def _header(files: StudyFiles, now: datetime) -> Section:
    study = files.study
    b = study.backbone
    finders = []
    for f in study.finders:
        detail = f.method if f.method != "imp" else f"imp, {f.stage}, rewind to {f.rewind}"
        finders.append(f"{f.name} ({detail})")
    sparsities = [1.0 - (1.0 - study.fraction) ** level for level in range(1, study.rounds + 1)]
    grid = (
        ", ".join(_pct(s) for s in sparsities)
        if len(sparsities) <= 8
        else (f"{_pct(sparsities[0])}, {_pct(sparsities[1])}, …, {_pct(sparsities[-1])}")
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
                "metric (top-1 accuracy, or retrieval accuracy for SimCLR/MoCo)",
            ],
            ["perturbation", "yes" if study.perturbation is not None else "no"],
            ["results written", files.results_time.strftime("%Y-%m-%d %H:%M")],
            ["report generated", now.strftime("%Y-%m-%d %H:%M")],
        ],
    )
    return Section("What was run", "setup", [table])


def _pretraining_of(source: str) -> str:
    return source.split("/", 1)[0]


def _finder_of(source: str) -> str:
    return source.split("/", 1)[-1]


def _shade(color: str, amount: float) -> str:
    """``amount`` < 0 darkens towards black, > 0 lightens towards white."""
    from matplotlib.colors import to_hex, to_rgb

    rgb = to_rgb(color)
    if amount < 0:
        return to_hex(tuple(c * (1 + amount) for c in rgb))
    return to_hex(tuple(c + (1 - c) * amount for c in rgb))


def _mix(color: str, other: str, share: float) -> str:
    from matplotlib.colors import to_hex, to_rgb

    return to_hex(
        tuple(a * (1 - share) + b * share for a, b in zip(to_rgb(color), to_rgb(other), strict=True))
    )


def _styles(files: StudyFiles) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Colours and (line style, marker) per finder.

    Colours: each pre-training has its palette colour (SimCLR orange everywhere); the sources of one
    pre-training are shades of it, in finder order (random masks greyed). Keys: pre-training names
    and sources ``<pre-training>/<finder>``.
    """
    from cvlth.analysis.plots import _colors

    colors = _colors(list(files.study.pretrainings))
    finder_styles = {f.name: FINDER_STYLES[i % len(FINDER_STYLES)] for i, f in enumerate(files.study.finders)}
    sources = [r.source for r in files.matching] + [t.source for t in files.tickets]
    finders = {f.name: f.method for f in files.study.finders}
    for pretraining, base in list(colors.items()):
        k = 0
        for finder in dict.fromkeys(_finder_of(s) for s in sources if _pretraining_of(s) == pretraining):
            source = f"{pretraining}/{finder}"
            if finders.get(finder) == "random":
                colors[source] = _mix(base, "#8c8c8c", 0.65)
            else:
                colors[source] = _shade(base, SHADES[k % len(SHADES)])
                k += 1
    return colors, finder_styles


def _ticket_colors(files: StudyFiles, tickets: Sequence[Ticket]) -> dict[str, str]:
    """Colour per ticket label: its source's colour, lighter for each further task of that source."""
    colors, _ = _styles(files)
    seen: dict[str, int] = {}
    result = {}
    for ticket in tickets:
        k = seen.get(ticket.source, 0)
        seen[ticket.source] = k + 1
        base = colors.get(ticket.source) or colors.get(ticket.pretraining, "#333333")
        result[ticket.label] = _shade(base, min(0.3 * k, 0.75))
    return result


def _tasks(files: StudyFiles) -> list[str]:
    """Fig. 2's pre-training task first, then the study's tasks, then any other task named."""
    ordered = [t for t in (PRETRAINING_TASK, *files.study.tasks) if any(r.task == t for r in files.matching)]
    return ordered + sorted({r.task for r in files.matching} - set(ordered))


def _metric_label(results: Sequence[MatchingResult]) -> str:
    """``test accuracy``, or every metric with its sources when they differ (Fig. 2: top-1 for
    supervised, retrieval accuracy for SimCLR/MoCo)."""
    metrics = list(dict.fromkeys(r.metric for r in results))
    return f"test {metrics[0]}" if len(metrics) == 1 else "test " + " / ".join(metrics)


def _accuracy_section(files: StudyFiles, figures: Path, emit: Callable[[Path], None]) -> Section:
    from cvlth.analysis.plots import plot_accuracy_by_source

    section = Section("Accuracy vs remaining weights", "accuracy")
    colors, finder_styles = _styles(files)
    section.blocks.append(
        "One line per ticket source (mean ± std over seeds as a band); colour = pre-training, line style "
        "and marker = ticket finder. Dashed horizontal lines: each pre-training's dense model; the hatched "
        "band below each is its matching band [mean − std, mean]: a ticket whose mean is at or above the "
        "band's lower edge matches. The pre-training task (the paper's Fig. 2) has one figure per "
        "pre-training: its upstream IMP tickets after their round's training against θ_p untrained."
    )
    panels: list[tuple[str, str, list[MatchingResult]]] = []  # (figure name, title, results)
    for task in _tasks(files):
        results = [r for r in files.matching if r.task == task]
        if task == PRETRAINING_TASK:
            for pretraining in dict.fromkeys(_pretraining_of(r.source) for r in results):
                own = [r for r in results if _pretraining_of(r.source) == pretraining]
                panels.append((f"pretraining-{pretraining}", f"{pretraining}: its own {task}", own))
        else:
            panels.append((task, task, results))
    for name, title, results in panels:
        metric = _metric_label(results)
        curves = {
            r.source: [(row.sparsity, row.stats.mean, row.stats.std) for row in r.rows] for r in results
        }
        dense: dict[str, tuple[float, float]] = {}
        for r in results:
            dense.setdefault(_pretraining_of(r.source), (r.dense.mean, r.dense.std))
        line_colors = {
            **{r.source: colors.get(_pretraining_of(r.source), "#333333") for r in results},
            **colors,
        }
        styles = {r.source: finder_styles.get(_finder_of(r.source), ("-", "o")) for r in results}
        path = plot_accuracy_by_source(
            curves,
            dense,
            figures / f"accuracy-{_slug(name)}.png",
            title=f"{title}: {metric} vs remaining weights",
            metric=metric,
            colors=line_colors,
            styles=styles,
        )
        emit(path)
        section.blocks.append(Figure(path, f"{title}: {metric} of every ticket source."))
    return section


def _matching_section(files: StudyFiles) -> Section:
    section = Section("Extreme matching sparsity", "matching")
    section.blocks.append(
        "A ticket matches when its mean over seeds is at least the dense mean minus one standard deviation "
        "(dense of its own pre-training); the extreme matching sparsity is the highest sparsity at which it "
        "matches (none: it matches at no sparsity tested)."
    )
    tasks = _tasks(files)
    sources = list(dict.fromkeys(r.source for r in files.matching))
    by_key = {(r.source, r.task): r for r in files.matching}
    universal = {u.source: u for u in universal_matching(files.matching)}
    if PRETRAINING_TASK in tasks:
        section.blocks.append(
            f"The {PRETRAINING_TASK} column is the paper's Fig. 2: each upstream IMP ticket after its "
            "round's training and θ_p untrained, on the pre-training task's test split, in the "
            "objective's metric (top-1 accuracy supervised, Eq. 2 retrieval accuracy for SimCLR/MoCo); "
            "θ_p is evaluated once, so its std is 0 and the threshold is its value."
        )
    section.blocks.append(
        "Universal: the highest sparsity, among those evaluated on every downstream task of the source, "
        "at which it matches on all of them at once (for a task-specific finder each task has its own ticket)."
    )
    rows = []
    for source in sources:
        cells = [
            _pct(by_key[(source, t)].extreme_matching_sparsity) if (source, t) in by_key else "–"
            for t in tasks
        ]
        u = universal.get(source)
        rows.append([source, *cells, "–" if u is None else _pct(u.universal_matching_sparsity)])
    section.blocks.append(
        Table(
            ["ticket source", *tasks, "universal (all downstream tasks)"],
            rows,
            "Extreme matching sparsity (rows: source)",
        )
    )
    for source in sources:
        results = {t: by_key[(source, t)] for t in tasks if (source, t) in by_key}
        sparsities = sorted({row.sparsity for r in results.values() for row in r.rows})
        header = ["sparsity", "remaining", *(f"{t} ({r.metric})" for t, r in results.items())]
        table_rows = [
            [
                "dense",
                "100%",
                *(f"{_pm(r.dense.mean, r.dense.std)} (n={r.dense.n})" for r in results.values()),
            ],
            ["threshold", "", *(f"≥ {_num(r.threshold)}" for r in results.values())],
        ]
        for s in sparsities:
            cells = []
            for r in results.values():
                row = next((row for row in r.rows if row.sparsity == s), None)
                if row is None:
                    cells.append("–")
                else:
                    mark = "✓ matching" if row.matching else "✗"
                    cells.append(f"{_pm(row.stats.mean, row.stats.std)} (n={row.stats.n}) {mark}")
            table_rows.append([_pct(s), _pct(1.0 - s), *cells])
        section.blocks.append(Table(header, table_rows, f"{source}: test metric per task"))
    return section


def _levels(files: StudyFiles) -> dict[int, float]:
    levels: dict[int, float] = {}
    for ticket in files.tickets:
        for level, (sparsity, _) in ticket.levels.items():
            levels.setdefault(level, sparsity)
    return dict(sorted(levels.items()))


def _nearest(levels: dict[int, float], target: float) -> int:
    return min(levels, key=lambda level: (abs(levels[level] - target), level))


def _heatmap_ticket(files: StudyFiles, level: int) -> Ticket | None:
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


def _ranked(tickets: Sequence[Ticket], limit: int) -> tuple[list[Ticket], list[Ticket]]:
    order = sorted(range(len(tickets)), key=lambda i: (METHOD_PRIORITY.get(tickets[i].method, 9), i))
    ranked = [tickets[i] for i in order]
    return ranked[:limit], ranked[limit:]


def _masks_at(files: StudyFiles, tickets: Sequence[Ticket], level: int) -> dict[str, Any]:
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
    files: StudyFiles, iou_tickets: Sequence[Ticket], kernel_tickets: Sequence[Ticket]
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
        files._masks.clear()
    return LevelScan(levels, pairs, kernels)


def _pair_groups(
    tickets: Sequence[Ticket], pairs: Sequence[tuple[str, str]]
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


def _iou_section(
    files: StudyFiles, scan: LevelScan, figures: Path, emit: Callable[[Path], None], facts: list[str]
) -> Section:
    from cvlth.analysis.plots import plot_against_sparsity

    section = Section("Mask overlap (IoU) against sparsity", "iou")
    chosen, left_out = _ranked(files.tickets, MAX_IOU_TICKETS)
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
            figures / f"iou-{_slug(name)}.png",
            title=f"IoU of kept weights, {name}",
            ylabel="IoU of kept weights",
            baselines=baseline,
            colors=colors,
        )
        emit(path)
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
                f"{level} ({_pct(sparsity)})",
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
    facts.append(
        f"At level {last[0]} the mean IoU over {last[2]} pairs of tickets is {last[3]}, against {last[1]} "
        f"for two random masks of that density (p/(2−p)) and {last[4]} with the pairs' per-layer densities."
    )
    return section


def _kernel_tickets(files: StudyFiles) -> tuple[list[Ticket], list[Ticket], Ticket | None]:
    """(tickets shown, tickets left out, the one whose kernel maps are drawn)."""
    levels = _levels(files)
    level = _nearest(levels, REPRESENTATIVE_SPARSITY)
    reference = _heatmap_ticket(files, level)
    chosen, left_out = _ranked(files.tickets, MAX_LAYER_TICKETS)
    if reference is not None and reference not in chosen:
        chosen = [reference, *chosen[:-1]]
        left_out = [t for t in files.tickets if t not in chosen]
    return chosen, left_out, reference


def _structure_section(
    files: StudyFiles, scan: LevelScan, figures: Path, emit: Callable[[Path], None], facts: list[str]
) -> Section:
    from cvlth.analysis.plots import (
        plot_against_sparsity,
        plot_kernel_heatmaps,
        plot_layer_sparsity,
        plot_zero_kernels,
    )

    section = Section("Fully pruned kernels and layer sparsity", "structure")
    if not scan.levels:
        section.blocks.append("No ticket masks in tickets.json.")
        return section
    chosen, left_out, reference = _kernel_tickets(files)
    colors = _ticket_colors(files, chosen)
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
    emit(path)
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
        rows.append([f"{level} ({_pct(sparsity)})", *cells])
    section.blocks.append(
        Table(["level", *reports], rows, "Fully pruned k×k kernels (share of all k×k kernels)")
    )

    level = _nearest(scan.levels, REPRESENTATIVE_SPARSITY)
    sparsity = scan.levels[level]
    at = {label: by_level[level] for label, by_level in reports.items() if level in by_level}
    if not at:
        return section
    section.blocks.append(
        f"Per layer, at level {level} ({_pct(sparsity)} sparsity, the level nearest the paper's 79.03%); "
        "layers in network order."
    )
    path = plot_layer_sparsity(
        {label: r.layer_sparsity() for label, r in at.items()},
        figures / "layer-sparsity.png",
        title=f"Per-layer sparsity at {_pct(sparsity)} (level {level})",
        colors=colors,
    )
    emit(path)
    section.blocks.append(Figure(path, "Sparsity of every pruned layer, one bar per ticket."))
    ref_name = reference.label if reference is not None and reference.label in at else next(iter(at))
    path = plot_zero_kernels(
        {label: r.zero_kernel_counts() for label, r in at.items()},
        at[ref_name].expected_random_counts(),
        figures / "zero-kernels.png",
        title=f"Fully pruned kernels per layer at {_pct(sparsity)} (level {level})",
        colors=colors,
    )
    emit(path)
    section.blocks.append(
        Figure(
            path,
            f"Fully pruned k×k kernels per layer (log scale); black ticks: expected count for a random mask "
            f"with the per-layer densities of {ref_name}.",
        )
    )
    ref = at[ref_name]
    facts.append(
        f"At {_pct(sparsity)} sparsity, {ref_name} has {ref.zero_kernels:,} fully pruned k×k kernels of "
        f"{ref.kernels:,}, against {ref.expected_random_zero_kernels:,.1f} expected for a random mask with the "
        "same per-layer densities."
    )
    if reference is not None and level in reference.levels:
        path = plot_kernel_heatmaps(
            files.mask(reference, level),
            figures / "kernel-heatmap.png",
            title=f"{reference.label}: fully pruned kernels (bright) at {_pct(sparsity)} sparsity",
        )
        files._masks.clear()
        emit(path)
        section.blocks.append(
            Figure(path, f"Kernel maps of {reference.label}: rows = output, columns = input channels.")
        )
    return section


def _perturbation_rows(curves: Sequence[Sequence[PerturbationPoint]]) -> list[list[str]]:
    """One row per ticket level (per sparsity for points without a level), one cell per variant."""

    def key(point: PerturbationPoint) -> tuple[int, float]:
        return (0, point.level) if point.level is not None else (1, point.sparsity)

    rows = []
    for k in sorted({key(p) for points in curves for p in points}):
        cells = []
        for points in curves:
            p = next((p for p in points if key(p) == k), None)
            cells.append("–" if p is None else f"{_pm(p.mean, p.std)} (n={p.n}) at {_pct(p.sparsity)}")
        rows.append([str(k[1]) if k[0] == 0 else "–", *cells])
    return rows


def _variant_label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


def _perturbation_section(
    files: StudyFiles, figures: Path, emit: Callable[[Path], None], facts: list[str]
) -> Section:
    from cvlth.analysis.plots import plot_perturbation

    section = Section("Perturbation sensitivity", "perturbation")
    section.blocks.append(
        "Each IMP ticket fine-tuned beside variants of its mask (mean ± std over seeds): the complement "
        "1 − m (sparsity 1 − s), the complement subsampled per layer to the ticket's kept count, a random "
        "mask with the ticket's per-layer counts and the ticket with a share of its kept and pruned "
        "entries swapped. Every point sits at the sparsity of the mask actually fine-tuned."
    )
    dense = {(_pretraining_of(r.source), r.task): (r.dense.mean, r.dense.std) for r in files.matching}
    groups: dict[tuple[str, str], dict[str, list[PerturbationPoint]]] = {}
    for curve in files.perturbation or []:
        groups.setdefault((curve["source"], curve["task"]), {})[curve["variant"]] = curve["points"]
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    for (source, task), unordered in groups.items():
        variants = dict(sorted(unordered.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))
        curves = {
            _variant_label(v): [(p.sparsity, p.mean, p.std) for p in points] for v, points in variants.items()
        }
        path = plot_perturbation(
            curves,
            figures / f"perturbation-{_slug(source)}-{_slug(task)}.png",
            title=f"{source} → {task}",
            metric=f"test {files.study.task_metric(task) if task in files.study.tasks else 'metric'}",
            dense=dense.get((_pretraining_of(source), task)),
        )
        emit(path)
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
            facts.append(f"{source} → {task} at level {rows[-1][0]}: " + "; ".join(shown) + ".")
    if not groups:
        section.blocks.append("perturbation.json holds no curves.")
    return section


def _matching_facts(files: StudyFiles) -> list[str]:
    facts = []
    for task in _tasks(files):
        results = sorted(
            (r for r in files.matching if r.task == task),
            key=lambda r: -1.0 if r.extreme_matching_sparsity is None else r.extreme_matching_sparsity,
            reverse=True,
        )
        matched = [
            f"{r.source} up to {_pct(r.extreme_matching_sparsity)}"
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
        facts.append(f"{task} (sparsities tested up to {_pct(tested)}): " + "; ".join(parts) + ".")
    universal = [u for u in universal_matching(files.matching) if len(u.tasks) > 1]
    if universal:
        facts.append(
            "Universal (matching on every downstream task at once): "
            + "; ".join(f"{u.source} up to {_pct(u.universal_matching_sparsity)}" for u in universal)
            + "."
        )
    return facts


# --- rendering ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_markdown(title: str, sections: Sequence[Section], folder: Path) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif isinstance(block, list):
                lines += [f"- {item}" for item in block] + [""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"**{block.caption}**", ""]
                lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                lines.append("")
            elif isinstance(block, Figure):
                relative = block.path.relative_to(folder).as_posix()
                lines += [f"![{block.caption}]({relative})", "", f"*{block.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1d1d1f;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 4rem; background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.3rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .25rem; }
nav { font-size: .92rem; margin: .5rem 0 1rem; }
nav a { margin-right: 1rem; color: #1f5fa8; text-decoration: none; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-size: .88rem; }
caption { text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d6d6d6; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.yes { background: #e6f4e6; }
figure { margin: 1rem 0 1.6rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85rem; color: #555; }
ul.facts li { margin-bottom: .35rem; }
"""


def _render_html(title: str, sections: Sequence[Section]) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{esc(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for section in sections:
        out.append(f'<section id="{section.anchor}"><h2>{esc(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, str):
                out.append(f"<p>{esc(block)}</p>")
            elif isinstance(block, list):
                out.append('<ul class="facts">' + "".join(f"<li>{esc(i)}</li>" for i in block) + "</ul>")
            elif isinstance(block, Table):
                out.append("<table>")
                if block.caption:
                    out.append(f"<caption>{esc(block.caption)}</caption>")
                if any(block.header):
                    out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr>")
                for row in block.rows:
                    cells = []
                    for k, cell in enumerate(row):
                        tag = "th" if k == 0 else "td"
                        css = ' class="yes"' if "✓" in cell else ""
                        cells.append(f"<{tag}{css}>{esc(cell)}</{tag}>")
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                out.append(
                    f'<figure><img alt="{esc(block.caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{esc(block.caption)}</figcaption></figure>"
                )
        out.append("</section>")
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"


# --- entry point --------------------------------------------------------------------------


def write_report(study_dir: Path, store_root: Path | None = None) -> Path:
    """Write ``figures/*.png``, ``report.md`` and a self-contained ``report.html`` into the study folder.

    ``store_root`` (default: two folders up, ``<store>/studies/<name>``) is where the mask paths of
    ``tickets.json`` are resolved. Returns the path of ``report.html``; ``report.md`` lies beside it.
    Raises :class:`ReportError` (a :class:`CvlthError`) when an input is missing or malformed.
    """
    files = read_study_files(Path(study_dir), store_root)
    figures = files.folder / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    now = datetime.now()

    facts: list[str] = _matching_facts(files)
    sections = [_header(files, now)]
    summary = Section("What this shows", "summary", [facts])
    sections.append(summary)
    sections.append(_accuracy_section(files, figures, written.add))
    sections.append(_matching_section(files))
    kernel_tickets, _, _ = _kernel_tickets(files) if files.tickets else ([], [], None)
    scan = scan_levels(files, _ranked(files.tickets, MAX_IOU_TICKETS)[0], kernel_tickets)
    sections.append(_iou_section(files, scan, figures, written.add, facts))
    sections.append(_structure_section(files, scan, figures, written.add, facts))
    if files.perturbation is not None:
        sections.append(_perturbation_section(files, figures, written.add, facts))
    if not facts:
        summary.blocks = ["No results to summarise."]

    for stale in figures.glob("*.png"):  # figures of an earlier report that this one no longer has
        if stale not in written:
            stale.unlink()
    title = f"Study {files.study.name}: lottery tickets report"
    atomic_write_text(files.folder / "report.md", _render_markdown(title, sections, files.folder))
    html_path = files.folder / "report.html"
    atomic_write_text(html_path, _render_html(title, sections))
    return html_path
