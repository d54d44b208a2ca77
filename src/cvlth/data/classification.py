"""Classification data: whole splits as uint8 tensors, how the validation split is drawn, and how
images are brought to one size.

An :class:`ImageSet` holds a split in memory as ``images: uint8 (N, C, H, W)`` and
``labels: int64 (N,)``; batching, augmentation and normalisation happen later (see
:mod:`cvlth.data.source` and :mod:`cvlth.data.transforms`). The readers are
:mod:`cvlth.data.array_formats` (CIFAR, SVHN, Fashion-MNIST) and :mod:`cvlth.data.image_folders`
(ImageNet-style trees, VisDA-2017); detection and segmentation data are :mod:`cvlth.data.samples`.

Validation splits follow the paper (CIFAR 45k/5k, SVHN 68,257/5,000, Fashion-MNIST 55k/5k): the
validation set is a seeded random subset of the official training set of size
``min(5000, n_train // 10)`` unless ``val_size`` is given, so tiny fixtures get a proportionally tiny
validation set; the test set is the official test set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from cvlth.data.source import TensorBatchSource
from cvlth.errors import DatasetError

PAPER_VAL_SIZE = 5000
#: A classification dataset stored as image files: classes, (train files, labels), (test files, labels).
FileList = tuple[list[str], tuple[list[Path], list[int]], tuple[list[Path], list[int]]]


@dataclass(frozen=True)
class ImageSet:
    """One split: raw uint8 images (N, C, H, W), int64 labels (N,) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be int64 (N,) with one label per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[indices], self.labels[indices], self.classes)

    def batches(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> TensorBatchSource:
        """A :class:`BatchSource` of ``(images uint8, labels int64)`` batches."""
        return TensorBatchSource(
            self.images, self.labels, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )


@dataclass(frozen=True)
class DatasetSplits:
    """What :func:`cvlth.data.registry.load_dataset` returns: three splits and how to normalise them."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r} of {self.name}", hint="use train, val or test")
        return getattr(self, name)


# --- splitting and sizing -------------------------------------------------------------------------


def default_val_size(num_train: int, paper_val_size: int = PAPER_VAL_SIZE) -> int:
    """The paper's 5,000, shrunk to a tenth of the training set for small (fixture) datasets."""
    return min(paper_val_size, num_train // 10)


def split_train_val(
    full: ImageSet, val_size: int | None, seed: int, val_split: str = "random"
) -> tuple[ImageSet, ImageSet]:
    """``val_size`` images of ``full`` become val, the rest (in file order) is train: a seeded random
    subset (``val_split="random"``) or the last ``val_size`` images (``"last"``, the reference code's)."""
    n = len(full)
    size = default_val_size(n) if val_size is None else val_size
    if not 0 <= size < n:
        raise DatasetError(
            f"val_size={size} does not fit a training set of {n} images", hint=f"use 0..{n - 1}"
        )
    if val_split == "last":
        return full.subset(torch.arange(n - size)), full.subset(torch.arange(n - size, n))
    if val_split != "random":
        raise DatasetError(f"val_split must be 'random' or 'last' (got {val_split!r})")
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_indices = permutation[:size].sort().values
    train_indices = permutation[size:].sort().values
    return full.subset(train_indices), full.subset(val_indices)


def fit_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bring uint8 (N, C, h, w) images to (N, C, size, size).

    Sources up to 8 pixels smaller (28x28 digits and garments) are zero-padded around the centre,
    which keeps every pixel as it was (their background is zero); anything else is resized
    bilinearly with antialiasing.
    """
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h <= size and w <= size and size - min(h, w) <= 8:
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(images, (left, size - w - left, top, size - h - top))
    resized = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8)
