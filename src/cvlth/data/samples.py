"""Per-image datasets for detection and segmentation, and their train / val / test splits.

Classification data are whole uint8 tensors (:class:`~cvlth.data.classification.DatasetSplits`);
detection and segmentation images differ in size and carry one target dict each, so these datasets
are indexed collections of samples ``(image uint8 [C, H, W], target dict)``, read lazily:

* detection targets: ``boxes`` float32 (K, 4) x1, y1, x2, y2 in pixels with x2/y2 exclusive,
  ``labels`` int64 (K,) 1-based (0 is background), optionally ``difficult`` bool (K,);
* segmentation targets: ``semantic`` uint8 (H, W): 0 background, c for class c, 255 ignore.

The built-in scenes (:class:`~cvlth.data.scenes.SceneSet`) carry both; VOC readers carry one.
:meth:`SampleSplits.batches` serves a split as a :class:`~cvlth.data.source.BatchSource` whose
batches are ``(list of images, list of targets)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from cvlth.data.source import TensorBatchSource
from cvlth.errors import DatasetError

SPLITS: tuple[str, ...] = ("train", "val", "test")


@runtime_checkable
class IndexedSamples(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]: ...


@dataclass(frozen=True)
class SampleSplits:
    """What ``load_dataset`` returns for a detection / segmentation dataset.

    ``classes[0]`` is ``"background"``, so ``num_classes`` is what torchvision's detectors and the
    segmenter take (K object classes + 1). ``tasks`` says which targets the samples carry
    (``"detection"``, ``"segmentation"``). ``mean`` / ``std`` are per channel on the [0, 1] scale.
    ``image_shape`` is (C, H, W) of the largest image (VOC: each side at most ``max_size``).
    """

    name: str
    train: IndexedSamples
    val: IndexedSamples | None
    test: IndexedSamples
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    tasks: tuple[str, ...]
    image_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> IndexedSamples:
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r} of {self.name}", hint="use train, val or test")
        samples = getattr(self, name)
        if samples is None:
            raise DatasetError(
                f"{self.name} has no {name} split", hint="pass val_size > 0 to hold out a validation set"
            )
        return samples

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> SceneBatchSource:
        """A BatchSource over ``split``; ``shuffle`` defaults to True for train, False otherwise."""
        return sample_batches(
            self.split(split),
            batch_size,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=seed,
            drop_last=drop_last,
        )


def sample_batches(
    samples: IndexedSamples, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> SceneBatchSource:
    """Batches ``(list of images, list of targets)`` of any indexed sample collection."""
    return SceneBatchSource(samples, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


class SceneBatchSource:
    """A :class:`BatchSource` over indexed samples (scenes, VOC):
    batch = (list of images, list of targets).

    Lists rather than stacked tensors, as torchvision's detectors take them (and instance counts
    differ per image); ``torch.stack(images)`` gives the batch tensor for segmentation.
    """

    def __init__(
        self,
        scenes: IndexedSamples,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.scenes = scenes
        self._indices = TensorBatchSource(
            torch.arange(len(scenes)), batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    def __len__(self) -> int:
        return len(self._indices)

    def epoch_batches(
        self, epoch: int, start: int = 0
    ) -> Iterator[tuple[list[torch.Tensor], list[dict[str, Any]]]]:
        for (indices,) in self._indices.epoch_batches(epoch, start):
            items = [self.scenes[int(i)] for i in indices]
            yield [image for image, _ in items], [target for _, target in items]


class Subset:
    """The samples of ``base`` at ``indices`` (a held-out validation set)."""

    def __init__(self, base: IndexedSamples, indices: torch.Tensor) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.base[self.indices[index]]


def hold_out(samples: IndexedSamples, size: int, seed: int) -> tuple[IndexedSamples, IndexedSamples | None]:
    """Split ``size`` seeded random samples off ``samples`` as validation (None when size is 0)."""
    if size <= 0:
        return samples, None
    if size >= len(samples):
        raise DatasetError(f"val_size {size} must be smaller than the {len(samples)} training samples")
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    return Subset(samples, order[size:].sort().values), Subset(samples, order[:size].sort().values)
