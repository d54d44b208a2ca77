"""Classification datasets stored as image files: ImageNet-style ``train/<class>/*`` trees and
VisDA-2017's image lists, decoded and resized into memory once and kept as uint8 tensors in the
decoded-image cache (``$CVLTH_CACHE``). Sets too large for memory stream instead
(:mod:`cvlth.data.streaming`, from the same listings)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cvlth.data.classification import FileList, ImageSet
from cvlth.data.files import malformed, require_files, require_regular_files
from cvlth.errors import DatasetError

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
        require_regular_files(dataset, found)
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
            raise malformed(
                dataset, list_path, f"line {number} is {line!r}, expected 'relative/path.jpg label'"
            )
        path = list_path.parent / parts[0]
        if not path.resolve().is_relative_to(list_path.parent.resolve()):  # `../x`, `/etc/x`, a link out
            raise malformed(
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
        raise malformed("visda2017", train_list, f"labels must lie in 0..{len(VISDA_CLASSES) - 1}")
    return VISDA_CLASSES, (train_files, train_labels), (test_files, test_labels)


def read_visda2017(root: Path, image_size: int, cache_dir: Path | None) -> tuple[ImageSet, ImageSet]:
    """VisDA-2017 classification: synthetic ``train/`` to real ``validation/`` (our test set)."""
    return _decoded("visda2017", list_visda2017(root), image_size, cache_dir)
