"""The run store: one folder per run, named by the hash of its config.

Layout of ``<root>/<kind>/<hash>/``::

    config.yaml      the validated config (written when the run starts)
    train-state.pt   the latest resumable training state (cvlth.training.train_state; checkpoint.pt
                     in a folder an older cvlth started)
    metrics.jsonl    one JSON object per line, appended while training
    tensorboard/     TensorBoard event files, when the study logs to TensorBoard (not artefacts)
    result.json      written last and atomically: its presence means "done"
    .lock            fcntl lock held by the process running the run (holds its pid)
    data-identity.json  the files of the dataset the run reads, as they were when it started
                     (:mod:`cvlth.runs.recorded_data`; their lists are kept in ``<root>/data-manifests/``)

A finished run is never recomputed: :meth:`Store.execute` returns the stored result. Two processes
asked for the same run serialise on the lock; the second waits, then finds the result.

``result.json`` also records, under ``"integrity"``, the sha256, size and mtime of every file the run
wrote in its folder (its *artefacts*: weights, masks, metrics, ...) and a sha256 of the result and that
record (:mod:`cvlth.store_integrity`). Every read checks them in full (:meth:`RunFolder.read_result`,
:meth:`RunFolder.verified_path`), so a flipped byte, an edited or truncated result is reported as a
damaged run (:class:`StoreError`), never used; :meth:`RunFolder.damage` can check quickly instead
(sizes and mtimes, for ``cvlth study --plan``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

from cvlth.atomic import atomic_path, atomic_write_text, reported_io
from cvlth.config import RunConfig
from cvlth.errors import CvlthError
from cvlth.run_files import CONFIG, LEGACY_TRAIN_STATE, LOCK, METRICS, RESULT, TENSORBOARD, TRAIN_STATE
from cvlth.run_identity import HASH_LENGTH, config_hash
from cvlth.store_integrity import INTEGRITY_KEY, IntegrityRecord, RecordError

__all__ = [
    "DEFAULT_STORE_ROOT",
    "RunBusyError",
    "RunFolder",
    "RunLock",
    "Store",
    "StoreError",
    "check_kind",
    "parse_run_name",
    "reported_io",
]

DEFAULT_STORE_ROOT = "./runs"
_NOT_ARTEFACTS = (LOCK, TRAIN_STATE, LEGACY_TRAIN_STATE)  # lock and resumable state: not results
#: A run kind as a folder name: a lower-case identifier, never ``..``, ``/`` or an absolute path.
_KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_HASH_PATTERN = re.compile(rf"[0-9a-f]{{{HASH_LENGTH}}}")
# Log folders: optional copies of metrics.jsonl for viewers (a study may log them or not, a resumed
# training appends a file, a user may delete them to save space); no result is read from them.
_LOG_FOLDERS = (TENSORBOARD,)


class StoreError(CvlthError):
    """A run folder is damaged (a changed artefact, an edited result) or a path leaves the store."""


def resolve_inside(
    root: str | os.PathLike[str], relative: str | os.PathLike[str], what: str, real_root: Path | None = None
) -> Path:
    """``root / relative``, refused (StoreError) if it leads outside ``root`` (``..``, an absolute
    path elsewhere, a symbolic link out). ``real_root``: ``root`` already resolved (many checks)."""
    base = Path(root)
    path = base / relative
    real_base, real = real_root or base.resolve(), path.resolve()
    if real != real_base and real_base not in real.parents:
        raise StoreError(
            f"{what} {os.fspath(relative)!r} leads outside {base}; refusing to read it",
            hint="paths in a store are relative to the store and stay inside it; the file naming it "
            "was edited or comes from elsewhere",
        )
    return path


def check_kind(kind: str, kinds: Collection[str] | None = None) -> str:
    """``kind`` if it is a run kind's name (one of ``kinds`` when given), else a StoreError."""
    allowed = f"; run kinds: {', '.join(sorted(kinds))}" if kinds is not None else ""
    if not _KIND_PATTERN.fullmatch(kind) or (kinds is not None and kind not in kinds):
        raise StoreError(
            f"{kind!r} is not a run kind{allowed}", hint="`cvlth runs` lists the runs (kind/hash)"
        )
    return kind


