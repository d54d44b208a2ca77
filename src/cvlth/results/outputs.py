"""The study's result files, typed once: the study writes them, the report reads them back.

A study folder ``<store>/studies/<name>/`` holds these JSON lists besides ``study.yaml``:

* ``matching.json`` -- one :class:`MatchingEntry` per (ticket source, task): a
  :class:`~cvlth.results.matching.MatchingResult` (means with 95% intervals, the test split's size,
  each row's decided / undecided margin) and, for a downstream task, its source's universal
  matching sparsity (both readings) and the tasks that covers;
* ``matching-beside.json`` (only with detection or segmentation tasks) -- the same entries, without
  universal figures, in the metrics read beside the headline one (AP50, AP75, VOC07 11-point AP50;
  the last mIoU beside the best);
* ``claims.json`` -- one :class:`~cvlth.results.claims.ClaimResult` per claim of SPEC §8: holds,
  refuted, undecided or not tested in this study, with the numbers that decide it;
* ``tickets.json`` -- one :class:`TicketEntry` per ticket finder run (one per finder seed): its
  masks per level, as paths relative to the store;
* ``perturbation.json`` (only with a perturbation analysis) -- one :class:`PerturbationCurve` per
  (finder source, task, mask variant);
* ``speed.json`` (only when the study asks for ``speed``) -- one :class:`SpeedPoint` per (ticket,
  transferred level, batch size): the median latency of the dense classifier and of the ticket on
  every engine present.

Every entry type has ``to_json`` (the dict written) and ``from_json`` (which raises ``KeyError``,
``TypeError``, ``ValueError`` or ``AttributeError`` on a malformed entry); :func:`write_entries`
and :func:`read_entries` move whole files, the latter raising :class:`StudyOutputError`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from cvlth.atomic import atomic_write_text
from cvlth.errors import CvlthError
from cvlth.input_files import read_json
from cvlth.results.matching import ALL_TASKS, MatchingResult, UniversalResult, universal_matching

MATCHING_FILE = "matching.json"
#: The same rule in the metrics read beside each task's headline one (detection, segmentation).
BESIDE_FILE = "matching-beside.json"
TICKETS_FILE = "tickets.json"
PERTURBATION_FILE = "perturbation.json"
CLAIMS_FILE = "claims.json"
SPEED_FILE = "speed.json"
#: Far above any study's results (a paper-scale matching.json is < 1 MB); bounds a wrong file's read.
MAX_RESULT_BYTES = 256 << 20


class StudyOutputError(CvlthError):
    """A study folder lacks a result file, or a result file is malformed."""


@dataclass(frozen=True)
class MatchingEntry:
    """One entry of matching.json."""

    LISTS: ClassVar[str] = "results"  # what the file is a list of, for error messages

    result: MatchingResult
    universal_matching_sparsity: float | None = None  # downstream entries of a source only
    universal_tasks: tuple[str, ...] | None = None
    universal_monotone_sparsity: float | None = None  # its monotone reading
    #: The source's universal sparsity over each of the study's task groups that hold this task.
    universal_groups: tuple[UniversalResult, ...] = ()

    def to_json(self) -> dict[str, Any]:
        entry = self.result.to_dict()
        if self.universal_tasks is not None:
            entry["universal_matching_sparsity"] = self.universal_matching_sparsity
            entry["universal_monotone_sparsity"] = self.universal_monotone_sparsity
            entry["universal_tasks"] = list(self.universal_tasks)
        if self.universal_groups:
            entry["universal_groups"] = {
                u.group: {
                    "tasks": list(u.tasks),
                    "universal_matching_sparsity": u.universal_matching_sparsity,
                    "universal_monotone_sparsity": u.monotone_universal_sparsity,
                }
                for u in self.universal_groups
            }
        return entry

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MatchingEntry:
        tasks = data.get("universal_tasks")
        universal = data.get("universal_matching_sparsity")
        monotone = data.get("universal_monotone_sparsity")
        return cls(
            result=MatchingResult.from_dict(data),
            universal_matching_sparsity=None if universal is None else float(universal),
            universal_tasks=None if tasks is None else tuple(str(t) for t in tasks),
            universal_monotone_sparsity=None if monotone is None else float(monotone),
        )


def matching_entries(
    table: Sequence[MatchingResult], groups: Mapping[str, Sequence[str]] | None = None
) -> list[MatchingEntry]:
    """The table's entries; a downstream one of a source that is not task-specific also carries the
    source's universal matching sparsity (over all its tasks, and over each task group holding it)."""
    universal = universal_matching(table, groups)
    overall = {u.source: u for u in universal if u.group == ALL_TASKS}
    entries = []
    for result in table:
        u = overall.get(result.source) if not result.on_pretraining_task else None
        if u is None:
            entries.append(MatchingEntry(result))
            continue
        in_groups = tuple(
            g
            for g in universal
            if g.source == result.source and g.group != ALL_TASKS and result.task in g.tasks
        )
        entries.append(
            MatchingEntry(
                result, u.universal_matching_sparsity, u.tasks, u.monotone_universal_sparsity, in_groups
            )
        )
    return entries


