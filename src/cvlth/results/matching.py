"""Which tickets are *matching*: no worse than the dense model, within its seed-to-seed noise.

For one (ticket source, downstream task): at every sparsity the ticket's metric is averaged over
its runs -- every finder seed x every study seed -- and the dense model's over the study's seeds;
it matches when ``mean >= dense_mean - dense_std``. The extreme matching sparsity is the
highest sparsity on the grid at which the ticket still matches (``None`` if none does).
Standard deviations are sample standard deviations (ddof=1; 0 for a single run); ``n`` says how
many runs each mean is over, ``ci95`` gives each mean's 95% Student-t interval and ``test_size`` the
number of test images (or samples) each run was evaluated on (None in results written before it was
recorded).

The paper's rule is the headline verdict. Beside it each row is *decided* or *undecided*: the 95%
interval of ``mean - threshold`` (its ``margin``) is decided when it excludes zero. The threshold's
margin, one dense std, is taken as the rule's fixed tolerance; the uncertainty is that of the
difference ``ticket - dense``:

* *paired* when the ticket's runs and the dense runs are the same seeds (each ticket run has the
  dense run of its seed, which shares its data order, augmentation and new parameters): the
  t-interval of the per-seed differences;
* *Welch* otherwise (several finder seeds, or seeds that differ): the two-sample interval of
  independent means (runs of one finder seed share their mask, so with several finder seeds the
  interval can be too narrow).

* *binomial* when the ticket and the dense model were each measured once (Fig. 2 with one finder
  seed: no seeds to spread over), in a metric that is a fraction of the test split's items
  (:data:`PROPORTION_METRICS`): the only uncertainty left is the test sample, Wald's interval of the
  difference of two accuracies on ``test_size`` items each.

A decided row's direction is always the headline's (all intervals are centred on
``mean - threshold``). With one run on either side and no test size (or a metric that is not a
fraction), the spread is unknown: undecided.

Two more readings of the same rule:

* Fig. 2, the pre-training task itself (task :data:`PRETRAINING_TASK`): upstream IMP tickets
  after their round's training against θ_p untrained, both on the pre-training task's test split.
  θ_p is evaluated by each IMP run (one per finder seed) deterministically, so its std is 0 and
  the threshold is its value (unless the objective's heads are new, drawn from the finder seed).
* The *universal* matching sparsity of a ticket source (:func:`universal_matching`): the highest
  sparsity, among those evaluated on every downstream task of the source, at which the source
  matches on all of them at once.

Both extremes also come in a *monotone* reading: the highest sparsity up to which every sparsity
tested matches (``None`` when the lowest does not), beside the paper's reading (the highest
matching sparsity, whatever lies below it).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvlth.results.uncertainty import (
    Interval,
    mean_interval,
    paired_interval,
    projectable,
    proportions_interval,
    runs_to_decide,
    welch_interval,
)

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

    @property
    def ci95(self) -> tuple[float, float] | None:
        """The 95% Student-t interval of the mean (None for a single run)."""
        interval = mean_interval(self)
        return None if interval.low is None or interval.high is None else (interval.low, interval.high)

    def to_dict(self) -> dict[str, Any]:
        ci = self.ci95
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": None if ci is None else list(ci)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SeedStats:
        return cls(mean=float(data["mean"]), std=float(data["std"]), n=int(data["n"]))


@dataclass(frozen=True)
class MatchingRow:
    sparsity: float
    stats: SeedStats
    matching: bool  # the paper's rule: mean >= threshold
    margin: Interval | None = None  # mean - threshold with its 95% interval (module docstring)

    @property
    def decided(self) -> bool:
        """Whether the interval of ``mean - threshold`` excludes zero."""
        return self.margin is not None and self.margin.decided

    def to_dict(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            **self.stats.to_dict(),
            "matching": self.matching,
            "decided": self.decided,
            "margin": None if self.margin is None else self.margin.to_dict(),
        }


@dataclass(frozen=True)
class MatchingResult:
    source: str
    task: str
    dense: SeedStats
    rows: tuple[MatchingRow, ...]
    metric: str = "accuracy"
    test_size: int | None = None  # test images (samples) per evaluation; None: not recorded
    task_specific: bool = False  # each task has its own ticket (downstream IMP): no universal figure
    model: str | None = None  # the task's model, where it is not a classifier (e.g. "Faster R-CNN + FPN")

    @property
    def threshold(self) -> float:
        return self.dense.mean - self.dense.std

    @property
    def extreme_matching_sparsity(self) -> float | None:
        """The paper's reading: the highest sparsity at which the ticket matches."""
        matching = [row.sparsity for row in self.rows if row.matching]
        return max(matching) if matching else None

    @property
    def monotone_matching_sparsity(self) -> float | None:
        """The highest sparsity up to which every sparsity tested matches."""
        return monotone_extreme([(row.sparsity, row.matching) for row in self.rows])

    @property
    def undecided(self) -> int:
        """How many rows' verdicts the runs do not decide."""
        return sum(not row.decided for row in self.rows)

    @property
    def on_pretraining_task(self) -> bool:
        return self.task == PRETRAINING_TASK

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "task": self.task,
            "metric": self.metric,
            "test_size": self.test_size,
            "dense": self.dense.to_dict(),
            "threshold": self.threshold,
            "extreme_matching_sparsity": self.extreme_matching_sparsity,
            "monotone_matching_sparsity": self.monotone_matching_sparsity,
            "undecided": self.undecided,
            **({"task_specific": True} if self.task_specific else {}),
            **({"model": self.model} if self.model else {}),
            "rows": [row.to_dict() for row in self.rows],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MatchingResult:
        """The inverse of :meth:`to_dict` (its derived fields -- threshold, extremes, intervals of
        the means -- are recomputed). A row written before margins were stored gets Welch's,
        computed from the summaries (the per-seed values that a paired interval needs are gone)."""
        dense = SeedStats.from_dict(data["dense"])
        rows = []
        for row in data["rows"]:
            stats = SeedStats.from_dict(row)
            margin = row.get("margin")
            rows.append(
                MatchingRow(
                    float(row["sparsity"]),
                    stats,
                    bool(row["matching"]),
                    _welch_margin(stats, dense) if margin is None else Interval.from_dict(margin),
                )
            )
        size = data.get("test_size")
        return cls(
            source=str(data["source"]),
            task=str(data["task"]),
            dense=dense,
            rows=tuple(rows),
            metric=str(data.get("metric", "accuracy")),
            test_size=None if size is None else int(size),
            task_specific=bool(data.get("task_specific", False)),
            model=None if data.get("model") is None else str(data["model"]),
        )


