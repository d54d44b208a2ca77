"""The integrity record of a finished run: what ``result.json`` keeps under ``"integrity"`` and the
two ways of checking it.

When a run finishes, :meth:`cvlth.store.RunFolder.write_result` records every file the run wrote in
its folder (its *artefacts*: weights, masks, metrics, ...) with the sha256 of its bytes and its size
and modification time, and a sha256 over the result and those lists, so that an edited result or an
edited record is found as well as a changed file::

    "integrity": {"artefacts": {path: sha256}, "stats": {path: [size, mtime_ns]}, "sha256": ...}

* The **full** check hashes every artefact. Every use of a run's result or files does it first
  (:meth:`RunFolder.read_result`, :meth:`RunFolder.verified_path`), and so does
  ``cvlth study --plan --verify``.
* The **quick** check (``cvlth study --plan``) reads the record and compares each artefact's size and
  mtime with it; it hashes only a file of the recorded size whose mtime moved (a copy without ``-p``,
  a rewrite). A ResNet-50 study's weights and masks are gigabytes, while sizes and mtimes are one
  ``stat`` per file (``benchmarks/plan_integrity.py`` measures both). What it cannot see is a
  change that keeps both (a bit flipped on a failing disk, an edit followed by ``touch -r``): the
  full check before any use still refuses such a file.

Records written before sizes were kept (no ``"stats"``) are checked in full by both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INTEGRITY_KEY = "integrity"  # the reserved key of result.json that holds the record
_HASH_CHUNK = 1 << 20

_hash_cache: dict[tuple[str, int, int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes; cached per process by (path, inode, size, mtime, ctime)."""
    info = path.stat()
    key = (str(path), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


class RecordError(ValueError):
    """The record is missing, malformed or does not match its own sha256 (the message says which)."""


@dataclass(frozen=True)
class IntegrityRecord:
    """The artefacts of a finished run as recorded when it finished."""

    artefacts: dict[str, str]  # path relative to the run folder -> sha256
    stats: dict[str, list[int]] | None  # path -> [size, mtime_ns]; None in records written before them

    @classmethod
    def of_files(cls, folder: Path, files: Iterable[Path]) -> IntegrityRecord:
        artefacts: dict[str, str] = {}
        stats: dict[str, list[int]] = {}
        for path in files:
            relative = path.relative_to(folder).as_posix()
            info = path.stat()
            artefacts[relative] = file_sha256(path)
            stats[relative] = [info.st_size, info.st_mtime_ns]
        return cls(artefacts, stats)

    def digest(self, result: dict[str, Any]) -> str:
        """sha256 over the result and the record (a record without stats: over result and hashes)."""
        content: dict[str, Any] = {"result": result, "artefacts": self.artefacts}
        if self.stats is not None:
            content["stats"] = self.stats
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def to_json(self, result: dict[str, Any]) -> dict[str, Any]:
        return {"artefacts": self.artefacts, "stats": self.stats, "sha256": self.digest(result)}

    @classmethod
    def from_json(cls, result: dict[str, Any], raw: object, where: Path) -> IntegrityRecord:
        """The record stored beside ``result`` in ``where``, once its own sha256 checks out."""
        artefacts = raw.get("artefacts") if isinstance(raw, dict) else None
        if not isinstance(artefacts, dict) or not all(isinstance(v, str) for v in artefacts.values()):
            raise RecordError(
                f"{where} has no content hashes (edited, or written before cvlth recorded them)"
            )
        stats = raw.get("stats")
        if stats is not None and not _valid_stats(stats, artefacts):
            raise RecordError(f"{where} was edited or damaged: its file sizes and times are malformed")
        record = cls(artefacts, stats)
        if raw.get("sha256") != record.digest(result):
            raise RecordError(f"{where} was edited or damaged: it no longer matches its sha256")
        return record

    def damage(self, relative: str, path: Path, full_hash: bool) -> str | None:
        """What is wrong with artefact ``relative`` (found at ``path``), or None when it checks out:
        its size, then (``full_hash``, no stats recorded, or a moved mtime) its sha256."""
        if not path.is_file():
            return f"{path} is missing"
        stat = self.stats.get(relative) if self.stats is not None else None
        if stat is not None:
            info = path.stat()
            if info.st_size != stat[0]:
                return (
                    f"{path} changed after the run finished (it is {info.st_size:,} bytes, "
                    f"{stat[0]:,} when the run finished)"
                )
            if not full_hash and info.st_mtime_ns == stat[1]:
                return None  # the quick check: same size and mtime are taken as unchanged
        if file_sha256(path) != self.artefacts[relative]:
            return f"{path} changed after the run finished (its sha256 differs)"
        return None


def _valid_stats(stats: object, artefacts: dict[str, str]) -> bool:
    return (
        isinstance(stats, dict)
        and stats.keys() == artefacts.keys()
        and all(
            isinstance(v, list) and len(v) == 2 and all(isinstance(n, int) for n in v) for v in stats.values()
        )
    )
