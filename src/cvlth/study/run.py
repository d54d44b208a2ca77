"""Run a whole study: execute its DAG in the store, then write the matching table.

The study's own folder, ``<store>/studies/<name>/``, holds ``study.yaml`` (what was run),
``matching.json`` and ``matching.md``. Everything else lives in the runs' folders, so a killed
study resumes by running the same command again.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlth.atomic import atomic_write_text
from cvlth.cores import available_cores
from cvlth.store import Store
from cvlth.study.config import StudyConfig, study_to_yaml
from cvlth.study.execute import Context, ensure
from cvlth.study.matching import MatchingResult, matching, matching_markdown
from cvlth.study.plan import PlannedRun, expand
from cvlth.study.runs import level_sparsity


@dataclass(frozen=True)
class StudyOutcome:
    folder: Path
    matching: list[MatchingResult]
    runs: int
    computed: int
    seconds: float
    report: Path | None = None  # report.html; None when the report could not be written


def study_folder(study: StudyConfig, store: Store) -> Path:
    return Path(store.root) / "studies" / study.name


def run_study(
    study: StudyConfig,
    store: Store,
    *,
    device: str = "cpu",
    quiet: bool = False,
    log: Callable[[str], None] = print,
    workers: int = 1,
    threads: int | None = None,
) -> StudyOutcome:
    """Run every planned run not done yet, then the tables.

    Every run computes with ``threads`` intra-op threads (default: the cores this process may use),
    serially or on ``workers`` processes (see :mod:`cvlth.study.parallel`): the same numbers either way.
    """
    threads = threads or available_cores()
    start = time.perf_counter()
    folder = study_folder(study, store)
    atomic_write_text(folder / "study.yaml", study_to_yaml(study))
    planned = expand(study)
    if workers > 1:
        from cvlth.study.parallel import run_parallel

        computed = run_parallel(
            planned, store, workers=workers, threads=threads, device=device, log=log, describe=describe
        )
        results = [store.result(item.run) for item in planned]
    else:
        context = Context(store=store, device=device, quiet=quiet, log=log, threads=threads)
        computed, results = _run_serially(planned, context)
    table = matching_table(study, planned, results)
    write_matching(folder, table)
    atomic_write_text(folder / "tickets.json", json.dumps(ticket_index(study, planned, store), indent=2))
    if study.perturbation is not None:
        curves = perturbation_curves(study, planned, results)
        atomic_write_text(folder / "perturbation.json", json.dumps(curves, indent=2))
    report = _write_report(folder, store, log)
    return StudyOutcome(folder, table, len(planned), computed, time.perf_counter() - start, report)


def _run_serially(planned: list[PlannedRun], ctx: Context) -> tuple[int, list[dict[str, Any]]]:
    computed, results = 0, []
    for index, item in enumerate(planned, start=1):
        if not ctx.store.is_done(item.run):
            ctx.log(f"[{index}/{len(planned)}] {describe(item)}")
            computed += 1
        results.append(ensure(item.run, ctx))
    return computed, results


def _write_report(folder: Path, store: Store, log: Callable[[str], None]) -> Path | None:
    """The study's report; a failure here is logged, not raised: every result is already saved."""
    from cvlth.report import write_report

    try:
        return write_report(folder, Path(store.root))
    except Exception as error:
        log(
            f"could not write the report ({type(error).__name__}: {error}); retry with `cvlth report {folder}`"
        )
        return None


def describe(item: PlannedRun) -> str:
    run = item.run
    parts = [run.kind, item.pretraining]
    if item.finder:
        parts.append(item.finder)
    if item.task:
        parts.append(f"→ {item.task}")
    if run.kind == "transfer":
        parts.append(f"level {item.level} ({level_sparsity(item.level):.1%})" if item.level else "dense")
        parts.append(f"seed {item.seed}")
        if item.variant != "ticket":
            parts.append(f"[{item.variant} mask]")
    return " ".join(parts)


def metric_of(result: dict[str, Any], metric: str) -> float:
    """The test metric at the best-validation epoch (the paper's rule)."""
    test = result.get("test_at_best_val") or {}
    value = test.get(metric)
    return float(value) if value is not None else math.nan


def matching_table(
    study: StudyConfig, planned: list[PlannedRun], results: list[dict[str, Any]]
) -> list[MatchingResult]:
    dense: dict[tuple[str, str], list[float]] = defaultdict(list)
    tickets: dict[tuple[str, str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item, result in zip(planned, results, strict=True):
        if item.run.kind != "transfer" or item.variant != "ticket":
            continue
        value = metric_of(result, study.task_metric(item.task))
        if item.finder is None:
            dense[(item.pretraining, item.task)].append(value)
        else:
            sparsity = round(level_sparsity(item.level, study.fraction), 6)
            tickets[(item.pretraining, item.finder, item.task)][sparsity].append(value)
    table = []
    for (pretraining, finder, task), values in tickets.items():
        metric = study.task_metric(task)
        table.append(matching(f"{pretraining}/{finder}", task, dense[(pretraining, task)], values, metric))
    return table


def perturbation_curves(
    study: StudyConfig, planned: list[PlannedRun], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per (finder source, task, mask variant): mean ± std over seeds of the metric at each sparsity."""
    from cvlth.study.matching import SeedStats

    listed = set(study.perturbation.finders) if study.perturbation else set()
    values: dict[tuple[str, str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item, result in zip(planned, results, strict=True):
        if item.run.kind == "transfer" and item.finder in listed:
            sparsity = round(level_sparsity(item.level, study.fraction), 6)
            values[(item.source, item.task, item.variant)][sparsity].append(
                metric_of(result, study.task_metric(item.task))
            )
    curves = []
    for (source, task, variant), by_sparsity in sorted(values.items()):
        points = []
        for sparsity in sorted(by_sparsity):
            stats = SeedStats.of(by_sparsity[sparsity])
            points.append({"sparsity": sparsity, "mean": stats.mean, "std": stats.std, "n": stats.n})
        curves.append({"source": source, "task": task, "variant": variant, "points": points})
    return curves


def ticket_index(study: StudyConfig, planned: list[PlannedRun], store: Store) -> list[dict[str, Any]]:
    """Where every ticket's masks are: one entry per finder run, masks as paths relative to the store."""
    from cvlth.study.execute import mask_path

    entries = []
    for item in planned:
        if item.run.kind not in ("imp", "baseline"):
            continue
        folder = Path(store.run_dir(item.run))
        method = item.run.method if item.run.kind == "baseline" else f"imp-{item.run.stage}"
        levels = {
            str(level): {
                "sparsity": level_sparsity(level, study.fraction),
                "mask": str(mask_path(folder, level).relative_to(store.root)),
            }
            for level in range(1, study.rounds + 1)
        }
        entries.append(
            {
                "source": item.source,
                "pretraining": item.pretraining,
                "finder": item.finder,
                "task": item.task,
                "method": method,
                "run": str(folder.relative_to(store.root)),
                "levels": levels,
            }
        )
    return entries


def write_matching(folder: Path, table: list[MatchingResult]) -> None:
    atomic_write_text(folder / "matching.json", json.dumps([r.to_dict() for r in table], indent=2))
    atomic_write_text(folder / "matching.md", "# Matching tickets\n\n" + matching_markdown(table))
