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


def study_folder(study: StudyConfig, store: Store) -> Path:
    return Path(store.root) / "studies" / study.name


def run_study(
    study: StudyConfig,
    store: Store,
    *,
    device: str = "cpu",
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> StudyOutcome:
    start = time.perf_counter()
    folder = study_folder(study, store)
    atomic_write_text(folder / "study.yaml", study_to_yaml(study))
    planned = expand(study)
    ctx = Context(store=store, device=device, quiet=quiet, log=log)
    computed = 0
    results: dict[int, dict[str, Any]] = {}
    for index, item in enumerate(planned, start=1):
        done = store.is_done(item.run)
        if not done:
            log(f"[{index}/{len(planned)}] {describe(item)}")
            computed += 1
        results[index] = ensure(item.run, ctx)
    table = matching_table(study, planned, list(results.values()))
    write_matching(folder, table, study.metric)
    return StudyOutcome(folder, table, len(planned), computed, time.perf_counter() - start)


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
        if item.run.kind != "transfer":
            continue
        value = metric_of(result, study.metric)
        if item.finder is None:
            dense[(item.pretraining, item.task)].append(value)
        else:
            sparsity = round(level_sparsity(item.level, study.fraction), 6)
            tickets[(item.pretraining, item.finder, item.task)][sparsity].append(value)
    table = []
    for (pretraining, finder, task), values in tickets.items():
        table.append(matching(f"{pretraining}/{finder}", task, dense[(pretraining, task)], values))
    return table


def write_matching(folder: Path, table: list[MatchingResult], metric: str) -> None:
    atomic_write_text(folder / "matching.json", json.dumps([r.to_dict() for r in table], indent=2))
    atomic_write_text(folder / "matching.md", "# Matching tickets\n\n" + matching_markdown(table, metric))
