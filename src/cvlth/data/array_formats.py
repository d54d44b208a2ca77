"""CIFAR-10/100, SVHN and Fashion-MNIST read from their official array files (python pickles,
MATLAB ``.mat``, IDX) into :class:`~cvlth.data.classification.ImageSet` pairs (train, test).

The official files are read directly rather than through torchvision's dataset classes: those
verify MD5 sums of the full official files (so tiny fixtures and partial copies fail) and force a
folder layout (``FashionMNIST/raw/``) that Debian's package and most users' copies do not have.
The formats themselves are the official ones, byte for byte.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from cvlth.data.classification import ImageSet
from cvlth.data.files import malformed, require_files
from cvlth.data.safe_pickle import RefusedGlobal, load_restricted
from cvlth.errors import DatasetError

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
        raise malformed(dataset, path, f"not a python pickle ({type(error).__name__}: {error})") from None
    if not isinstance(raw, dict):
        raise malformed(dataset, path, f"expected a dict, found {type(raw).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar_batch(dataset: str, path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle(dataset, path)
    if "data" not in batch or label_key not in batch:
        raise malformed(dataset, path, f"needs keys 'data' and '{label_key}', found {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise malformed(
            dataset, path, f"'data' must be (N, 3072) with N labels, got {data.shape}, {labels.shape}"
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.copy())


def _class_names(dataset: str, path: Path, key: str) -> list[str]:
    meta = _unpickle(dataset, path)
    if key not in meta:
        raise malformed(dataset, path, f"needs key '{key}', found {sorted(meta)}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]  # type: ignore[union-attr]


def _check_labels(dataset: str, labels: torch.Tensor, num_classes: int, where: Path) -> None:
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise malformed(dataset, where, f"labels must lie in 0..{num_classes - 1}")


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
        raise malformed("svhn", path, f"not a MATLAB .mat file ({error})") from None
    if "X" not in mat or "y" not in mat:
        raise malformed("svhn", path, "needs variables 'X' (32x32x3xN) and 'y' (Nx1)")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != y.shape[0]:
        raise malformed(
            "svhn", path, f"'X' must be 32x32x3xN with N labels, got {x.shape} and {y.shape[0]} labels"
        )
    if y.size and (y.min() < 1 or y.max() > 10):
        raise malformed("svhn", path, "'y' must hold 1..10 (10 is the digit 0)")
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
        raise malformed(dataset, path, f"cannot be read ({error})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise malformed(dataset, path, "not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else ()
    expected = int(np.prod(dims)) if dims else -1
    if len(dims) != ndim or len(data) - header != expected:
        raise malformed(
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
            raise malformed(
                "fashion_mnist", image_path, f"{images.shape} images do not match {labels.shape} labels"
            )
        labels_t = torch.from_numpy(labels.astype(np.int64))
        _check_labels("fashion_mnist", labels_t, 10, label_path)
        sets.append(ImageSet(torch.from_numpy(images.copy()).unsqueeze(1), labels_t, FASHION_MNIST_CLASSES))
    return sets[0], sets[1]
