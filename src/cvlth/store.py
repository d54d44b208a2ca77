"""The run store: one folder per run, named by the hash of its config.

Layout of ``<root>/<kind>/<hash>/``::

    config.yaml      the validated config (written when the run starts)
    checkpoint.pt    the latest resumable state (torch.save of tensors and primitives only)
    metrics.jsonl    one JSON object per line, appended while training
    result.json      written last and atomically: its presence means "done"
    .lock            fcntl lock held by the process running the run (holds its pid)

A finished run is never recomputed: :meth:`Store.execute` returns the stored result. Two processes
asked for the same run serialise on the lock; the second waits, then finds the result.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cvlth.atomic import atomic_path, atomic_write_text
from cvlth.config import RunConfig, config_hash
from cvlth.errors import CvlthError

DEFAULT_STORE_ROOT = "./runs"

_DISK_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free some space, or point --store at another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space, or point --store at another disk"),
    errno.EACCES: ("permission denied", "check the folder's owner and mode, or choose another --store"),
    errno.EPERM: ("operation not permitted", "check the folder's owner and mode, or choose another --store"),
    errno.EROFS: ("the file system is read-only", "choose a writable --store"),
}


@contextlib.contextmanager
def reported_io(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise disk-full and permission errors as a CvlthError that names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        what, hint = _DISK_ERRORS[exc.errno]
        raise CvlthError(f"cannot write {path}: {what} ({exc.strerror})", hint=hint) from exc


class RunFolder:
    """One run's folder and the files in it. ``os.fspath(folder)`` is its path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        """``<kind>/<hash>``."""
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    def is_done(self) -> bool:
        return self.result_path.is_file()

    @property
    def status(self) -> str:
        """``done``, ``resumable`` (has a checkpoint) or ``started``."""
        if self.is_done():
            return "done"
        return "resumable" if self.checkpoint_path.is_file() else "started"

    def read_result(self) -> dict[str, Any]:
        try:
            return json.loads(self.result_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CvlthError(f"run {self.name} has no result yet ({self.result_path} is missing)") from None

    def write_result(self, result: dict[str, Any]) -> None:
        with reported_io(self.result_path):
            atomic_write_text(self.result_path, json.dumps(result, indent=2, sort_keys=True) + "\n")

    def write_file_atomically(self, name: str, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp)`` and rename the temporary file to ``<folder>/<name>``."""
        target = self.path / name
        with reported_io(target), atomic_path(target) as tmp:
            write(tmp)
        return target

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line]


class RunBusyError(CvlthError):
    """Another process holds the run's lock and the caller asked not to wait."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run>/.lock``; the holder writes its pid into the file."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self._handle: Any = None

    def acquire(self, wait: bool = True) -> None:
        folder = self.folder
        with reported_io(folder.lock_path):
            folder.path.mkdir(parents=True, exist_ok=True)
            handle = open(folder.lock_path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(folder.lock_path)
            if not wait:
                handle.close()
                raise RunBusyError(
                    f"run {folder.name} is being run by pid {holder}",
                    hint="wait for it to finish, or run again with waiting enabled",
                ) from None
            print(f"waiting for {folder.name} held by pid {holder}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


class Store:
    """Run folders under ``root`` (default ``./runs``, the CLI's ``--store``)."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_STORE_ROOT) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def run_dir(self, cfg: RunConfig) -> RunFolder:
        return RunFolder(self.root / cfg.kind / config_hash(cfg))

    def is_done(self, cfg: RunConfig) -> bool:
        return self.run_dir(cfg).is_done()

    def runs(self, kind: str | None = None) -> list[RunFolder]:
        """Every run folder (one holding a config.yaml), sorted by kind then hash."""
        pattern = f"{kind or '*'}/*/config.yaml"
        return [RunFolder(path.parent) for path in sorted(self.root.glob(pattern))]

    def result(self, cfg: RunConfig) -> dict[str, Any]:
        return self.run_dir(cfg).read_result()

    @contextlib.contextmanager
    def lock(self, cfg: RunConfig, wait: bool = True) -> Iterator[RunFolder]:
        folder = self.run_dir(cfg)
        lock = RunLock(folder)
        lock.acquire(wait=wait)
        try:
            yield folder
        finally:
            lock.release()

    def execute(
        self,
        cfg: RunConfig,
        fn: Callable[[RunFolder], dict[str, Any]],
        *,
        wait: bool = True,
    ) -> dict[str, Any]:
        """Return the run's result, computing it with ``fn(folder)`` only if it is not done.

        ``fn`` may resume from ``folder.checkpoint_path``; its return value (a JSON-able dict)
        becomes ``result.json``, written last and atomically.
        """
        folder = self.run_dir(cfg)
        if folder.is_done():
            return folder.read_result()
        with self.lock(cfg, wait=wait):
            if folder.is_done():  # finished by the process we waited for
                return folder.read_result()
            self._write_config(folder, cfg)
            result = fn(folder)
            if not isinstance(result, dict):
                raise TypeError(
                    f"the function run for {folder.name} returned {type(result).__name__}, not a dict"
                )
            folder.write_result(result)
            return result

    @staticmethod
    def _write_config(folder: RunFolder, cfg: RunConfig) -> None:
        text = cfg.to_yaml()
        if folder.config_path.is_file():
            existing = type(cfg).from_yaml(folder.config_path.read_text(encoding="utf-8"))
            if config_hash(existing) != config_hash(cfg):
                raise CvlthError(
                    f"{folder.config_path} holds another config than the one hashed to {folder.name}",
                    hint="the folder was edited by hand or the hash changed; move the folder away",
                )
            return
        with reported_io(folder.config_path):
            atomic_write_text(folder.config_path, text)
