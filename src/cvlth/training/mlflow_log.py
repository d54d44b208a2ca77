"""The MLflow sink of :mod:`cvlth.training.scalar_logs`: one MLflow run per training, in the study's
experiment, in the file store ``<store>/mlruns`` (no server; ``pip install 'cvlth[mlflow]'``).

A training's MLflow run carries the tag ``cvlth.run`` = its folder relative to the store
(``transfer/<hash>``, ``imp/<hash>/round-02``) and is named so; a resumed training finds it by that
tag and goes on logging into it. A training that starts from its first step (killed before its
first checkpoint, or recomputed after ``cvlth runs --forget``) deletes the MLflow runs of that name
it finds (MLflow keeps them, marked deleted) and starts a new one, so a stale run never stands in
for it. Metrics are sent in batches (``log_batch``): at every checkpoint
and epoch end, every :data:`BATCH` scalars and every :data:`FLUSH_SECONDS` seconds.

MLflow 3 keeps the file store only in "maintenance mode" and refuses it unless
``MLFLOW_ALLOW_FILE_STORE`` is true; cvlth sets that variable (unless it is set already) in the
process that logs, and ``mlflow ui --backend-store-uri <store>/mlruns`` needs it set as well.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from cvlth.errors import ConfigError

MLRUNS = "mlruns"  # the file store, in the run store's root
RUN_TAG = "cvlth.run"
BATCH = 1000  # the most metrics one log_batch call takes
FLUSH_SECONDS = 30.0


def tracking_uri(store_root: str | os.PathLike[str]) -> str:
    return (Path(store_root) / MLRUNS).resolve().as_uri()


def client(store_root: str | os.PathLike[str]) -> Any:
    """An ``MlflowClient`` on ``<store_root>/mlruns``."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module's doc
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ConfigError(
            "MLflow logging is asked for (logging: {mlflow: true} or --mlflow) but mlflow is not installed",
            hint="pip install 'cvlth[mlflow]', or turn MLflow logging off",
        ) from error
    try:
        return MlflowClient(tracking_uri=tracking_uri(store_root))
    except MlflowException as error:  # e.g. MLFLOW_ALLOW_FILE_STORE=false in the environment
        raise ConfigError(
            f"MLflow refuses the file store {Path(store_root) / MLRUNS}: {error.message.splitlines()[0]}",
            hint="unset MLFLOW_ALLOW_FILE_STORE (cvlth then allows it) or set it to true",
        ) from error


def study_experiment(store_root: str, name: str) -> str:
    """The id of the experiment ``name`` in the store's ``mlruns``, made (or restored) if needed."""
    mlflow_client = client(store_root)
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        return str(mlflow_client.create_experiment(name))
    if found.lifecycle_stage == "deleted":
        mlflow_client.restore_experiment(found.experiment_id)
    return str(found.experiment_id)


class MlflowSink:
    """``fresh``: the training starts from its first step (see the module's doc)."""

    def __init__(self, store_root: str, experiment_id: str, run_name: str, fresh: bool) -> None:
        from mlflow.entities import Metric

        self._metric = Metric
        self.client = client(store_root)
        self.pending: list[Any] = []
        self.sent = time.monotonic()
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`{RUN_TAG}` = '{run_name}'")
        if fresh:
            for stale in found:
                self.client.delete_run(stale.info.run_id)
        if found and not fresh:  # a resumed training: go on in its run
            run = found[0]
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.last_steps = {
                key: max(m.step for m in self.client.get_metric_history(self.run_id, key))
                for key in run.data.metrics
            }
        else:
            run = self.client.create_run(experiment_id, run_name=run_name, tags={RUN_TAG: run_name})
            self.run_id = run.info.run_id
            self.last_steps = {}

    def add(self, step: int, values: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(self._metric(tag, value, now, step) for tag, value in values.items())
        if len(self.pending) >= BATCH or time.monotonic() - self.sent > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), BATCH):
            self.client.log_batch(self.run_id, metrics=self.pending[start : start + BATCH])
        self.pending.clear()
        self.sent = time.monotonic()

    def close(self, failed: bool) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
