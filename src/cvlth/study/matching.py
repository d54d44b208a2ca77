"""Which tickets are *matching*: no worse than the dense model, within its seed-to-seed noise.

For one (ticket source, downstream task): at every sparsity the ticket's metric is averaged over
its runs -- every finder seed x every study seed -- and the dense model's over the study's seeds;
it matches when ``mean >= dense_mean - dense_std``. The extreme matching sparsity is the
highest sparsity on the grid at which the ticket still matches (``None`` if none does).
Standard deviations are sample standard deviations (ddof=1; 0 for a single run); ``n`` says how
many runs each mean is over.

Two more readings of the same rule:

* Fig. 2, the pre-training task itself (task :data:`PRETRAINING_TASK`): upstream IMP tickets
  after their round's training against θ_p untrained, both on the pre-training task's test split.
  θ_p is evaluated by each IMP run (one per finder seed) deterministically, so its std is 0 and
  the threshold is its value (unless the objective's heads are new, drawn from the finder seed).
* The *universal* matching sparsity of a ticket source (:func:`universal_matching`): the highest
  sparsity, among those evaluated on every downstream task of the source, at which the source
  matches on all of them at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: The task name of Fig. 2's results: tickets and θ_p evaluated on their own pre-training task.
PRETRAINING_TASK = "pre-training task"


@dataclass(frozen=True)
class SeedStats:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> SeedStats:
        if not values:
            raise ValueError("no values to summarise")
        n = len(values)
        mean = math.fsum(values) / n
        var = math.fsum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        return cls(mean=mean, std=math.sqrt(var), n=n)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeedStats:
        return cls(mean=float(data["mean"]), std=float(data["std"]), n=int(data["n"]))


@dataclass(frozen=True)
class MatchingRow:
    sparsity: float
    stats: SeedStats
    matching: bool


@dataclass(frozen=True)
class MatchingResult:
    source: str
    task: str
    dense: SeedStats
    rows: tuple[MatchingRow, ...]
    metric: str = "accuracy"

    @property
    def threshold(self) -> float:
        return self.dense.mean - self.dense.std

    @property
    def extreme_matching_sparsity(self) -> float | None:
        matching = [row.sparsity for row in self.rows if row.matching]
        return max(matching) if matching else None

    @property
    def on_pretraining_task(self) -> bool:
        return self.task == PRETRAINING_TASK

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "task": self.task,
            "metric": self.metric,
            "dense": asdict(self.dense),
            "threshold": self.threshold,
            "extreme_matching_sparsity": self.extreme_matching_sparsity,
            "rows": [{"sparsity": r.sparsity, **asdict(r.stats), "matching": r.matching} for r in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MatchingResult:
        """The inverse of :meth:`to_dict` (its derived fields, threshold and extreme, are recomputed)."""
        return cls(
            source=str(data["source"]),
            task=str(data["task"]),
            dense=SeedStats.from_dict(data["dense"]),
            rows=tuple(
                MatchingRow(float(row["sparsity"]), SeedStats.from_dict(row), bool(row["matching"]))
                for row in data["rows"]
            ),
            metric=str(data.get("metric", "accuracy")),
        )


@dataclass(frozen=True)
class UniversalResult:
    """One ticket source on all its downstream tasks at once."""

    source: str
    tasks: tuple[str, ...]
    sparsities: tuple[float, ...]  # the sparsities evaluated on every one of ``tasks``
    matching_all: tuple[float, ...]  # those at which the source matches on every task

    @property
    def universal_matching_sparsity(self) -> float | None:
        return max(self.matching_all) if self.matching_all else None

    def to_dict(self) -> dict:
        return {**asdict(self), "universal_matching_sparsity": self.universal_matching_sparsity}


def universal_matching(results: Sequence[MatchingResult]) -> list[UniversalResult]:
    """Per ticket source (in first-seen order), over its downstream tasks (Fig. 2 rows left out):
    the sparsities every task was evaluated at, and those matching on all tasks there."""
    by_source: dict[str, list[MatchingResult]] = {}
    for result in results:
        if not result.on_pretraining_task:
            by_source.setdefault(result.source, []).append(result)
    universal = []
    for source, tasks in by_source.items():
        rows = [{row.sparsity: row.matching for row in r.rows} for r in tasks]
        common = sorted(set.intersection(*(set(r) for r in rows)))
        universal.append(
            UniversalResult(
                source=source,
                tasks=tuple(r.task for r in tasks),
                sparsities=tuple(common),
                matching_all=tuple(s for s in common if all(r[s] for r in rows)),
            )
        )
    return universal


def matching(
    source: str,
    task: str,
    dense_values: Sequence[float],
    ticket_values: Mapping[float, Sequence[float]],
    metric: str = "accuracy",
) -> MatchingResult:
    """Apply the matching rule to run results: ``ticket_values`` maps sparsity -> metric per run
    (every finder seed x every transfer seed), ``dense_values`` holds one metric per dense run."""
    dense = SeedStats.of(dense_values)
    threshold = dense.mean - dense.std
    rows = []
    for sparsity in sorted(ticket_values):
        stats = SeedStats.of(ticket_values[sparsity])
        rows.append(MatchingRow(sparsity=sparsity, stats=stats, matching=stats.mean >= threshold))
    return MatchingResult(source=source, task=task, dense=dense, rows=tuple(rows), metric=metric)


def matching_markdown(results: Sequence[MatchingResult]) -> str:
    """The summary of extreme matching sparsities, the universal ones, then one table per result."""
    lines = [
        "| ticket source | task | metric | dense | extreme matching sparsity | runs per mean (dense / ticket) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.source} | {r.task} | {r.metric} | {r.dense.mean:.4f} ± {r.dense.std:.4f} "
            f"| {_percent(r.extreme_matching_sparsity)} | {r.dense.n} / {_counts(r.rows)} |"
        )
    lines += [
        "",
        "Each mean is over runs: a ticket's over every finder seed x every seed of the study, the dense "
        "model's over the seeds (Fig. 2 rows: over the finder's IMP runs).",
    ]
    if any(r.on_pretraining_task for r in results):
        lines += [
            "",
            f"Rows on the *{PRETRAINING_TASK}* (the paper's Fig. 2): each upstream IMP ticket after its "
            "round's training, against θ_p untrained, on the pre-training task's test split. θ_p is "
            "evaluated by each IMP run without training on fixed batches, so its std is 0 and the "
            "threshold is its value (unless the objective's heads are new, drawn from the finder seed).",
        ]
    universal = universal_matching(results)
    if universal:
        lines += [
            "",
            "**Universal matching sparsity**: the highest sparsity, among those evaluated on every "
            "downstream task of the source, at which it matches on all of them at once.",
            "",
            "| ticket source | tasks | sparsities on every task | universal matching sparsity |",
            "|---|---|---|---|",
        ]
        for u in universal:
            lines.append(
                f"| {u.source} | {', '.join(u.tasks)} | {len(u.sparsities)} "
                f"| {_percent(u.universal_matching_sparsity)} |"
            )
    for r in results:
        lines += [
            "",
            f"**{r.source} → {r.task}** (matching: mean {r.metric} ≥ {r.threshold:.4f} = dense mean − dense std)",
            "",
            f"| sparsity | mean {r.metric} | std | runs | matching |",
            "|---|---|---|---|---|",
        ]
        for row in r.rows:
            mark = "yes" if row.matching else "no"
            lines.append(
                f"| {row.sparsity:.2%} | {row.stats.mean:.4f} | {row.stats.std:.4f} | {row.stats.n} | {mark} |"
            )
    return "\n".join(lines) + "\n"


def _counts(rows: Sequence[MatchingRow]) -> str:
    """The runs behind the rows' means: one number, or the range where rows differ."""
    counts = sorted({row.stats.n for row in rows})
    if not counts:
        return "-"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _percent(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"
