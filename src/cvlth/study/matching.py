"""Which tickets are *matching*: no worse than the dense model, within its seed-to-seed noise.

For one (ticket source, downstream task): at every sparsity the ticket's metric is averaged over
seeds; it matches when ``mean >= dense_mean - dense_std``. The extreme matching sparsity is the
highest sparsity on the grid at which the ticket still matches (``None`` if none does).
Standard deviations are sample standard deviations (ddof=1; 0 for a single seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass


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


def matching(
    source: str,
    task: str,
    dense_values: Sequence[float],
    ticket_values: Mapping[float, Sequence[float]],
    metric: str = "accuracy",
) -> MatchingResult:
    """Apply the matching rule to seed results: ``ticket_values`` maps sparsity -> metric per seed."""
    dense = SeedStats.of(dense_values)
    threshold = dense.mean - dense.std
    rows = []
    for sparsity in sorted(ticket_values):
        stats = SeedStats.of(ticket_values[sparsity])
        rows.append(MatchingRow(sparsity=sparsity, stats=stats, matching=stats.mean >= threshold))
    return MatchingResult(source=source, task=task, dense=dense, rows=tuple(rows), metric=metric)


def matching_markdown(results: Sequence[MatchingResult]) -> str:
    """One table per (source, task) plus a summary of extreme matching sparsities."""
    lines = [
        "| ticket source | task | metric | dense | extreme matching sparsity |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        extreme = "none" if r.extreme_matching_sparsity is None else f"{r.extreme_matching_sparsity:.2%}"
        lines.append(
            f"| {r.source} | {r.task} | {r.metric} | {r.dense.mean:.4f} ± {r.dense.std:.4f} | {extreme} |"
        )
    for r in results:
        lines += [
            "",
            f"**{r.source} → {r.task}** (matching: mean {r.metric} ≥ {r.threshold:.4f} = dense mean − dense std)",
            "",
            f"| sparsity | mean {r.metric} | std | seeds | matching |",
            "|---|---|---|---|---|",
        ]
        for row in r.rows:
            mark = "yes" if row.matching else "no"
            lines.append(
                f"| {row.sparsity:.2%} | {row.stats.mean:.4f} | {row.stats.std:.4f} | {row.stats.n} | {mark} |"
            )
    return "\n".join(lines) + "\n"