@dataclass(frozen=True)
class TicketLevel:
    sparsity: float  # nominal: 1 - (1 - fraction) ** level
    mask: str  # the mask file, relative to the store


@dataclass(frozen=True)
class TicketEntry:
    """One entry of tickets.json: a ticket finder run and its masks per level."""

    LISTS: ClassVar[str] = "ticket finder runs"

    source: str  # <pre-training>/<finder>
    pretraining: str
    finder: str
    task: str | None  # the downstream task of a task-specific finder
    method: str  # imp-upstream, imp-downstream, or a baseline's method (omp, random, ...)
    run: str  # the run folder, relative to the store
    levels: dict[int, TicketLevel]
    finder_seed: int = 0  # the finder run's seed (files written before finder seeds: 0)

    @property
    def label(self) -> str:
        """The ticket's name in the report: its source, its task when it has one, and its finder
        seed when that is not 0 (a finder's only run, unless the study gives it ``seeds``)."""
        label = f"{self.source}→{self.task}" if self.task else self.source
        return f"{label} (seed {self.finder_seed})" if self.finder_seed else label

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "pretraining": self.pretraining,
            "finder": self.finder,
            "task": self.task,
            "finder_seed": self.finder_seed,
            "method": self.method,
            "run": self.run,
            "levels": {str(k): {"sparsity": v.sparsity, "mask": v.mask} for k, v in self.levels.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TicketEntry:
        task = data.get("task")
        return cls(
            source=str(data["source"]),
            pretraining=str(data["pretraining"]),
            finder=str(data["finder"]),
            task=None if task is None else str(task),
            method=str(data["method"]),
            run=str(data["run"]),
            levels={
                int(level): TicketLevel(float(value["sparsity"]), str(value["mask"]))
                for level, value in data["levels"].items()
            },
            finder_seed=int(data.get("finder_seed", 0)),
        )


@dataclass(frozen=True)
class PerturbationPoint:
    """One point of a perturbation curve, at the sparsity of the mask actually fine-tuned."""

    sparsity: float  # measured, averaged over seeds
    mean: float
    std: float
    n: int
    level: int | None = None  # the ticket's level (None in files written before levels were stored)
    nominal_sparsity: float | None = None  # the ticket's (None in such older files too)

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "nominal_sparsity": self.nominal_sparsity,
            "sparsity": self.sparsity,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PerturbationPoint:
        level, nominal = data.get("level"), data.get("nominal_sparsity")
        return cls(
            sparsity=float(data["sparsity"]),
            mean=float(data["mean"]),
            std=float(data["std"]),
            n=int(data["n"]),
            level=None if level is None else int(level),
            nominal_sparsity=None if nominal is None else float(nominal),
        )


@dataclass(frozen=True)
class PerturbationCurve:
    """One entry of perturbation.json: a mask variant of one finder source on one task."""

    LISTS: ClassVar[str] = "curves"

    source: str
    task: str
    variant: str  # ticket, complement, complement_matched, random, perturbed, ...
    points: tuple[PerturbationPoint, ...]  # by increasing measured sparsity

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "task": self.task,
            "variant": self.variant,
            "points": [p.to_json() for p in self.points],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PerturbationCurve:
        return cls(
            source=str(data["source"]),
            task=str(data["task"]),
            variant=str(data["variant"]),
            points=tuple(PerturbationPoint.from_json(p) for p in data["points"]),
        )


class _Entry(Protocol):
    LISTS: ClassVar[str]

    def to_json(self) -> dict[str, Any]: ...


class _ReadableEntry(_Entry, Protocol):
    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any: ...


# the entry types of this module, and cvlth.results.claims.ClaimResult (claims.json)
E = TypeVar("E", bound=_ReadableEntry)


@dataclass(frozen=True)
class SpeedPoint:
    """One entry of speed.json: a ticket at one level and batch size against the dense classifier.

    ``seconds`` maps an engine to the median latency of one batch per model (``dense``, ``ticket``);
    cvlth's own engines time the ticket only (a dense model has nothing to skip)."""

    LISTS: ClassVar[str] = "timings"
    CVLTH_ENGINES: ClassVar[tuple[str, ...]] = ("cvlth-direct", "cvlth-csr")

    source: str  # <pre-training>/<finder>
    task: str | None  # a task-specific finder's task
    level: int
    sparsity: float  # the mask's measured sparsity (prunable weights)
    batch: int
    threads: int
    seconds: dict[str, dict[str, float]]

    def fastest(self, model: str, engines: Sequence[str] | None = None) -> tuple[str, float]:
        """(engine, seconds) of the fastest engine that timed ``model`` (among ``engines``)."""
        timed = [
            (engine, by_model[model])
            for engine, by_model in self.seconds.items()
            if model in by_model and (engines is None or engine in engines)
        ]
        return min(timed, key=lambda pair: pair[1])

    @property
    def speedup(self) -> float:
        """The ticket on its fastest engine against the fastest dense engine."""
        return self.fastest("dense")[1] / self.fastest("ticket")[1]

    @property
    def cvlth_speedup(self) -> float | None:
        """The ticket on cvlth's fastest path against the fastest dense engine (None: not timed)."""
        if not any(engine in self.seconds for engine in self.CVLTH_ENGINES):
            return None
        return self.fastest("dense")[1] / self.fastest("ticket", self.CVLTH_ENGINES)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "task": self.task,
            "level": self.level,
            "sparsity": self.sparsity,
            "batch": self.batch,
            "threads": self.threads,
            "seconds": self.seconds,
            "speedup": self.speedup,  # derived, for readers of the file; recomputed when read
            "cvlth_speedup": self.cvlth_speedup,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SpeedPoint:
        task = data.get("task")
        point = cls(
            source=str(data["source"]),
            task=None if task is None else str(task),
            level=int(data["level"]),
            sparsity=float(data["sparsity"]),
            batch=int(data["batch"]),
            threads=int(data["threads"]),
            seconds={
                str(engine): {str(model): float(value) for model, value in by_model.items()}
                for engine, by_model in data["seconds"].items()
            },
        )
        point.fastest("dense"), point.fastest("ticket")  # raises ValueError when either is missing
        return point


def write_entries(path: Path, entries: Sequence[_Entry]) -> None:
    """One result file: a JSON list, written atomically."""
    atomic_write_text(path, json.dumps([entry.to_json() for entry in entries], indent=2))


def read_entries(path: Path, kind: type[E], hint: str) -> list[E]:
    """The entries of one result file; a missing, unreadable or malformed file raises
    :class:`StudyOutputError` naming it (and the entry), with ``hint`` as the fix."""
    if not path.is_file():
        raise StudyOutputError(f"{path} not found: the study has not finished writing its results", hint=hint)
    try:
        data = read_json(path, "a study result file", MAX_RESULT_BYTES, StudyOutputError)
    except OSError as exc:
        raise StudyOutputError(f"{path} is not readable JSON ({exc})", hint=hint) from exc
    except StudyOutputError as exc:
        raise StudyOutputError(exc.message, hint=hint) from None
    if not isinstance(data, list):
        raise StudyOutputError(f"{path} is malformed: expected a list of {kind.LISTS}", hint=hint)
    entries = []
    for index, entry in enumerate(data):
        try:
            entries.append(kind.from_json(entry))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            message = f"{path} is malformed: entry {index}: {type(exc).__name__}: {exc}"
            raise StudyOutputError(message, hint=hint) from exc
    return entries
