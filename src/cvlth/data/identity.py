"""A dataset's *data identity*: which files it read and their sizes and modification times.

A run that reads a folder of data files records the identity when it starts (see
:mod:`cvlth.runs.recorded_data`); on resume, and for ``cvlth study --plan``, the identity is computed
again and compared, so that a folder changed between a kill and the resume is not mixed into the
run, and a finished run computed on other data is reported as stale instead of reused.

The identity is a sha256 over every file's path relative to the dataset's root, its size and its
``mtime_ns``, sorted by path, plus the file and byte counts: one ``stat`` per file (ImageNet's 1.33M
files take seconds), no file is read. What it cannot see is a change that keeps a file's size and
mtime (an edit followed by ``touch -r``); a copy that does not keep modification times (``cp``
without ``-p``, some ``rsync`` settings) counts as every file changed.

To say *what* changed, the file list itself (the *manifest*) is kept once per identity, gzipped
JSON named by its sha256 (:func:`write_manifest`), and compared file by file (:func:`compare`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlth.atomic import atomic_path, reported_io
from cvlth.errors import DatasetError

FORMAT = "cvlth-data-identity/1"
MANIFEST_FORMAT = "cvlth-data-manifest/1"

Entry = tuple[str, int, int]  # (path relative to the root, size in bytes, mtime_ns)


@dataclass(frozen=True)
class DataIdentity:
    """The files a dataset read from ``root``: counts and a sha256 over (path, size, mtime) of each."""

    dataset: str
    root: str
    files: int
    bytes: int
    sha256: str
    entries: tuple[Entry, ...] | None = None  # the manifest; None when read back from a record

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "dataset": self.dataset,
            "root": self.root,
            "files": self.files,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, raw: object) -> DataIdentity | None:
        """The identity a record holds, or None when it is not one (malformed, another format)."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            return None
        try:
            return cls(
                str(raw["dataset"]),
                str(raw["root"]),
                int(raw["files"]),
                int(raw["bytes"]),
                str(raw["sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


def identity_of_files(dataset: str, root: Path, paths: Iterable[Path]) -> DataIdentity:
    """The identity of ``paths`` (files under ``root``, as the dataset's reader lists them)."""
    entries = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError as exc:
            raise DatasetError(
                f"{dataset}: {path} cannot be read ({exc.strerror})",
                hint="the folder changed while it was listed, or a file is unreadable; check it and run again",
            ) from None
        entries.append((_relative(path, root), info.st_size, info.st_mtime_ns))
    entries.sort()
    return DataIdentity(
        dataset,
        os.fspath(root.absolute()),
        len(entries),
        sum(size for _, size, _ in entries),
        _digest(entries),
        tuple(entries),
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # not listed under root (cannot happen with cvlth's readers): keep it whole
        return path.as_posix()


def _digest(entries: list[Entry]) -> str:
    digest = hashlib.sha256(f"{FORMAT}\n".encode())
    for relative, size, mtime in entries:
        # surrogateescape: a name that is not UTF-8 keeps its own bytes (as os.fsencode does)
        digest.update(relative.encode("utf-8", "surrogateescape") + f"\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


# --- what changed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataChange:
    """How the files of a dataset differ from a recorded identity."""

    added: int
    removed: int
    changed: int  # same path, another size or mtime
    examples: tuple[str, ...]  # a few changed paths, to look at

    def describe(self) -> str:
        files = "file" if self.added == 1 else "files"
        parts = [f"{self.added:,} {files} added", f"{self.removed:,} removed", f"{self.changed:,} changed"]
        return ", ".join(parts)


def compare(then: Iterable[Entry], now: Iterable[Entry], max_examples: int = 3) -> DataChange:
    """File by file: what ``now`` added, removed and changed (size or mtime) relative to ``then``."""
    before = {path: (size, mtime) for path, size, mtime in then}
    after = {path: (size, mtime) for path, size, mtime in now}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(p for p in after.keys() & before.keys() if after[p] != before[p])
    examples = tuple((changed + added + removed)[:max_examples])
    return DataChange(len(added), len(removed), len(changed), examples)


def change_summary(then: DataIdentity, now: DataIdentity, then_entries: Iterable[Entry] | None) -> str:
    """What changed under ``now.root`` since ``then``, file by file when the manifest is at hand, else
    in counts: "3 files added, 1 removed, 2 changed under /data/x (e.g. train/a/1.jpg)"."""
    if then_entries is not None and now.entries is not None:
        change = compare(then_entries, now.entries)
        example = f" (e.g. {', '.join(change.examples)})" if change.examples else ""
        return f"{change.describe()} under {now.root}{example}"
    return (
        f"the files under {now.root} changed ({then.files:,} files, {then.bytes:,} bytes then; "
        f"{now.files:,} files, {now.bytes:,} bytes now; same sizes with other modification times "
        "count as changed)"
    )


# --- manifests ----------------------------------------------------------------------------------


def manifest_path(directory: Path, sha256: str) -> Path:
    return directory / f"{sha256}.json.gz"


def write_manifest(directory: Path, identity: DataIdentity) -> None:
    """Keep ``identity``'s file list as ``<directory>/<sha256>.json.gz`` (once: the name is its content)."""
    if identity.entries is None:
        raise ValueError("an identity read back from a record has no file list")
    path = manifest_path(directory, identity.sha256)
    if path.is_file():
        return
    payload = {"format": MANIFEST_FORMAT, "dataset": identity.dataset, "files": identity.entries}
    data = gzip.compress(json.dumps(payload, separators=(",", ":")).encode("utf-8", "surrogateescape"))
    with reported_io(path):
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def read_manifest(directory: Path, identity: DataIdentity) -> list[Entry] | None:
    """The file list kept for ``identity``, or None when it is missing or does not match its sha256
    (deleted, damaged, a store copied without it): callers then describe the change in counts."""
    path = manifest_path(directory, identity.sha256)
    try:
        payload = json.loads(gzip.decompress(path.read_bytes()).decode("utf-8", "surrogateescape"))
        entries = [(str(p), int(s), int(m)) for p, s, m in payload["files"]]
    except (OSError, EOFError, ValueError, KeyError, TypeError, gzip.BadGzipFile):
        return None
    return entries if _digest(entries) == identity.sha256 else None
