"""The TensorBoard sink of :mod:`cvlth.training.scalar_logs`: event files in
``<training folder>/tensorboard/``, written with ``torch.utils.tensorboard``.

Each process that trains writes its own event file; a resumed training adds one beside the killed
process's, holding only the steps after those (see :mod:`cvlth.training.scalar_logs`). TensorBoard
reads every event file of a folder as one run: ``tensorboard --logdir <store>`` shows each training
as ``<kind>/<hash>/tensorboard`` (an IMP round as ``imp/<hash>/round-XX/tensorboard``).
"""

from __future__ import annotations

from pathlib import Path

from cvlth.store import reported_io


class TensorBoardSink:
    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.directory = directory
        self.last_steps = last_steps(directory)
        with reported_io(directory):
            self.writer = SummaryWriter(log_dir=str(directory))

    def add(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        with reported_io(self.directory):
            self.writer.flush()

    def close(self, failed: bool) -> None:
        with reported_io(self.directory):
            self.writer.close()


def last_steps(directory: Path) -> dict[str, int]:
    """The last step of each scalar tag in the event files of ``directory`` (none: empty).

    Reads events one by one rather than through an ``EventAccumulator``, which would hold every
    point of a long training in memory. A record cut short by a kill ends its file's reading."""
    files = sorted(directory.glob("events.out.tfevents.*")) if directory.is_dir() else []
    if not files:
        return {}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    last: dict[str, int] = {}
    for file in files:
        for event in EventFileLoader(str(file)).Load():
            for value in event.summary.value:
                last[value.tag] = max(last.get(value.tag, -1), event.step)
    return last