def monotone_extreme(verdicts: Sequence[tuple[float, bool]]) -> float | None:
    """The highest sparsity up to which every one of ``(sparsity, matches)`` matches."""
    extreme = None
    for sparsity, matches in sorted(verdicts):
        if not matches:
            break
        extreme = sparsity
    return extreme


#: Metrics that are the fraction of a test split's items got right (top-1 accuracy; Eq. 2 retrieval
#: accuracy, on projections or backbone features: the fraction of representations whose positive is
#: the nearest).
PROPORTION_METRICS = frozenset({"accuracy", "retrieval_accuracy", "feature_retrieval_accuracy"})


def _test_sample_margin(
    stats: SeedStats, dense: SeedStats, metric: str, test_size: int | None
) -> Interval | None:
    """``mean - threshold`` with the test sample's interval, for one run on each side."""
    if stats.n != 1 or dense.n != 1 or not test_size or metric not in PROPORTION_METRICS:
        return None
    if not (0.0 <= stats.mean <= 1.0 and 0.0 <= dense.mean <= 1.0):
        return None
    return proportions_interval(stats.mean, dense.mean, test_size).shifted(dense.std)


def _welch_margin(stats: SeedStats, dense: SeedStats) -> Interval:
    """``mean - threshold`` with Welch's interval of ``ticket - dense`` (independent runs)."""
    return welch_interval([(1.0, stats), (-1.0, dense)]).shifted(dense.std)


