"""PASCAL VOC detection (VOC2007 + VOC2012) and segmentation (VOC2012) readers.

``root`` is the folder holding ``VOC2007/`` and ``VOC2012/`` (or ``VOCdevkit/VOC2007`` ...), each
the standard devkit layout: ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg``,
``ImageSets/Main/{trainval,test}.txt``, ``ImageSets/Segmentation/{train,val}.txt`` and
``SegmentationClass/<id>.png``.

Samples are read lazily, one image per ``__getitem__``, and resized (bilinear, antialiased) so the
longer side is at most ``max_size`` (default 512; ``None`` keeps the native size; smaller images are
never enlarged; VOC's own are at most 500 px, so 512 keeps them native). Images are uint8 RGB
[3, H, W]. Nothing decoded is kept: a set holds its ids and decodes the files on every read (about
7 ms for a 500x375 JPEG + PNG on one busy core: ``benchmarks/segmentation_view.py``), where holding
VOC-aug's 10,582 decoded images and labels would take ~8 GB. Training geometry (random scale,
crop) happens later, in the objectives, on the training device.

**Boxes.** VOC stores 1-based, inclusive pixel indices (``xmin=1`` is the first column, ``xmax=W``
the last). We convert to torchvision's continuous x1, y1, x2, y2 with pixel i covering [i, i+1):
``x1 = xmin - 1``, ``x2 = xmax`` (exclusive), the same convention as the built-in scenes, then scale
by the resize factor of each axis.

**Difficult objects** are kept and flagged in ``target["difficult"]``; the detection objective
leaves them out of the training targets by default and ignores them in evaluation (as VOC does).

**Segmentation** labels are the palette indices of ``SegmentationClass`` PNGs (mode "P"): 0 is
background, 1..20 the classes, 255 the "void" border, kept as the ignore index. They are resized
with nearest neighbour.

Splits (``load_dataset("voc_detection")``): train = VOC2007 trainval + VOC2012 trainval,
test = VOC2007 test (the paper's 07+12 -> 07). ``load_dataset("voc_segmentation")``: train =
VOC2012 train (1,464), test = VOC2012 val (1,449). Both: ``val_size`` images (default 0: no val)
are held out of train with ``seed``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cvlth.data.images import open_image
from cvlth.data.samples import SampleSplits, hold_out
from cvlth.data.stats import IMAGENET_STATS
from cvlth.errors import DatasetError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
IGNORE_INDEX = 255
DEFAULT_MAX_SIZE = 512
DETECTION_FILES: tuple[str, ...] = (
    "VOC2007/ImageSets/Main/trainval.txt",
    "VOC2007/ImageSets/Main/test.txt",
    "VOC2012/ImageSets/Main/trainval.txt",
    "VOC2007/Annotations/<id>.xml",
    "VOC20xx/JPEGImages/<id>.jpg",
)
SEGMENTATION_FILES: tuple[str, ...] = (
    "VOC2012/ImageSets/Segmentation/train.txt",
    "VOC2012/ImageSets/Segmentation/val.txt",
    "VOC2012/JPEGImages/<id>.jpg",
    "VOC2012/SegmentationClass/<id>.png",
)


def year_dir(root: Path, year: str) -> Path:
    """``root/VOC<year>`` or ``root/VOCdevkit/VOC<year>``; a DatasetError naming both if neither exists."""
    candidates = (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DatasetError(
        f"VOC{year} not found: neither {candidates[0]} nor {candidates[1]} exists",
        hint="pass --root to the folder holding the extracted VOCdevkit (or set $CVLTH_DATA)",
    )


def read_image_ids(path: Path) -> list[str]:
    """The image ids listed in an ``ImageSets`` file (first column; blank lines skipped)."""
    if not path.is_file():
        raise DatasetError(f"VOC image list not found: {path}", hint="is the devkit fully extracted?")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class VocAnnotation:
    """One annotation file, boxes in torchvision's convention at the native size."""

    width: int
    height: int
    boxes: torch.Tensor  # float32 (K, 4): x1, y1, x2 (exclusive), y2 (exclusive)
    labels: torch.Tensor  # int64 (K,), 1-based index into VOC_CLASSES
    difficult: torch.Tensor  # bool (K,)


def read_annotation(path: Path) -> VocAnnotation:
    """Parse a VOC XML file; unknown class names and malformed files are DatasetErrors."""
    if not path.is_file():
        raise DatasetError(f"VOC annotation not found: {path}", hint="is the devkit fully extracted?")
    try:
        root = ET.parse(path).getroot()
        width = int(root.findtext("size/width", "0"))
        height = int(root.findtext("size/height", "0"))
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise DatasetError(f"{path}: unknown VOC class {name!r}")
            bndbox = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[union-attr, arg-type]
            boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])  # 1-based inclusive -> 0-based exclusive
            labels.append(VOC_CLASSES.index(name) + 1)
            difficult.append(obj.findtext("difficult", "0").strip() == "1")
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise DatasetError(f"malformed VOC annotation {path}: {exc}") from exc
    return VocAnnotation(
        width,
        height,
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(difficult, dtype=torch.bool),
    )


def fitted_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most ``max_size`` (never enlarged)."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def read_rgb(path: Path, max_size: int | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """A JPEG/PNG as uint8 [3, H, W] fitted to ``max_size``, and its native (width, height)."""
    if not path.is_file():
        raise DatasetError(f"VOC image not found: {path}", hint="is the devkit fully extracted?")
    with open_image(path, "voc") as image:
        rgb = image.convert("RGB")
    native = rgb.size
    size = fitted_size(*native, max_size)
    if size != native:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous(), native


def read_label_png(path: Path, max_size: int | None = None) -> torch.Tensor:
    """A palette PNG's indices as uint8 (H, W) fitted to ``max_size`` by nearest neighbour (255 stays)."""
    if not path.is_file():
        raise DatasetError(f"VOC segmentation label not found: {path}", hint="is the devkit fully extracted?")
    with open_image(path, "voc") as image:
        if image.mode not in ("P", "L"):
            raise DatasetError(f"{path}: expected a palette (mode P) PNG, got mode {image.mode}")
        labels = image.copy()
    size = fitted_size(*labels.size, max_size)
    if size != labels.size:
        labels = labels.resize(size, Image.Resampling.NEAREST)
    return torch.from_numpy(np.asarray(labels, dtype=np.uint8).copy())


