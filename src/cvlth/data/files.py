"""A dataset's files on disk: the check that every expected file is there (naming them all), and the
error for a file that is there but malformed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cvlth.errors import DatasetError
from cvlth.input_files import check_regular, display_path


def require_files(dataset: str, root: Path, names: Sequence[str], hint: str | None = None) -> list[Path]:
    """The paths of ``names`` under ``root``, or a DatasetError listing every expected file."""
    paths = [root / name for name in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        expected = "\n".join(f"    {root / name}" for name in names)
        absent = ", ".join(p.name for p in missing)
        raise DatasetError(
            f"{dataset}: missing {absent} in {root}; expected these files:\n{expected}",
            hint=hint or f"copy the official {dataset} files there, or pass --root / set $CVLTH_DATA",
        )
    return paths


def require_regular_files(dataset: str, paths: Sequence[Path]) -> None:
    """Refuse a listed file that is not a regular file with a UTF-8 name: a FIFO named ``x.jpg``
    would block its decoding forever, a symlink loop fail it, and a name that is not UTF-8 can be
    neither hashed into the decoded-image cache's key nor printed."""
    for path in paths:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            raise DatasetError(
                f"{dataset}: the file name {display_path(path)} is not valid UTF-8",
                hint="rename the file (cvlth reads only UTF-8 file names)",
            ) from None
        try:
            check_regular(path, "an image file", DatasetError)
        except DatasetError as error:
            raise DatasetError(f"{dataset}: {error.message}", hint=error.hint) from None


def malformed(dataset: str, path: Path, what: str) -> DatasetError:
    """The error for ``path`` of ``dataset`` that does not hold what it should (``what``)."""
    return DatasetError(f"{dataset}: {path} is malformed: {what}", hint="re-copy the official file")