def parse_run_name(name: str, kinds: Collection[str] | None = None) -> tuple[str, str]:
    """``(kind, hash)`` of a run name ``KIND/HASH``; anything else (``..``, an absolute path, a
    longer path, a hash of another shape) is a StoreError."""
    kind, slash, digest = name.partition("/")
    if not slash or not _HASH_PATTERN.fullmatch(digest):
        raise StoreError(
            f"{name!r} is not a run name: expected KIND/HASH with a {HASH_LENGTH}-hex-digit hash "
            "(e.g. imp/0123456789abcdef)",
            hint="`cvlth runs` lists the runs (kind/hash)",
        )
    return check_kind(kind, kinds), digest


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
        return self.path / CONFIG

    @property
    def train_state_path(self) -> Path:
        """Where the resumable training state is: ``train-state.pt``, or ``checkpoint.pt`` in a folder
        an older cvlth started (its run resumes from it and keeps the name until it finishes)."""
        legacy = self.path / LEGACY_TRAIN_STATE
        current = self.path / TRAIN_STATE
        return legacy if legacy.is_file() and not current.is_file() else current

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def result_path(self) -> Path:
        return self.path / RESULT

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    def is_done(self) -> bool:
        """result.json exists (cheap; whether it is intact is :attr:`status` / :meth:`read_result`)."""
        return self.result_path.is_file()

    @property
    def status(self) -> str:
        """``done``, ``damaged`` (a result that fails its checks), ``resumable`` (has a training state)
        or ``started``."""
        if self.is_done():
            return "damaged" if self.damage() else "done"
        return "resumable" if self.train_state_path.is_file() else "started"

    def damage(self, full_hash: bool = True) -> str | None:
        """Why the finished run is damaged, or None when its result and artefacts check out: every
        artefact hashed, or (``full_hash=False``) only those whose size or mtime moved since the run
        finished (see :mod:`cvlth.store_integrity` for what that quick check cannot see)."""
        try:
            _, record = self._read_record()
            self._check_artefacts(record, record.artefacts, full_hash)
        except StoreError as error:
            return error.message
        return None

    # --- the result and its artefacts ---------------------------------------------------------

    def read_result(self, verify_artefacts: bool = True) -> dict[str, Any]:
        """The stored result, after checking its hash and (by default) every artefact's hash."""
        result, record = self._read_record()
        if verify_artefacts:
            self._check_artefacts(record, record.artefacts)
        return result

    def verified_path(self, name: str | os.PathLike[str]) -> Path:
        """The path of artefact ``name`` (relative to the folder, or absolute inside it) of this
        finished run, after checking its hash. A name the run did not write is returned as is if no
        such file exists (callers test ``is_file()`` for optional artefacts) and refused if one does."""
        path = resolve_inside(self.path, name, f"artefact of run {self.name}")
        _, record = self._read_record()
        relative = path.resolve().relative_to(self.path.resolve()).as_posix()
        if relative in record.artefacts:
            self._check_artefacts(record, [relative])
        elif path.exists():
            raise self._damaged(f"{path} is not one of the files the run wrote")
        return path

    def write_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """Write ``result`` with the integrity record of the folder's artefacts; return it as later
        reads see it."""
        if INTEGRITY_KEY in result:
            raise ValueError(f"{INTEGRITY_KEY!r} is a reserved key of result.json")
        stored = json.loads(json.dumps(result))  # str keys, lists for tuples: what a read gives back
        record = IntegrityRecord.of_files(self.path, self._artefacts())
        text = json.dumps({**stored, INTEGRITY_KEY: record.to_json(stored)}, indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.result_path, text)
        return stored

    def _artefacts(self) -> list[Path]:
        """Every regular file of the folder except result.json itself, locks, checkpoints,
        temporary files of interrupted atomic writes and what log folders (``tensorboard/``) hold."""
        files = []
        for path in sorted(self.path.rglob("*")):
            name = path.name
            if path.is_symlink() or not path.is_file() or path == self.result_path:
                continue
            if name in _NOT_ARTEFACTS or (name.startswith(".") and name.endswith(".tmp")):
                continue
            if any(part in _LOG_FOLDERS for part in path.relative_to(self.path).parts[:-1]):
                continue
            files.append(path)
        return files

    def _read_record(self) -> tuple[dict[str, Any], IntegrityRecord]:
        """The result and its integrity record, once the record's own hash checks out."""
        try:
            text = self.result_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CvlthError(f"run {self.name} has no result yet ({self.result_path} is missing)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._damaged(f"{self.result_path} cannot be read ({exc})") from exc
        try:
            stored = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self._damaged(
                f"{self.result_path} is not valid JSON (truncated or edited: {exc})"
            ) from None
        raw = stored.pop(INTEGRITY_KEY, None) if isinstance(stored, dict) else None
        try:
            record = IntegrityRecord.from_json(stored, raw, self.result_path)
        except RecordError as error:
            raise self._damaged(str(error)) from None
        return stored, record

    def _check_artefacts(self, record: IntegrityRecord, names: Iterable[str], full_hash: bool = True) -> None:
        real_folder = self.path.resolve()
        for relative in names:
            path = resolve_inside(self.path, relative, f"artefact of run {self.name}", real_folder)
            why = record.damage(relative, path, full_hash)
            if why is not None:
                raise self._damaged(why)

    def _damaged(self, what: str) -> StoreError:
        parent = RunFolder(self.path.parent)
        run = parent if parent.config_path.is_file() else self  # an IMP round: name the IMP run
        store = run.path.parent.parent
        return StoreError(
            f"run {run.name} is damaged: {what}",
            hint=f"recompute it: `cvlth runs --store {store} --forget {run.name}` deletes its folder, then "
            "run the study again",
        )

    def write_file_atomically(self, name: str, write: Callable[[Path], None]) -> Path:
        """Call ``write(tmp)`` and rename the temporary file to ``<folder>/<name>``."""
        target = self.path / name
        with atomic_path(target) as tmp:
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
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(
                f"the store {self.root} is a file, not a folder",
                hint="give --store a folder (it is created if it does not exist)",
            )

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def run_dir(self, cfg: RunConfig) -> RunFolder:
        return RunFolder(self.root / cfg.kind / config_hash(cfg))

    def is_done(self, cfg: RunConfig) -> bool:
        return self.run_dir(cfg).is_done()

    def runs(self, kind: str | None = None, kinds: Collection[str] | None = None) -> list[RunFolder]:
        """Every run folder (one holding a config.yaml), sorted by kind then hash; only ``kind``'s
        when given (a kind name, checked against ``kinds`` when given)."""
        if kind is not None:
            check_kind(kind, kinds)
        pattern = f"{kind or '*'}/*/config.yaml"
        return [RunFolder(path.parent) for path in sorted(self.root.glob(pattern))]

    def result(self, cfg: RunConfig) -> dict[str, Any]:
        return self.run_dir(cfg).read_result()

    def artefact_path(self, relative: str | os.PathLike[str], what: str = "store path") -> Path:
        """The store file ``relative`` (``<kind>/<hash>/...``; ``what`` names it in errors), refused if
        it leads outside the store, and hash-checked when its run has finished. A missing file is
        returned as is (callers report it in their own words)."""
        path = resolve_inside(self.root, relative, what)
        parts = path.resolve().relative_to(self.root.resolve()).parts
        if len(parts) < 3:
            raise StoreError(
                f"{what} {os.fspath(relative)!r} names no file inside a run folder (<kind>/<hash>/...)"
            )
        folder = RunFolder(self.root / parts[0] / parts[1])
        if path.exists() and folder.is_done():
            return folder.verified_path(Path(*parts[2:]))
        return path

    def forget(self, name: str, kinds: Collection[str] | None = None) -> Path:
        """Delete run ``<kind>/<hash>`` (e.g. a damaged one) so that the next study computes it again.

        Only a name of that exact shape is accepted (a kind in ``kinds`` when given, and a 16-hex
        hash), and only a real folder directly under ``<store>/<kind>/``: never the store itself,
        never a path reached through a symbolic link."""
        kind, digest = parse_run_name(name, kinds)
        folder = RunFolder(self.root / kind / digest)
        for link in (self.root / kind, folder.path):
            if link.is_symlink():
                raise StoreError(
                    f"{link} is a symbolic link; refusing to delete through it",
                    hint="remove the link itself (rm, not rm -r) if it should go",
                )
        real = folder.path.resolve()
        if real != self.root.resolve() / kind / digest or not folder.config_path.is_file():
            raise StoreError(
                f"no run {name} under {self.root}", hint="`cvlth runs` lists the runs (kind/hash)"
            )
        lock = RunLock(folder)
        lock.acquire(wait=False)  # refuses a run another process is computing
        try:
            with reported_io(real):
                shutil.rmtree(real)
        finally:
            lock.release()
        return real

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
        drop_train_state: bool = False,
    ) -> dict[str, Any]:
        """Return the run's result, computing it with ``fn(folder)`` only if it is not done.

        ``fn`` may resume from ``folder.train_state_path``; its return value (a JSON-able dict)
        becomes ``result.json``, written last and atomically, with the hashes of the folder's files.
        ``drop_train_state`` then deletes the training state (the optimiser state a finished run no longer
        needs), still under the run's lock, so that no other process can race on it.
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
            stored = folder.write_result(result)
            if drop_train_state:
                with reported_io(folder.train_state_path):
                    folder.train_state_path.unlink(missing_ok=True)
            return stored

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
        atomic_write_text(folder.config_path, text)