class VocDetectionSet:
    """Samples ``(image uint8 [3, H, W], {"boxes", "labels", "difficult", "image_id"})`` of one image list.

    ``image_sets`` are ``(year, name)`` pairs, e.g. ``[("2007", "trainval"), ("2012", "trainval")]``.
    Every listed id is checked for its annotation and image when the set is built, so a missing file
    fails early with its name.
    """

    def __init__(
        self, root: str | Path, image_sets: list[tuple[str, str]], max_size: int | None = DEFAULT_MAX_SIZE
    ) -> None:
        self.max_size = max_size
        self.items: list[tuple[Path, str]] = []
        for year, name in image_sets:
            base = year_dir(Path(root), year)
            ids = read_image_ids(base / "ImageSets" / "Main" / f"{name}.txt")
            _require_files(base, ids, ("Annotations/{}.xml", "JPEGImages/{}.jpg"))
            self.items.extend((base, i) for i in ids)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        base, image_id = self.items[index]
        annotation = read_annotation(base / "Annotations" / f"{image_id}.xml")
        image, (width, height) = read_rgb(base / "JPEGImages" / f"{image_id}.jpg", self.max_size)
        new_h, new_w = image.shape[-2:]
        scale = torch.tensor([new_w / width, new_h / height] * 2, dtype=torch.float32)
        target = {
            "boxes": annotation.boxes * scale,
            "labels": annotation.labels,
            "difficult": annotation.difficult,
            "image_id": f"{base.name}/{image_id}",
        }
        return image, target


class VocSegmentationSet:
    """Samples ``(image uint8 [3, H, W], {"semantic": uint8 (H, W), "image_id"})`` of VOC2012."""

    def __init__(
        self, root: str | Path, image_set: str = "train", max_size: int | None = DEFAULT_MAX_SIZE
    ) -> None:
        self.base = year_dir(Path(root), "2012")
        self.max_size = max_size
        self.ids = read_image_ids(self.base / "ImageSets" / "Segmentation" / f"{image_set}.txt")
        _require_files(self.base, self.ids, ("JPEGImages/{}.jpg", "SegmentationClass/{}.png"))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        labels = read_label_png(self.base / "SegmentationClass" / f"{image_id}.png", self.max_size)
        image, _ = read_rgb(self.base / "JPEGImages" / f"{image_id}.jpg", self.max_size)
        if image.shape[-2:] != labels.shape:
            raise DatasetError(
                f"VOC2012 {image_id}: image {tuple(image.shape[-2:])} and label {tuple(labels.shape)} differ"
            )
        return image, {"semantic": labels, "image_id": image_id}


def _require_files(base: Path, ids: list[str], patterns: tuple[str, ...]) -> None:
    missing = [base / p.format(i) for i in ids for p in patterns if not (base / p.format(i)).is_file()]
    if missing:
        shown = "\n".join(f"    {m}" for m in missing[:5])
        more = f"\n    ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DatasetError(
            f"{len(missing)} VOC files listed in {base / 'ImageSets'} are missing:\n{shown}{more}",
            hint="is the devkit fully extracted?",
        )


def _square(max_size: int | None) -> tuple[int, int, int]:
    side = max_size or 0  # 0: native sizes vary
    return (3, side, side)


def load_voc_detection(
    root: Path, max_size: int | None = DEFAULT_MAX_SIZE, val_size: int = 0, seed: int = 0
) -> SampleSplits:
    """VOC07+12 trainval -> VOC07 test (see the module doc)."""
    train = VocDetectionSet(root, [("2007", "trainval"), ("2012", "trainval")], max_size)
    test = VocDetectionSet(root, [("2007", "test")], max_size)
    train_part, val = hold_out(train, val_size, seed)
    return SampleSplits(
        "voc_detection",
        train_part,
        val,
        test,
        ["background", *VOC_CLASSES],
        *IMAGENET_STATS,
        ("detection",),
        _square(max_size),
    )


def load_voc_segmentation(
    root: Path, max_size: int | None = DEFAULT_MAX_SIZE, val_size: int = 0, seed: int = 0
) -> SampleSplits:
    """VOC2012 segmentation train -> val (see the module doc)."""
    train = VocSegmentationSet(root, "train", max_size)
    test = VocSegmentationSet(root, "val", max_size)
    train_part, val = hold_out(train, val_size, seed)
    return SampleSplits(
        "voc_segmentation",
        train_part,
        val,
        test,
        ["background", *VOC_CLASSES],
        *IMAGENET_STATS,
        ("segmentation",),
        _square(max_size),
    )


def probe_detection(root: Path) -> list[str]:
    """The VOC detection image lists missing under ``root`` (annotations are checked on load)."""
    return _probe(root, DETECTION_FILES[:3])


def probe_segmentation(root: Path) -> list[str]:
    return _probe(root, SEGMENTATION_FILES[:2])


def _probe(root: Path, files: tuple[str, ...]) -> list[str]:
    missing = []
    for name in files:
        year, rest = name.split("/", 1)
        if not ((root / year / rest).is_file() or (root / "VOCdevkit" / year / rest).is_file()):
            missing.append(name)
    return missing
