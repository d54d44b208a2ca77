"""``metrics.jsonl``: one JSON line per optimizer step and per evaluation, appended as the loop runs;
a resumed run first drops the lines written after its checkpoint (:func:`truncate_metrics`). Each
line also goes to the study's scalar logs (TensorBoard, MLflow) when it asks for them
(:mod:`cvlth.training.scalar_logs`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cvlth.store import reported_io
from cvlth.training.scalar_logs import ScalarLogs


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` and passes them to ``scalar_logs``; ``flush()``
    flushes both and returns the size of ``metrics.jsonl`` on disk."""

    def __init__(self, path: Path | None, scalar_logs: ScalarLogs | None = None) -> None:
        self.path = path
        self.scalar_logs = scalar_logs
        self._handle: Any = None

    def __enter__(self) -> MetricsLog:
        if self.path is not None:
            with reported_io(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.scalar_logs is not None:
            self.scalar_logs.close(failed=kind is not None)
        if self._handle is not None:
            with reported_io(self.path):  # type: ignore[arg-type]
                self._handle.close()

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is not None:
            with reported_io(self.path):  # type: ignore[arg-type]
                self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self.scalar_logs is not None:
            self.scalar_logs.write(record)

    def flush(self) -> int:
        if self.scalar_logs is not None:
            self.scalar_logs.flush()
        if self._handle is None:
            return 0
        with reported_io(self.path):  # type: ignore[arg-type]
            self._handle.flush()
            os.fsync(self._handle.fileno())
            return self._handle.tell()


def truncate_metrics(path: Path, size: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be rewritten)."""
    if path.is_file() and path.stat().st_size > size:
        with reported_io(path), open(path, "r+b") as handle:
            handle.truncate(size)
