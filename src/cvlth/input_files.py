"""Reading the files a user names (configs, cost files, masks, checkpoints, images) without letting
the file decide how much is read or whether the read ends.

Only regular files are read: ``/dev/zero`` (a device) reports size 0 and never ends, a FIFO blocks
until some other process writes to it. Every read is bounded, since a file can grow between the
size check and the read. JSON is parsed with bounds on nesting and on the size of numbers, which
Python's ``json`` module does not have (deep nesting exhausts the recursion limit; a 400-digit
integer overflows every later float conversion).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

from cvlth.errors import CvlthError

#: JSON files cvlth reads (measurement files, mask metadata) nest 4 levels at most.
MAX_JSON_DEPTH = 32
#: 18 digits hold every int64 count or dimension; more is corruption, not data.
MAX_JSON_INT_DIGITS = 18

_FILE_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a directory",
}


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as printable text: bytes that are not UTF-8 shown as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _not_regular(mode: int) -> str | None:
    """What a file of ``mode`` is when it is not a regular file, else None."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _FILE_KINDS.items() if test(mode)), "not a regular file")


def _refusal(path: str | os.PathLike[str], kind: str, what: str, error: type[CvlthError]) -> CvlthError:
    return error(
        f"{display_path(path)} is {kind}, not {what}",
        hint=f"cvlth reads {what} only from a regular file; give the path of the file itself",
    )


def check_regular(path: str | os.PathLike[str], what: str, error: type[CvlthError] = CvlthError) -> None:
    """Refuse a path that exists but is not a regular file (FIFO, device, socket, directory) or is a
    symlink loop; a missing path passes, for the caller's own message. ``what``: e.g. "a mask file"."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refusal(path, "a symlink loop", what, error) from None
        raise error(f"cannot read {display_path(path)}: {exc.strerror}") from None
    kind = _not_regular(mode)
    if kind is not None:
        raise _refusal(path, kind, what, error)


def open_regular(path: str | os.PathLike[str], what: str, error: type[CvlthError] = CvlthError) -> BinaryIO:
    """``path`` opened for binary reading, refused unless it is a regular file.

    Opened non-blocking, so that a FIFO is refused from its ``fstat`` instead of waiting for a writer
    (and a file swapped for a FIFO after a check cannot slip through).
    """
    check_regular(path, what, error)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind is not None:
            raise _refusal(path, kind, what, error)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(
    path: str | os.PathLike[str], what: str, limit: int, error: type[CvlthError] = CvlthError
) -> bytes:
    """The bytes of regular file ``path``; more than ``limit`` bytes are refused, from its size before
    anything is read, and by reading at most ``limit + 1`` bytes (it may grow meanwhile)."""
    with open_regular(path, what, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = b"" if size > limit else handle.read(limit + 1)
    if size > limit or len(data) > limit:
        raise error(
            f"{display_path(path)}: refused: {max(size, len(data)):,} bytes, more than the {limit:,} "
            f"{what} may have",
            hint="is this the right file?",
        )
    return data


def parse_json(text: str | bytes, where: str, error: type[CvlthError] = CvlthError) -> Any:
    """JSON refused past :data:`MAX_JSON_DEPTH` levels, integers of more than
    :data:`MAX_JSON_INT_DIGITS` digits, or non-finite numbers (``NaN``, ``Infinity``, ``1e400``)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{where}: not UTF-8 text ({exc.reason})") from None
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise error(f"{where}: refused: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(
            text,
            parse_int=lambda s: _bounded_int(s, where, error),
            parse_float=lambda s: _finite_float(s, where, error),
            parse_constant=lambda s: _finite_float(s, where, error),
        )
    except json.JSONDecodeError as exc:
        raise error(f"{where} is not readable JSON: {exc}") from None


# A JSON string (with escapes) or one bracket; strings are matched whole so brackets in them do not count.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _json_depth(text: str) -> int:
    """The deepest nesting of ``[`` / ``{`` in ``text`` (malformed text is left to the parser)."""
    depth = deepest = 0
    for token in _JSON_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif bracket in "]}":
            depth -= 1
    return deepest


def _bounded_int(digits: str, where: str, error: type[CvlthError]) -> int:
    if len(digits.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise error(
            f"{where}: refused: a number of {len(digits.lstrip('-'))} digits "
            f"(at most {MAX_JSON_INT_DIGITS} are read)"
        )
    return int(digits)


def _finite_float(text: str, where: str, error: type[CvlthError]) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise error(f"{where}: refused: the number {text[:24]} is not finite")
    return value


def read_json(
    path: str | os.PathLike[str], what: str, limit: int, error: type[CvlthError] = CvlthError
) -> Any:
    """A JSON file read with :func:`read_bounded` and parsed with :func:`parse_json`."""
    return parse_json(read_bounded(path, what, limit, error), display_path(Path(path)), error)
