"""Streaming image folders: images stay in their files and are decoded batch by batch.

The in-memory readers (:func:`cvlth.data.image_folders.read_imagefolder`) resize every image to
224 px once and keep the whole set in RAM, which suits the small fixture sets but not ImageNet
(1.28M images, ~190 GB at 224 px). A :class:`StreamingImageSet` keeps only the file paths (one
numpy bytes array, so forked workers share it without copy-on-write refcount traffic) and the
labels; a :class:`StreamingBatchSource` decodes each batch in ``torch.utils.data.DataLoader``
worker processes (persistent, with pinned memory when CUDA is available).

Transforms are the paper's (torchvision's ImageNet recipe) on the *full* decoded image:
training ``RandomResizedCrop(size, scale=(0.08, 1))`` + ``RandomHorizontalFlip()``, evaluation
``Resize(size * 256 / 224) + CenterCrop(size)``. Batches are raw ``(uint8 (N, 3, size, size), int64
(N,))`` like every other :class:`~cvlth.data.source.BatchSource`: normalisation stays with the
objective (use ``augment: none`` with the supervised objective, the crop is already done here).

Two views (SimCLR, MoCo v2): :meth:`StreamingImageSet.two_views` makes each training item a
``(2, 3, size, size)`` pair, two independent ``RandomResizedCrop(size, scale)`` of the one decoded
full image (no flip: the objective applies the rest of its view to the batch), so batches are
``(uint8 (N, 2, 3, size, size), int64 (N,))``. :func:`cvlth.objectives.views.training_images` asks
for them with the objective's ``crop_scale``.

Determinism: the epoch's order is the one :class:`~cvlth.data.source.TensorBatchSource` draws
from ``(seed, epoch)``, and each training sample's crop and flip (a pair's two crops, one after
the other) come from a generator seeded ``sample_seed(seed, epoch, index)`` (``index``: the
image's position in the set), never from a worker's RNG, so any worker count gives the same
batches and a run killed mid-epoch resumes bit-identically from ``epoch_batches(epoch, start)``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from cvlth.data.classification import DatasetSplits, FileList, split_train_val
from cvlth.data.images import open_image
from cvlth.data.source import TensorBatchSource
from cvlth.errors import DatasetError
from cvlth.seeds import mix

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
WORKERS_ENV = "CVLTH_DATA_WORKERS"


def default_workers() -> int:
    """``$CVLTH_DATA_WORKERS``, else up to 8 workers (one core left to the training process).

    Not a dataset option on purpose: the worker count changes no number, so it must not change a
    run's identity."""
    value = os.environ.get(WORKERS_ENV)
    return int(value) if value is not None else min(8, max(0, (os.cpu_count() or 1) - 1))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s crop and flip in ``epoch`` of a source seeded ``seed``."""
    return mix(seed, epoch, index)


def random_resized_crop_params(
    width: int, height: int, generator: torch.Generator, scale=CROP_SCALE, ratio=CROP_RATIO
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` (same draws, same order) on ``generator``
    instead of the global RNG; returns (top, left, height, width)."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height  # ten misses: the central crop of the closest allowed aspect ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True, eq=False)  # eq would compare numpy arrays element-wise
class StreamingImageSet:
    """One split as files: the same interface the study uses of an in-memory ``ImageSet``
    (``len``, ``image_shape``, ``subset``, ``batches``, ``classes``), decoding on demand."""

    dataset: str
    paths: np.ndarray  # bytes (os.fsencode) of each file, in file order
    labels: torch.Tensor  # int64 (N,)
    classes: list[str]
    size: int = 224
    training: bool = True  # RandomResizedCrop + flip; False: Resize + CenterCrop
    workers: int | None = None  # None: default_workers()
    view_scale: tuple[float, float] | None = None  # set: training items are two-view pairs (two_views)

    @classmethod
    def from_files(
        cls, dataset: str, files: Sequence[Path], labels: Sequence[int], classes: list[str], **options
    ) -> StreamingImageSet:
        paths = np.array([os.fsencode(p) for p in files], dtype=np.bytes_)
        return cls(dataset, paths, torch.tensor(list(labels), dtype=torch.int64), classes, **options)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    @property
    def resize(self) -> int:
        """The evaluation resize before the centre crop: 256 for 224 (the ImageNet ratio)."""
        return round(self.size * 256 / 224)

    def subset(self, indices: torch.Tensor) -> StreamingImageSet:
        chosen = np.asarray(indices, dtype=np.int64)
        return replace(self, paths=self.paths[chosen], labels=self.labels[torch.as_tensor(chosen)])

    def evaluation(self) -> StreamingImageSet:
        """The same files with the evaluation transform."""
        return replace(self, training=False, view_scale=None)

    def two_views(self, scale: tuple[float, float]) -> StreamingImageSet:
        """The same training files, each item two ``RandomResizedCrop(size, scale)`` views of the full
        image stacked as uint8 (2, 3, size, size): what a contrastive objective crops its views from."""
        low, high = (float(bound) for bound in scale)
        if not self.training:
            raise DatasetError(
                f"{self.dataset}: two views are drawn from training images, not evaluation ones"
            )
        if not 0 < low <= high:
            raise DatasetError(
                f"{self.dataset}: a view's crop scale must satisfy 0 < low <= high (got {scale})"
            )
        return replace(self, view_scale=(low, high))

    def read(self, index: int, seed: int = 0, epoch: int = 0) -> torch.Tensor:
        """Image ``index`` as uint8 (3, size, size) -- (2, 3, size, size) for a two-view set --
        transformed for ``epoch`` of a source seeded ``seed``."""
        path = Path(os.fsdecode(self.paths[index]))
        with open_image(path, self.dataset) as opened:
            image = opened.convert("RGB")  # decodes the full image, as torchvision's ImageFolder
        if not self.training:
            image = TF.resize(image, self.resize, InterpolationMode.BILINEAR, antialias=True)
            return _to_tensor(TF.center_crop(image, self.size))
        generator = torch.Generator().manual_seed(sample_seed(seed, epoch, index))
        if self.view_scale is not None:  # one decode, two independent crops of the full image
            views = [self._crop(image, generator, self.view_scale) for _ in range(2)]
            return torch.stack([_to_tensor(view) for view in views])
        image = self._crop(image, generator, CROP_SCALE)
        if torch.rand(1, generator=generator) < 0.5:
            image = TF.hflip(image)
        return _to_tensor(image)

    def _crop(
        self, image: Image.Image, generator: torch.Generator, scale: tuple[float, float]
    ) -> Image.Image:
        top, left, h, w = random_resized_crop_params(image.width, image.height, generator, scale)
        size = [self.size, self.size]
        return TF.resized_crop(image, top, left, h, w, size, InterpolationMode.BILINEAR, antialias=True)

    def batches(
        self, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> StreamingBatchSource:
        """A :class:`BatchSource` of ``(images uint8, labels int64)`` batches."""
        return StreamingBatchSource(self, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)


def streaming_splits(
    name: str,
    listing: FileList,
    stats: tuple,
    size: int,
    seed: int = 0,
    val_size: int | None = None,
    val_split: str = "random",
    train_crop: str = "random_resized",
) -> DatasetSplits:
    """The splits of a listed dataset as streaming sets (val carved from train as the in-memory
    path does; val and test use the evaluation transform). ``train_crop="center"`` gives training
    images the evaluation transform too (for an objective that crops them again; SimCLR and MoCo
    refuse it: they take two views of the full image, see :meth:`StreamingImageSet.two_views`)."""
    if train_crop not in ("random_resized", "center"):
        raise DatasetError(f"{name}: train_crop must be 'random_resized' or 'center' (got {train_crop!r})")
    classes, (train_files, train_labels), (test_files, test_labels) = listing
    full = StreamingImageSet.from_files(name, train_files, train_labels, classes, size=size)
    train, val = split_train_val(full, val_size, seed, val_split)  # type: ignore[arg-type]
    if train_crop == "center":
        train = train.evaluation()  # type: ignore[attr-defined]
    test = StreamingImageSet.from_files(name, test_files, test_labels, classes, size=size, training=False)
    return DatasetSplits(name, train, val.evaluation(), test, *stats)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Failed:
    """A DatasetError raised in a worker, carried back whole (a re-raised worker exception would
    lose its hint and carry the worker's traceback in its message)."""

    message: str
    hint: str | None


class _Reader(Dataset):
    """What a worker holds: the set and the source seed; an item is keyed by (epoch, index)."""

    def __init__(self, images: StreamingImageSet, seed: int) -> None:
        self.images = images
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | _Failed:
        epoch, index = key
        try:
            return self.images.read(index, self.seed, epoch), int(self.images.labels[index])
        except DatasetError as error:
            return _Failed(error.message, error.hint)


def _collate(items: list[tuple[torch.Tensor, int] | _Failed]) -> tuple[torch.Tensor, torch.Tensor] | _Failed:
    failed = next((item for item in items if isinstance(item, _Failed)), None)
    if failed is not None:
        return failed
    images, labels = zip(*items, strict=True)  # type: ignore[misc]
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class _Plan:
    """The batch sampler: the main process sets the batches of the epoch being read, so one
    DataLoader (and its persistent workers) serves every epoch and every resume position."""

    def __init__(self) -> None:
        self.batches: Iterator[list[tuple[int, int]]] = iter(())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.batches


class StreamingBatchSource:
    """Batches of a :class:`StreamingImageSet` in the order ``TensorBatchSource`` gives its indices."""

    def __init__(
        self,
        images: StreamingImageSet,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.images = images
        self.seed = seed
        self._indices = TensorBatchSource(
            torch.arange(len(images)), batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
        )
        self._plan = _Plan()
        self._loader: DataLoader | None = None

    def __len__(self) -> int:
        return len(self._indices)

    def loader(self) -> DataLoader:
        if self._loader is None:
            workers = self.images.workers if self.images.workers is not None else default_workers()
            self._loader = DataLoader(
                _Reader(self.images, self.seed),
                batch_sampler=self._plan,
                collate_fn=_collate,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0,
                prefetch_factor=4 if workers > 0 else None,
                # Workers' base seed comes from this generator: drawn from the global RNG it would
                # shift dropout's stream by one draw per epoch and per resume (no exact resume).
                generator=torch.Generator().manual_seed(0),
            )
        return self._loader

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._plan.batches = (
            [(epoch, int(i)) for i in chosen] for (chosen,) in self._indices.epoch_batches(epoch, start)
        )
        for batch in self.loader():
            if isinstance(batch, _Failed):
                raise DatasetError(batch.message, hint=batch.hint)
            yield batch
