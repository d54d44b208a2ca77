"""Opening image files from dataset folders, with every failure a :class:`DatasetError` naming the file.

PIL refuses images of more than ``2 * Image.MAX_IMAGE_PIXELS`` pixels (decompression bombs: a small
file that decodes to gigabytes) with an exception and only warns above ``MAX_IMAGE_PIXELS``; both
are refused here, before any pixel is decoded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from cvlth.errors import DatasetError
from cvlth.input_files import display_path, open_regular


@contextmanager
def open_image(path: Path, dataset: str) -> Iterator[Image.Image]:
    """``Image.open(path)``; decompression bombs and unreadable files become DatasetErrors."""
    limit = f"{Image.MAX_IMAGE_PIXELS:,}" if Image.MAX_IMAGE_PIXELS else "PIL's limit"
    with _open_file(path, dataset) as handle, _decoded(handle, path, dataset, limit) as image:
        yield image


@contextmanager
def _open_file(path: Path, dataset: str) -> Iterator[BinaryIO]:
    """The file, opened only if it is a regular file (a FIFO named ``x.jpg`` would block PIL's read)."""
    try:
        handle = open_regular(path, "an image file", DatasetError)
    except DatasetError as error:
        raise DatasetError(f"{dataset}: {error.message}", hint=error.hint) from None
    except OSError as error:
        raise DatasetError(
            f"{dataset}: {display_path(path)} cannot be read ({error.strerror})", hint="re-copy the file"
        ) from None
    with handle:
        yield handle


@contextmanager
def _decoded(handle: BinaryIO, path: Path, dataset: str, limit: str) -> Iterator[Image.Image]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DatasetError(
            f"{dataset}: {path} was refused as a decompression bomb: {error}",
            hint=f"dataset images must have at most {limit} pixels; remove or shrink that file",
        ) from None
    except (OSError, UnidentifiedImageError) as error:
        raise DatasetError(
            f"{dataset}: {path} is malformed: not a readable image ({error})", hint="re-copy the file"
        ) from None
    with image:
        try:
            yield image
        except OSError as error:  # truncated data shows only when the pixels are decoded
            raise DatasetError(
                f"{dataset}: {path} is malformed: its pixels cannot be decoded ({error})",
                hint="re-copy the file",
            ) from None