def _margin(
    stats: SeedStats,
    dense: SeedStats,
    values: Sequence[float],
    dense_values: Sequence[float],
    keys: Sequence[Hashable] | None,
    dense_keys: Sequence[Hashable] | None,
) -> Interval:
    """Paired when the ticket's runs are exactly the dense runs' seeds, one each; else Welch."""
    if keys is not None and dense_keys is not None and len(keys) == len(values):
        by_key = dict(zip(dense_keys, dense_values, strict=True))
        if len(by_key) == len(dense_keys) and len(set(keys)) == len(keys) and set(keys) == set(by_key):
            paired = paired_interval(list(values), [by_key[k] for k in keys]).shifted(dense.std)
            # the mean of differences is the difference of means; centre on the headline's own number
            # so that rounding never makes a decided row disagree with it
            return paired.shifted(stats.mean - dense.mean + dense.std - paired.estimate)
    return _welch_margin(stats, dense)


#: The group every source's universal sparsity is computed over: all its downstream tasks.
ALL_TASKS = "all"


@dataclass(frozen=True)
class UniversalResult:
    """One ticket source on a group of its downstream tasks at once."""

    source: str
    tasks: tuple[str, ...]
    sparsities: tuple[float, ...]  # the sparsities evaluated on every one of ``tasks``
    matching_all: tuple[float, ...]  # those at which the source matches on every task
    group: str = ALL_TASKS  # the study's name for the group (``task_groups``), or ALL_TASKS

    @property
    def universal_matching_sparsity(self) -> float | None:
        return max(self.matching_all) if self.matching_all else None

    @property
    def monotone_universal_sparsity(self) -> float | None:
        """The highest common sparsity up to which the source matches on every task at every one."""
        return monotone_extreme([(s, s in self.matching_all) for s in self.sparsities])

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "group": self.group,
            "tasks": list(self.tasks),
            "sparsities": list(self.sparsities),
            "matching_all": list(self.matching_all),
            "universal_matching_sparsity": self.universal_matching_sparsity,
            "monotone_universal_sparsity": self.monotone_universal_sparsity,
        }


def universal_matching(
    results: Sequence[MatchingResult], groups: Mapping[str, Sequence[str]] | None = None
) -> list[UniversalResult]:
    """Per ticket source (in first-seen order), over all its downstream tasks (group
    :data:`ALL_TASKS`), then over each of ``groups`` (name -> tasks; the paper's: natural images, all
    classification, ...) whose tasks the source was all transferred to: the sparsities every task of
    the group was evaluated at, and those matching on all of them. Fig. 2 rows are left out, and so
    are task-specific sources (downstream IMP: each task has its own mask, so no one ticket is
    universal)."""
    by_source: dict[str, dict[str, MatchingResult]] = {}
    for result in results:
        if not result.on_pretraining_task and not result.task_specific:
            by_source.setdefault(result.source, {})[result.task] = result
    universal = []
    for source, by_task in by_source.items():
        chosen = {ALL_TASKS: list(by_task)}
        chosen.update(
            {name: list(tasks) for name, tasks in (groups or {}).items() if set(tasks) <= set(by_task)}
        )
        for group, tasks in chosen.items():
            rows = [{row.sparsity: row.matching for row in by_task[t].rows} for t in tasks]
            common = sorted(set.intersection(*(set(r) for r in rows)))
            universal.append(
                UniversalResult(
                    source=source,
                    tasks=tuple(tasks),
                    sparsities=tuple(common),
                    matching_all=tuple(s for s in common if all(r[s] for r in rows)),
                    group=group,
                )
            )
    return universal


