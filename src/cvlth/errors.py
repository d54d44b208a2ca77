"""User-facing errors.

Every error a user can cause (a wrong path, a bad config value, a checkpoint that does not fit)
is raised as a :class:`CvlthError` whose message names the thing and the fix. The CLI prints
these without a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CvlthError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class MaskError(CvlthError):
    """A mask does not fit a model, or a mask file is malformed."""


class CheckpointError(CvlthError):
    """A checkpoint cannot be read or does not fit the requested architecture."""


class ConfigError(CvlthError):
    """A config value is invalid."""


class DatasetError(CvlthError):
    """A dataset's files are missing or malformed."""


class TrainingError(CvlthError):
    """Training cannot go on (e.g. a NaN loss)."""
