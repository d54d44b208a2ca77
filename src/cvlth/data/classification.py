"""Image-classification datasets read from their official on-disk formats into uint8 tensors.

Every reader returns :class:`ImageSet` objects holding the whole split in memory as
``images: uint8 (N, C, H, W)`` and ``labels: int64 (N,)``; batching, augmentation and
normalisation happen later (see :mod:`cvlth.data.source` and :mod:`cvlth.data.transforms`).

The official files are read directly rather than through torchvision's dataset classes: those
verify MD5 sums of the full official files (so tiny fixtures and partial copies fail) and force a
folder layout (``FashionMNIST/raw/``) that Debian's package and most users' copies do not have.
The formats themselves are the official ones, byte for byte.

Validation splits follow the paper (CIFAR 45k/5k, SVHN 68,257/5,000, Fashion-MNIST 55k/5k): the
validation set is a seeded random subset of the official training set of size
``min(5000, n_train // 10)`` unless ``val_size`` is given, so tiny fixtures get a proportionally tiny
validation set; the test set is the official test set.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvlth.data.safe_pickle import RefusedGlobal, load_restricted
from cvlth.data.source import TensorBatchSource
from cvlth.errors import DatasetError

PAPER_VAL_SIZE = 5000


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


# --- checking files -------------------------------------------------------------------------------


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


def _malformed(dataset: str, path: Path, what: str) -> DatasetError:
    return DatasetError(f"{dataset}: {path} is malformed: {what}", hint="re-copy the official file")


# --- CIFAR (python pickle batches) ----------------------------------------------------------------


def _unpickle(dataset: str, path: Path) -> dict[str, object]:
    try:
        raw = load_restricted(path)
    except RefusedGlobal as error:
        raise DatasetError(
            f"{dataset}: {path} was refused: {error}; nothing in it was run",
            hint="genuine CIFAR files hold only numpy arrays, lists and strings; re-copy the official file",
        ) from None
    except Exception as error:  # pickle raises many types on garbage input
        raise _malformed(dataset, path, f"not a python pickle ({type(error).__name__}: {error})") from None
    if not isinstance(raw, dict):
        raise _malformed(dataset, path, f"expected a dict, found {type(raw).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar_batch(dataset: str, path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle(dataset, path)
    if "data" not in batch or label_key not in batch:
        raise _malformed(dataset, path, f"needs keys 'data' and '{label_key}', found {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise _malformed(
            dataset, path, f"'data' must be (N, 3072) with N labels, got {data.shape}, {labels.shape}"
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.copy())


def _class_names(dataset: str, path: Path, key: str) -> list[str]:
    meta = _unpickle(dataset, path)
    if key not in meta:
        raise _malformed(dataset, path, f"needs key '{key}', found {sorted(meta)}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]  # type: ignore[union-attr]


def _check_labels(dataset: str, labels: torch.Tensor, num_classes: int, where: Path) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise _malformed(dataset, where, f"labels must lie in 0..{num_classes - 1}")


def read_cifar10(root: Path) -> tuple[ImageSet, ImageSet]:
    """``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` under ``root`` (or root itself)."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    folder = _official_subfolder(root, "cifar-10-batches-py")
    paths = require_files("cifar10", folder, names)
    classes = _class_names("cifar10", paths[-1], "label_names")
    parts = [_cifar_batch("cifar10", p, "labels") for p in paths[:5]]
    train = ImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), classes)
    test = ImageSet(*_cifar_batch("cifar10", paths[5], "labels"), classes)
    _check_labels("cifar10", torch.cat([train.labels, test.labels]), len(classes), folder)
    return train, test


def read_cifar100(root: Path) -> tuple[ImageSet, ImageSet]:
    """``cifar-100-python/{train, test, meta}`` with the 100 ``fine_labels``."""
    folder = _official_subfolder(root, "cifar-100-python")
    train_path, test_path, meta_path = require_files("cifar100", folder, ["train", "test", "meta"])
    classes = _class_names("cifar100", meta_path, "fine_label_names")
    train = ImageSet(*_cifar_batch("cifar100", train_path, "fine_labels"), classes)
    test = ImageSet(*_cifar_batch("cifar100", test_path, "fine_labels"), classes)
    _check_labels("cifar100", torch.cat([train.labels, test.labels]), len(classes), folder)
    return train, test


def _official_subfolder(root: Path, name: str) -> Path:
    """Accept both ``root/<official folder>/`` and ``root`` being that folder itself."""
    return root / name if (root / name).is_dir() else root


# --- SVHN (MATLAB .mat, cropped digits) -----------------------------------------------------------

SVHN_CLASSES = [str(d) for d in range(10)]


def _svhn_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat  # scipy comes with scikit-learn; imported late, it is slow to load

    try:
        mat = loadmat(path)
    except Exception as error:
        raise _malformed("svhn", path, f"not a MATLAB .mat file ({error})") from None
    if "X" not in mat or "y" not in mat:
        raise _malformed("svhn", path, "needs variables 'X' (32x32x3xN) and 'y' (Nx1)")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise _malformed(
            "svhn", path, f"'X' must be 32x32x3xN with N labels, got {x.shape} and {y.shape[0]} labels"
        )
    if y.size and (y.min() < 1 or y.max() > 10):
        raise _malformed("svhn", path, "'y' must hold 1..10 (10 is the digit 0)")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    return images, torch.from_numpy(y % 10)  # the official files label the digit 0 as 10


def read_svhn(root: Path) -> tuple[ImageSet, ImageSet]:
    """``train_32x32.mat`` and ``test_32x32.mat`` (the ``extra`` set is not used, as in the paper)."""
    train_path, test_path = require_files("svhn", root, ["train_32x32.mat", "test_32x32.mat"])
    return ImageSet(*_svhn_mat(train_path), SVHN_CLASSES), ImageSet(*_svhn_mat(test_path), SVHN_CLASSES)


# --- Fashion-MNIST (IDX) --------------------------------------------------------------------------

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path, dataset: str = "idx") -> np.ndarray:
    """An unsigned-byte IDX array (``.gz`` or plain): 2 zero bytes, type 0x08, ndim, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise _malformed(dataset, path, f"cannot be read ({error})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise _malformed(dataset, path, "not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else ()
    expected = int(np.prod(dims)) if dims else -1
    if len(dims) != ndim or len(data) - header != expected:
        raise _malformed(
            dataset, path, f"header says dims {dims} but the payload has {len(data) - header} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _idx_path(root: Path, stem: str) -> Path:
    gz = root / f"{stem}.gz"
    return gz if gz.is_file() else root / stem


def read_fashion_mnist(root: Path, missing_hint: str | None = None) -> tuple[ImageSet, ImageSet]:
    """The four IDX files (each ``.gz`` or not) directly under ``root``; images become (N, 1, 28, 28)."""
    stems = [stem for pair in FASHION_MNIST_FILES.values() for stem in pair]
    paths = [_idx_path(root, stem) for stem in stems]
    if any(not p.is_file() for p in paths):
        require_files("fashion_mnist", root, [f"{s}[.gz]" for s in stems], hint=missing_hint)
    sets = []
    for image_path, label_path in (paths[0:2], paths[2:4]):
        images, labels = read_idx(image_path, "fashion_mnist"), read_idx(label_path, "fashion_mnist")
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise _malformed(
                "fashion_mnist", image_path, f"{images.shape} images do not match {labels.shape} labels"
            )
        labels_t = torch.from_numpy(labels.astype(np.int64))
        _check_labels("fashion_mnist", labels_t, 10, label_path)
        sets.append(ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), labels_t, FASHION_MNIST_CLASSES))
    return sets[0], sets[1]


# --- folders of image files (ImageNet-style trees, VisDA-2017 lists) -----------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VISDA_CLASSES = [
    "aeroplane", "bicycle", "bus", "car", "horse", "knife",
    "motorcycle", "person", "plant", "skateboard", "train", "truck",
]  # fmt: skip


def default_cache_dir() -> Path:
    """``$CVLTH_CACHE`` or ``~/.cache/cvlth``: decoded image folders are kept there as uint8 tensors."""
    return Path(os.environ.get("CVLTH_CACHE", Path.home() / ".cache" / "cvlth"))


def _decode_resized(path: Path, size: int, dataset: str) -> torch.Tensor:
    from PIL import Image

    from cvlth.data.images import open_image

    with open_image(path, dataset) as image:
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def _files_key(files: Sequence[Path], labels: Sequence[int], size: int) -> str:
    """Changes whenever a file, its label, its size/mtime or the target size changes."""
    digest = hashlib.sha256(f"cvlth-imagecache/1 size={size}".encode())
    for path, label in zip(files, labels, strict=True):
        stat = path.stat()
        digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def load_image_files(
    dataset: str, files: Sequence[Path], labels: Sequence[int], size: int, cache_dir: Path | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize every file to size x size RGB (bilinear), cached as a safetensors file.

    The cache file is named by a hash of the file list, sizes, mtimes and ``size``, written
    atomically, so a reader never sees half a cache and a changed folder is decoded again.
    """
    from safetensors.torch import load_file, save_file

    from cvlth.atomic import atomic_path

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / dataset / f"{_files_key(files, labels, size)}.safetensors"
        if cache.is_file():
            tensors = load_file(cache)
            return tensors["images"], tensors["labels"]
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    for index, path in enumerate(files):
        images[index] = _decode_resized(path, size, dataset)
    label_tensor = torch.tensor(list(labels), dtype=torch.int64)
    if cache is not None:
        with atomic_path(cache) as tmp:
            save_file({"images": images, "labels": label_tensor}, str(tmp))
    return images, label_tensor


def _scan_class_tree(dataset: str, folder: Path) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
    files: list[Path] = []
    labels: list[int] = []
    empty: list[Path] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        empty += [] if found else [folder / name]
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetError(
            f"{dataset}: no images found in {folder}; expected {folder}/<class>/*.png|jpg",
            hint="point --root at a folder holding train/<class>/... and val/<class>/...",
        )
    if empty:
        # An empty folder would silently become a class that no image teaches or tests.
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DatasetError(
            f"{dataset}: class folder {empty[0]}{more} holds no images ({', '.join(IMAGE_SUFFIXES)})",
            hint="remove the empty class folder or fill it; every class needs images in train/ and val/",
        )
    return classes, files, labels


FileList = tuple[list[str], tuple[list[Path], list[int]], tuple[list[Path], list[int]]]


def list_imagefolder(root: Path) -> FileList:
    """Classes, (train files, labels) and (test files, labels) of an ImageNet-style tree."""
    classes, train_files, train_labels = _scan_class_tree("imagefolder", root / "train")
    test_classes, test_files, test_labels = _scan_class_tree("imagefolder", root / "val")
    if test_classes != classes:
        raise DatasetError(
            f"imagefolder: {root / 'val'} has classes {test_classes[:5]}... but {root / 'train'} has {classes[:5]}...",
            hint="train/ and val/ need the same class folders",
        )
    return classes, (train_files, train_labels), (test_files, test_labels)


def _decoded(
    dataset: str, listing: FileList, image_size: int, cache_dir: Path | None
) -> tuple[ImageSet, ImageSet]:
    classes, *splits = listing
    train, test = (
        ImageSet(*load_image_files(dataset, *files, image_size, cache_dir), classes) for files in splits
    )
    return train, test


def read_imagefolder(root: Path, image_size: int, cache_dir: Path | None) -> tuple[ImageSet, ImageSet]:
    """ImageNet-style ``train/<class>/*`` and ``val/<class>/*``; the official val is our test set."""
    return _decoded("imagefolder", list_imagefolder(root), image_size, cache_dir)


def _read_image_list(dataset: str, list_path: Path) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for number, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise _malformed(
                dataset, list_path, f"line {number} is {line!r}, expected 'relative/path.jpg label'"
            )
        path = list_path.parent / parts[0]
        if not path.resolve().is_relative_to(list_path.parent.resolve()):  # `../x`, `/etc/x`, a link out
            raise _malformed(
                dataset, list_path, f"line {number} names {parts[0]!r}, outside {list_path.parent}"
            )
        files.append(path)
        labels.append(int(parts[1]))
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise DatasetError(
            f"{dataset}: {len(missing)} images listed in {list_path} are missing, e.g. {missing[0]}",
            hint="extract the full VisDA-2017 archives next to their image_list.txt",
        )
    return files, labels


def list_visda2017(root: Path) -> FileList:
    """Classes, (train files, labels) and (test files, labels) of VisDA-2017 classification."""
    train_list, test_list = require_files(
        "visda2017", root, ["train/image_list.txt", "validation/image_list.txt"]
    )
    train_files, train_labels = _read_image_list("visda2017", train_list)
    test_files, test_labels = _read_image_list("visda2017", test_list)
    num_classes = max(train_labels + test_labels, default=-1) + 1
    if min(train_labels + test_labels, default=0) < 0 or num_classes > len(VISDA_CLASSES):
        raise _malformed("visda2017", train_list, f"labels must lie in 0..{len(VISDA_CLASSES) - 1}")
    return VISDA_CLASSES, (train_files, train_labels), (test_files, test_labels)


def read_visda2017(root: Path, image_size: int, cache_dir: Path | None) -> tuple[ImageSet, ImageSet]:
    """VisDA-2017 classification: synthetic ``train/`` to real ``validation/`` (our test set)."""
    return _decoded("visda2017", list_visda2017(root), image_size, cache_dir)