def matching(
    source: str,
    task: str,
    dense_values: Sequence[float],
    ticket_values: Mapping[float, Sequence[float]],
    metric: str = "accuracy",
    *,
    dense_keys: Sequence[Hashable] | None = None,
    ticket_keys: Mapping[float, Sequence[Hashable]] | None = None,
    test_size: int | None = None,
    task_specific: bool = False,
    model: str | None = None,
) -> MatchingResult:
    """Apply the matching rule to run results: ``ticket_values`` maps sparsity -> metric per run
    (every finder seed x every transfer seed), ``dense_values`` holds one metric per dense run.

    ``dense_keys[i]`` and ``ticket_keys[sparsity][i]`` name the seed a run shares with the runs of
    the other side (e.g. the study seed of a finder-seed-0 ticket): where a sparsity's keys are
    exactly the dense keys, its margin is paired; otherwise (or without keys) Welch's."""
    dense = SeedStats.of(dense_values)
    threshold = dense.mean - dense.std
    rows = []
    for sparsity in sorted(ticket_values):
        values = ticket_values[sparsity]
        stats = SeedStats.of(values)
        keys = None if ticket_keys is None else ticket_keys.get(sparsity)
        margin = _test_sample_margin(stats, dense, metric, test_size) or _margin(
            stats, dense, values, dense_values, keys, dense_keys
        )
        rows.append(MatchingRow(sparsity, stats, stats.mean >= threshold, margin))
    return MatchingResult(
        source,
        task,
        dense,
        tuple(rows),
        metric=metric,
        test_size=test_size,
        task_specific=task_specific,
        model=model,
    )


def matching_markdown(
    results: Sequence[MatchingResult], groups: Mapping[str, Sequence[str]] | None = None
) -> str:
    """The summary of extreme matching sparsities, the universal ones (over all downstream tasks and
    over each of the study's task ``groups``), then one table per result."""
    lines = _summary_lines(results)
    lines += [
        "",
        "Each mean is over runs: a ticket's over every finder seed x every seed of the study, the dense "
        "model's over the seeds (Fig. 2 rows: over the finder's IMP runs); [95% CI] is its Student-t "
        "interval, test size the number of test images each run was evaluated on (?: not recorded). "
        "Extreme matching sparsity: the highest sparsity that matches (the paper's reading); monotone "
        "reading: the highest sparsity up to which every sparsity tested matches.",
        "",
        DECISION_TEXT,
    ]
    if any(r.on_pretraining_task for r in results):
        lines += [
            "",
            f"Rows on the *{PRETRAINING_TASK}* (the paper's Fig. 2): each upstream IMP ticket after its "
            "round's training, against θ_p untrained, on the pre-training task's test split. θ_p is "
            "evaluated by each IMP run without training on fixed batches, so its std is 0 and the "
            "threshold is its value (unless the objective's heads are new, drawn from the finder seed).",
        ]
    universal = universal_matching(results, groups)
    if universal:
        lines += [
            "",
            "**Universal matching sparsity**: the highest sparsity, among those evaluated on every "
            "task of the group, at which the source matches on all of them at once (monotone: up to "
            f"which it matches on all of them at every such sparsity); group `{ALL_TASKS}` is every "
            "downstream task of the source, the others are the study's `task_groups`. Task-specific "
            "tickets (downstream IMP: one mask per task) have none.",
            "",
            "| ticket source | group | tasks | sparsities on every task | universal matching sparsity "
            "| monotone reading |",
            "|---|---|---|---|---|---|",
        ]
        for u in universal:
            lines.append(
                f"| {u.source} | {u.group} | {', '.join(u.tasks)} | {len(u.sparsities)} "
                f"| {_percent(u.universal_matching_sparsity)} | {_percent(u.monotone_universal_sparsity)} |"
            )
    lines += _result_tables(results)
    return "\n".join(lines) + "\n"


def beside_markdown(results: Sequence[MatchingResult]) -> str:
    """The same rule on the metrics read beside the headline one (detection's AP50 / AP75 / VOC07
    11-point AP50, segmentation's last mIoU): the summary and one table per result; no universal
    figure (that is the headline metric's)."""
    lines = [
        "The matching rule applied to the metrics read beside each task's headline metric: detection's "
        "AP50 (`map50`), AP75 (`map75`) and VOC07's 11-point AP50 (`voc07_ap50`) beside AP@[.5:.95]; "
        "segmentation's last evaluation (`miou@final`) beside the best one over evaluations (the paper's).",
        "",
        *_summary_lines(results),
        *_result_tables(results),
    ]
    return "\n".join(lines) + "\n"


def task_text(result: MatchingResult) -> str:
    """The task, with its model when that is not a classifier (``voc [Faster R-CNN + FPN]``)."""
    return f"{result.task} [{result.model}]" if result.model else result.task


