"""Atomic file writes: a reader sees the old file or the new one, never half of one.

A write that fails for a reason the user can fix (a full disk, a read-only or foreign folder, a
file where a folder should be) raises a one-line :class:`CvlthError` naming the path; the
temporary file is removed and the previous file, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cvlth.errors import CvlthError

_NO_SPACE = ("the disk is full", "free some space, or write to another disk (e.g. another --store)")
_NOT_WRITABLE = "check the folder's owner and mode, or write elsewhere (e.g. another --store)"
_NOT_A_FOLDER = "a file is in the way of a folder (is --store a file?); give a folder or a new path"
_OS_ERRORS = {
    errno.ENOSPC: _NO_SPACE,
    errno.EDQUOT: ("the disk quota is exceeded", _NO_SPACE[1]),
    errno.EACCES: ("permission denied", _NOT_WRITABLE),
    errno.EPERM: ("operation not permitted", _NOT_WRITABLE),
    errno.EROFS: ("the file system is read-only", "write to a writable folder (e.g. another --store)"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", _NOT_A_FOLDER),
    errno.EEXIST: ("a file exists where a folder is needed", _NOT_A_FOLDER),
    errno.EISDIR: ("a folder exists where the file should go", "move the folder away"),
    errno.EIO: ("an input/output error", "check the disk (dmesg) or write to another one"),
}
# What torch and safetensors raise, as RuntimeError, when a write comes up short (no errno).
_SHORT_WRITE_MARKERS = ("unexpected pos", "file write failed", "No space left", "StorageFull")


@contextlib.contextmanager
def reported_io(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise disk-full, permission and not-a-folder errors as a CvlthError that names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _OS_ERRORS:
            raise
        what, hint = _OS_ERRORS[exc.errno]
        raise CvlthError(f"cannot write {path}: {what} ({exc.strerror})", hint=hint) from exc
    except RuntimeError as exc:
        if not any(marker in str(exc) for marker in _SHORT_WRITE_MARKERS):
            raise
        first_line = str(exc).strip().splitlines()[0][:200]
        raise CvlthError(
            f"cannot write {path}: the disk is full (the write came up short: {first_line})",
            hint=_NO_SPACE[1],
        ) from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched; OS errors the
    user can fix come out as one :class:`CvlthError` (see :func:`reported_io`).
    """
    target = Path(path)
    with reported_io(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
