"""PASCAL VOC2007's 11-point interpolated AP at IoU 0.5, the metric of the VOC07 test set.

The devkit's rule, per class: detections of every image sorted by score (highest first); each is a
true positive when its best IoU with the image's ground-truth boxes of that class exceeds 0.5 and
that box is not yet taken, ignored when that box is *difficult*, a false positive otherwise. Recall
is over the non-difficult boxes; AP is the mean over recall thresholds 0, 0.1, ..., 1 of the highest
precision at a recall at least that threshold (0 where none reaches it). The mean is over the classes
with at least one non-difficult box. Boxes are continuous xyxy coordinates (IoU without the devkit's
+1-pixel widths, as the COCO-style AP beside it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torchvision.ops import box_iou

IOU_THRESHOLD = 0.5
RECALL_POINTS = tuple(i / 10 for i in range(11))


def voc07_ap50(predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]]) -> float:
    """Mean over classes of :func:`class_ap`; NaN when no image has a non-difficult box."""
    classes = sorted({int(c) for t in targets for c in t["labels"].tolist()})
    scores = [class_ap(predictions, targets, c) for c in classes]
    scored = [s for s in scores if s is not None]
    return sum(scored) / len(scored) if scored else float("nan")


def class_ap(
    predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]], label: int
) -> float | None:
    """VOC07 11-point AP50 of class ``label``; None when it has no non-difficult box."""
    truths = [_class_truth(t, label) for t in targets]
    positives = sum(int((~difficult).sum()) for _, difficult in truths)
    if positives == 0:
        return None
    detections = sorted(_class_detections(predictions, label), key=lambda d: -d[0])
    taken = [torch.zeros(len(boxes), dtype=torch.bool) for boxes, _ in truths]
    hits: list[bool] = []  # True: true positive, False: false positive (ignored ones left out)
    for _, image, box in detections:
        boxes, difficult = truths[image]
        if len(boxes) == 0:
            hits.append(False)
            continue
        overlaps = box_iou(box.unsqueeze(0).double(), boxes.double())[0]
        best = int(overlaps.argmax())
        if float(overlaps[best]) <= IOU_THRESHOLD:
            hits.append(False)
        elif bool(difficult[best]):
            continue
        elif not bool(taken[image][best]):
            taken[image][best] = True
            hits.append(True)
        else:
            hits.append(False)
    return eleven_point_ap(hits, positives)


def eleven_point_ap(hits: Sequence[bool], positives: int) -> float:
    """11-point interpolated AP of detections ranked ``hits`` (true / false positive) against
    ``positives`` ground-truth boxes."""
    precision, recall, true = [], [], 0
    for rank, hit in enumerate(hits, start=1):
        true += hit
        precision.append(true / rank)
        recall.append(true / positives)
    total = 0.0
    for point in RECALL_POINTS:
        reached = [p for p, r in zip(precision, recall, strict=True) if r >= point]
        total += max(reached) if reached else 0.0
    return total / len(RECALL_POINTS)


def _class_truth(target: dict[str, Any], label: int) -> tuple[torch.Tensor, torch.Tensor]:
    keep = target["labels"].cpu() == label
    boxes = target["boxes"].cpu()[keep].reshape(-1, 4)
    difficult = target.get("difficult")
    flags = (
        difficult.cpu()[keep].bool() if difficult is not None else torch.zeros(len(boxes), dtype=torch.bool)
    )
    return boxes, flags


def _class_detections(
    predictions: Iterable[dict[str, torch.Tensor]], label: int
) -> list[tuple[float, int, torch.Tensor]]:
    found = []
    for image, prediction in enumerate(predictions):
        keep = prediction["labels"].cpu() == label
        for score, box in zip(
            prediction["scores"].cpu()[keep].tolist(), prediction["boxes"].cpu()[keep], strict=True
        ):
            found.append((float(score), image, box))
    return found
