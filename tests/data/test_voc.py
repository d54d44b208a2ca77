"""VOC readers on a tiny devkit written by the test (XML, JPEG, palette PNG, ImageSets)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvlth.config import ObjectiveRef
from cvlth.data.registry import load_dataset
from cvlth.data.voc import VOC_CLASSES, VocDetectionSet, VocSegmentationSet, read_annotation
from cvlth.errors import DatasetError
from cvlth.models.backbones import BackboneSpec
from cvlth.models.segmentation import build_segmenter
from cvlth.objectives.registry import build_objective


def _xml(width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, (x1, y1, x2, y2), difficult in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _write_image(path: Path, width: int, height: int, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, dtype=np.uint8)).save(path, quality=95)


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(ids) + "\n")


def _write_detection(base: Path, ids: dict[str, list[str]], annotations: dict[str, str], sizes) -> None:
    for image_set, members in ids.items():
        _write_list(base / "ImageSets" / "Main" / f"{image_set}.txt", members)
    (base / "Annotations").mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (base / "Annotations" / f"{image_id}.xml").write_text(xml)
        _write_image(base / "JPEGImages" / f"{image_id}.jpg", *sizes[image_id], value=100)


def _label_png(path: Path, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit"
    # VOC2007: a 100x50 image with a dog and a difficult cat, a test image with a person.
    _write_detection(
        root / "VOC2007",
        {"trainval": ["000001"], "test": ["000002"]},
        {
            "000001": _xml(100, 50, [("dog", (1, 1, 50, 25), 0), ("cat", (51, 11, 100, 50), 1)]),
            "000002": _xml(40, 30, [("person", (5, 6, 20, 30), 0)]),
        },
        {"000001": (100, 50), "000002": (40, 30)},
    )
    _write_detection(
        root / "VOC2012",
        {"trainval": ["2012_000009"]},
        {"2012_000009": _xml(20, 20, [("tvmonitor", (2, 3, 4, 5), 0)])},
        {"2012_000009": (20, 20)},
    )
    # VOC2012 segmentation: 8x6 label maps, a 255 border around class regions.
    seg = root / "VOC2012"
    _write_list(seg / "ImageSets" / "Segmentation" / "train.txt", ["2012_000003", "2012_000004"])
    _write_list(seg / "ImageSets" / "Segmentation" / "val.txt", ["2012_000005"])
    for index, image_id in enumerate(["2012_000004", "2012_000005"]):
        _write_image(seg / "JPEGImages" / f"{image_id}.jpg", 8, 6, value=50 + index)
    for image_id in ["2012_000003", "2012_000004", "2012_000005"]:
        labels = np.full((6, 8), 255, dtype=np.uint8)
        labels[1:5, 1:4] = 15  # person
        labels[1:5, 4:7] = 0
        _label_png(seg / "SegmentationClass" / f"{image_id}.png", labels)
    _write_image(seg / "JPEGImages" / "2012_000003.jpg", 8, 6, value=60)
    return tmp_path


def test_annotation_boxes_are_converted_from_one_based_inclusive(devkit):
    annotation = read_annotation(devkit / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml")
    # VOC (1, 1, 50, 25) covers columns 1..50 (1-based) = pixels [0, 50) in 0-based exclusive coordinates.
    assert annotation.boxes.tolist() == [[0.0, 0.0, 50.0, 25.0], [50.0, 10.0, 100.0, 50.0]]
    assert annotation.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("cat") + 1]
    assert annotation.difficult.tolist() == [False, True]
    assert (annotation.width, annotation.height) == (100, 50)


def test_detection_set_resizes_longer_side_and_scales_boxes(devkit):
    samples = VocDetectionSet(devkit, [("2007", "trainval"), ("2012", "trainval")], max_size=40)
    assert len(samples) == 2
    image, target = samples[0]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 20, 40)  # 100x50 -> 40x20
    assert torch.allclose(target["boxes"], torch.tensor([[0.0, 0.0, 20.0, 10.0], [20.0, 4.0, 40.0, 20.0]]))
    assert target["difficult"].tolist() == [False, True]  # kept, flagged
    small_image, small = samples[1]  # 20x20 is not enlarged
    assert tuple(small_image.shape) == (3, 20, 20)
    assert small["boxes"].tolist() == [[1.0, 2.0, 4.0, 5.0]]
    assert small["labels"].tolist() == [VOC_CLASSES.index("tvmonitor") + 1]


def test_registry_splits_07_12_trainval_to_07_test(devkit):
    splits = load_dataset("voc_detection", devkit, max_size=None)
    assert (len(splits.train), len(splits.test), splits.val) == (2, 1, None)
    assert splits.num_classes == 21 and splits.classes[0] == "background"
    _, target = splits.test[0]
    assert target["boxes"].tolist() == [[4.0, 5.0, 20.0, 30.0]]
    images, targets = next(iter(splits.batches("train", 2).epoch_batches(0)))
    assert len(images) == len(targets) == 2


def test_segmentation_labels_keep_255_and_resize_nearest(devkit):
    samples = VocSegmentationSet(devkit, "train", max_size=None)
    image, target = samples[1]
    assert tuple(image.shape) == (3, 6, 8)
    expected = torch.full((6, 8), 255, dtype=torch.uint8)
    expected[1:5, 1:4] = 15
    expected[1:5, 4:7] = 0
    assert torch.equal(target["semantic"], expected)
    small_image, small = VocSegmentationSet(devkit, "train", max_size=4)[1]
    assert tuple(small_image.shape) == (3, 3, 4) and tuple(small["semantic"].shape) == (3, 4)
    assert set(small["semantic"].unique().tolist()) <= {0, 15, 255}  # nearest: no blended labels
    splits = load_dataset("voc_segmentation", devkit, val_size=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1, 1, 1)


def test_missing_files_name_them(devkit):
    base = devkit / "VOCdevkit" / "VOC2007"
    (base / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DatasetError, match="000002.jpg"):
        load_dataset("voc_detection", devkit)
    (base / "ImageSets" / "Main" / "test.txt").unlink()
    with pytest.raises(DatasetError, match="test.txt"):
        VocDetectionSet(devkit, [("2007", "test")])
    with pytest.raises(DatasetError, match="VOC2012"):
        VocSegmentationSet(devkit / "nowhere")
    seg = devkit / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2012_000005.png"
    seg.unlink()
    with pytest.raises(DatasetError, match="2012_000005.png"):
        VocSegmentationSet(devkit, "val")


def test_tiny_voc_tree_trains_one_segmentation_step_at_reference_scale(devkit):
    splits = load_dataset("voc_segmentation", devkit, max_size=None)
    options = {"crop_size": 32, "scale_range": [0.5, 2.0], "eval_crop": 16}
    objective = build_objective(
        ObjectiveRef(name="segmentation", options=options), feature_dim=0, data=splits
    )
    spec = BackboneSpec("resnet18", width=4, stem="cifar", in_channels=3)
    model = build_segmenter(None, spec, splits.num_classes).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    batch = next(iter(splits.batches("train", 2).epoch_batches(0)))
    loss, _ = objective.train_step(model, batch, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and float(loss.detach()) > 0
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before, strict=True))
    result = objective.evaluate(model.eval(), splits.batches("test", 1))
    assert set(result) == {"miou", "pixel_accuracy", "loss"} and 0.0 <= result["pixel_accuracy"] <= 1.0
