"""Scalar logs beside ``metrics.jsonl``: TensorBoard and MLflow, both opt-in.

Every line the loop writes to ``metrics.jsonl`` (:mod:`cvlth.training.metrics_log`) also becomes
scalars (:func:`scalars_of`): a step line gives ``train/loss``, ``train/lr`` and ``train/<metric>``
at its step; an evaluation gives ``val/<metric>``, ``test/<metric>``, ``epoch`` and ``sparsity``
(the share of pruned weights of the mask the training keeps; 0 for a dense one) at the step of the
line before it (the epoch's last step).

Where they go is asked for once per study (:class:`RunLogging`, from the study's ``logging:`` and
``cvlth study --tensorboard / --mlflow``) and reaches every training of the study through a context
variable (:func:`scalar_logging`), so that trainings started by code that knows nothing of it (IMP's
rounds) log too. It is no part of any run's identity: turning it on or off changes no hash and no
number. When it is off nothing is imported and the loop does one ``None`` check per line.

* TensorBoard: event files in ``<training folder>/tensorboard/`` (:mod:`cvlth.training.tensorboard_log`).
* MLflow: one MLflow run per training in the file store ``<store>/mlruns`` (no server), in the
  study's experiment (:mod:`cvlth.training.mlflow_log`; ``pip install 'cvlth[mlflow]'``).

A killed training resumes from its checkpoint and computes again the steps after it. Each log
keeps what it already has: when a training opens its logs, every sink reports the last step it
holds for each tag, the lines of ``metrics.jsonl`` (cut back to the checkpoint) are replayed, and a
scalar is passed on only at a step after the last one its sink holds for its tag. So nothing is
logged twice and nothing is lost: what a killed process logged past its checkpoint stays (the same
numbers on CPU, where a resumed run is bit-identical), what it had not written yet, or everything
when logging was turned on only for the resumed process, is filled in from ``metrics.jsonl``.
TensorBoard then reads two event files for the training (the killed process's and the new one's).
A training that starts again from its first step gets a new MLflow run (the old one is marked
deleted; see :mod:`cvlth.training.mlflow_log`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cvlth.run_files import TENSORBOARD

if TYPE_CHECKING:
    from cvlth.masks import Mask
    from cvlth.store import RunFolder

_POSITION_KEYS = ("step", "epoch", "batch")  # where a step line is, not what was measured


@dataclass(frozen=True)
class RunLogging:
    """Which scalar logs every training of a study writes. ``store_root`` (absolute) holds
    ``mlruns/``, and MLflow runs are named by their folder relative to it; ``experiment_id`` is the
    study's MLflow experiment, made once before any run starts (:meth:`for_study`)."""

    tensorboard: bool = False
    mlflow: bool = False
    store_root: str = ""
    experiment_id: str = ""

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow

    @classmethod
    def for_study(
        cls, *, tensorboard: bool, mlflow: bool, store_root: str | os.PathLike[str], study: str
    ) -> RunLogging:
        """The settings of study ``study``; with MLflow, its experiment is found or made now, in
        this process, so that parallel workers never race to make it."""
        root = str(Path(store_root).resolve())
        experiment = ""
        if mlflow:
            from cvlth.training.mlflow_log import study_experiment

            experiment = study_experiment(root, study)
        return cls(tensorboard=tensorboard, mlflow=mlflow, store_root=root, experiment_id=experiment)


_OFF = RunLogging()
_ACTIVE: ContextVar[RunLogging | None] = ContextVar("cvlth_run_logging", default=None)


@contextlib.contextmanager
def scalar_logging(settings: RunLogging) -> Iterator[None]:
    """Every training started inside writes the scalar logs ``settings`` asks for."""
    token = _ACTIVE.set(settings)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_logging() -> RunLogging:
    return _ACTIVE.get() or _OFF


# --- metrics.jsonl lines as scalars ------------------------------------------------------------


def scalars_of(record: dict[str, Any], step: int) -> tuple[int, dict[str, float]]:
    """The step and the scalars of one ``metrics.jsonl`` line; ``step`` is the step of the line
    before it (an evaluation line has none of its own). Non-numbers are left out."""
    if "step" in record:
        values = {k: v for k, v in record.items() if k not in _POSITION_KEYS}
        return int(record["step"]), _flat(values, "train")
    values = _flat({k: v for k, v in record.items() if k != "epoch"}, "")
    if _is_number(record.get("epoch")):
        values["epoch"] = float(record["epoch"])
    return step, values


def _flat(values: dict[str, Any], prefix: str) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        tag = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flat(value, tag))
        elif _is_number(value):
            flat[tag] = float(value)
    return flat


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- the sinks ---------------------------------------------------------------------------------


class Sink(Protocol):
    """One scalar log. ``last_steps``: the last step it holds per tag, read when it was opened."""

    last_steps: dict[str, int]

    def add(self, step: int, values: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self, failed: bool) -> None: ...


class ScalarLogs:
    """Passes each ``metrics.jsonl`` line to the sinks as scalars, each scalar only to a sink that
    does not hold its tag at that step yet (see the module's doc)."""

    def __init__(self, sinks: list[Sink], sparsity: float) -> None:
        self.sinks = sinks
        self.sparsity = sparsity
        self.step = 0

    def write(self, record: dict[str, Any]) -> None:
        self.step, values = scalars_of(record, self.step)
        if "step" not in record:
            values["sparsity"] = self.sparsity
        for sink in self.sinks:
            last = sink.last_steps
            new = {tag: v for tag, v in values.items() if self.step > last.get(tag, -1)} if last else values
            if new:
                sink.add(self.step, new)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            sink.close(failed)


def open_scalar_logs(folder: RunFolder | None, mask: Mask | None) -> ScalarLogs | None:
    """The scalar logs of the training in ``folder`` (None: logging is off, or this process does not
    write), caught up with its ``metrics.jsonl`` (already cut back to the checkpoint it resumes from).
    Nothing is imported unless a log is asked for."""
    settings = active_logging()
    if folder is None or not settings.enabled:
        return None
    records = folder.read_metrics()
    sinks: list[Sink] = []
    if settings.tensorboard:
        from cvlth.training.tensorboard_log import TensorBoardSink

        sinks.append(TensorBoardSink(folder.path / TENSORBOARD))
    if settings.mlflow:
        from cvlth.training.mlflow_log import MlflowSink

        name = run_name(folder, settings)
        sinks.append(MlflowSink(settings.store_root, settings.experiment_id, name, fresh=not records))
    logs = ScalarLogs(sinks, sparsity=0.0 if mask is None else mask.sparsity)
    for record in records:
        logs.write(record)
    return logs


def run_name(folder: RunFolder, settings: RunLogging) -> str:
    """A training's name in MLflow: its folder relative to the store (``transfer/<hash>``,
    ``imp/<hash>/round-02``), or the folder's path when it is not in the store."""
    path = folder.path.resolve()
    root = Path(settings.store_root) if settings.store_root else None
    if root is not None and (root == path or root in path.parents):
        return path.relative_to(root).as_posix()
    return path.as_posix()