def _summary_lines(results: Sequence[MatchingResult]) -> list[str]:
    lines = [
        "| ticket source | task | metric | test size | dense mean ± std [95% CI] "
        "| extreme matching sparsity | monotone reading | undecided levels | runs per mean (dense / ticket) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.source} | {task_text(r)} | {r.metric} | {size_text(r.test_size)} "
            f"| {r.dense.mean:.4f} ± {r.dense.std:.4f} {ci_text(r.dense)} "
            f"| {_percent(r.extreme_matching_sparsity)} | {_percent(r.monotone_matching_sparsity)} "
            f"| {r.undecided} of {len(r.rows)} | {r.dense.n} / {_counts(r.rows)} |"
        )
    return lines


def _result_tables(results: Sequence[MatchingResult]) -> list[str]:
    lines: list[str] = []
    for r in results:
        lines += [
            "",
            f"**{r.source} → {task_text(r)}** (matching: mean {r.metric} ≥ {r.threshold:.4f} = dense mean "
            f"− dense std; test size {size_text(r.test_size)})",
            "",
            f"| sparsity | mean {r.metric} | std | 95% CI | runs | mean − threshold [95% CI] | matching | decision |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in r.rows:
            mark = "yes" if row.matching else "no"
            lines.append(
                f"| {row.sparsity:.2%} | {row.stats.mean:.4f} | {row.stats.std:.4f} | {ci_text(row.stats)} "
                f"| {row.stats.n} | {margin_text(row.margin)} | {mark} | {decision_text(row)} |"
            )
    return lines


#: What decided / undecided means, for every table that shows it.
DECISION_TEXT = (
    "Decision: a verdict is *decided* when the 95% interval of (ticket mean − threshold) excludes zero, "
    "*undecided* otherwise (then more seeds could flip it; beside it, the runs per mean that would decide "
    "it if its mean and spread stayed as they are, a projection). The interval is paired over seeds when the "
    "ticket's runs are exactly the dense runs' seeds (same data order, augmentation and new parameters), "
    "else Welch's two-sample interval; a ticket and a dense model measured once each (Fig. 2) get the "
    "test sample's interval of two accuracies (binomial); the threshold's one dense std is the rule's "
    "fixed tolerance."
)


def ci_text(stats: SeedStats) -> str:
    """``[low, high]`` of a mean, or ``[–]`` for a single run."""
    ci = stats.ci95
    return "[–]" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def margin_text(margin: Interval | None) -> str:
    if margin is None:
        return "?"
    if margin.low is None or margin.high is None:
        return f"{margin.estimate:+.4f} [–]"
    return f"{margin.estimate:+.4f} [{margin.low:+.4f}, {margin.high:+.4f}]"


def decision_text(row: MatchingRow) -> str:
    """``decided (paired)``, ``undecided (welch; ≈ 9 runs)``, ...: the decision, how it was reached
    and, for an undecided one, :func:`runs_needed_text`."""
    if row.margin is None:
        return "decided" if row.decided else "undecided"
    needed = "" if row.decided else runs_needed_text(row)
    return ("decided" if row.decided else "undecided") + f" ({row.margin.method}{needed and '; ' + needed})"


#: The most runs per mean a projection looks at.
RUNS_PROJECTED = 100


def runs_needed_text(row: MatchingRow) -> str:
    """For an undecided row: ``≈ 9 runs`` (the runs per mean that would decide it at today's mean
    and spread, :func:`~cvlth.results.uncertainty.runs_to_decide`), ``> 100 runs`` (its mean is too
    close to the threshold), or ``""`` where nothing can be projected."""
    margin = row.margin
    if margin is None or not projectable(margin, row.stats.n):
        return ""
    needed = runs_to_decide(margin, row.stats.n, RUNS_PROJECTED)
    return f"> {RUNS_PROJECTED} runs" if needed is None else f"≈ {needed} runs"


def size_text(size: int | None) -> str:
    return "?" if size is None else f"{size:,}"


def _counts(rows: Sequence[MatchingRow]) -> str:
    """The runs behind the rows' means: one number, or the range where rows differ."""
    counts = sorted({row.stats.n for row in rows})
    if not counts:
        return "-"
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _percent(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"
