"""Semantic segmentation: per-pixel cross-entropy (255 ignored); mIoU from the confusion matrix.

Batches are ``(list of uint8 [C, H, W] images, list of targets with "semantic" uint8 (H, W))`` as
served by :meth:`cvlth.data.samples.SampleSplits.batches`. Images of one batch may differ in size
(VOC): they are padded to a common size (or randomly cropped to ``crop_size`` when training) with
image value 0 and label 255, so padding never counts. The poly learning rate is the engine's
``PolySchedule`` (``schedule.name: poly``), not the objective's business.

mIoU is the VOC definition: one confusion matrix summed over the whole split, IoU per class
``TP / (TP + FP + FN)``, averaged over the classes that occur in the labels or the predictions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cvlth.data.source import BatchSource
from cvlth.data.transforms import normalize
from cvlth.training.objective import ObjectiveBase

IGNORE_INDEX = 255


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """int64 (num_classes, num_classes) counts: row = true class, column = predicted class.

    Pixels whose target is ``ignore_index`` (or outside 0..num_classes-1) are not counted.
    """
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    index = target[valid] * num_classes + pred[valid]
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class (float64); NaN for a class absent from both labels and predictions."""
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))


def miou(confusion: torch.Tensor) -> float:
    """Mean IoU over the classes present (in labels or predictions); NaN if none is."""
    ious = class_iou(confusion)
    present = ~ious.isnan()
    return float(ious[present].mean()) if bool(present.any()) else math.nan


def collate(
    images: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    crop_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images uint8 [C, H, W] and labels (H, W) into a batch.

    Without ``crop_size`` everything is padded (bottom/right) to the largest H and W; with it, each
    sample is padded up to ``crop_size`` if smaller and cropped at a random position (``generator``).
    """
    if crop_size is None:
        height = max(int(i.shape[-2]) for i in images)
        width = max(int(i.shape[-1]) for i in images)
        pairs = [_pad(i, lab, height, width) for i, lab in zip(images, labels, strict=True)]
    else:
        pairs = [_random_crop(i, lab, crop_size, generator) for i, lab in zip(images, labels, strict=True)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def _pad(
    image: torch.Tensor, label: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    pad = (0, width - image.shape[-1], 0, height - image.shape[-2])
    if pad == (0, 0, 0, 0):
        return image, label
    return F.pad(image, pad, value=0), F.pad(label, pad, value=IGNORE_INDEX)


def _random_crop(
    image: torch.Tensor, label: torch.Tensor, size: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    image, label = _pad(image, label, max(size, image.shape[-2]), max(size, image.shape[-1]))
    height, width = image.shape[-2:]
    device = generator.device if generator is not None else image.device
    top = int(torch.randint(height - size + 1, (1,), generator=generator, device=device))
    left = int(torch.randint(width - size + 1, (1,), generator=generator, device=device))
    return image[:, top : top + size, left : left + size], label[top : top + size, left : left + size]


class SegmentationObjective(ObjectiveBase):
    """Cross-entropy (ignore 255) on ``model(normalize(images))``, with random horizontal flips."""

    selection: tuple[str, Literal["max", "min"]] = ("miou", "max")

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        flip: float = 0.5,
        crop_size: int | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.flip = flip
        self.crop_size = crop_size

    def train_step(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        images, labels = collate(batch[0], [t["semantic"] for t in batch[1]], self.crop_size, generator)
        flips = torch.rand(images.shape[0], generator=generator, device=generator.device) < self.flip
        flips = flips.to(images.device)
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
        labels = torch.where(flips.view(-1, 1, 1), labels.flip(-1), labels)
        logits = model(normalize(images, self.mean, self.std))
        loss = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX)
        return loss, {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchSource) -> dict[str, float]:
        device = next(model.parameters()).device
        confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=device)
        loss_sum, pixels = 0.0, 0
        for raw_images, targets in batches.epoch_batches(0):
            images, labels = collate(raw_images, [t["semantic"] for t in targets])
            images, labels = images.to(device), labels.to(device).long()
            logits = model(normalize(images, self.mean, self.std))
            loss_sum += float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            pixels += int((labels != IGNORE_INDEX).sum())
            confusion += confusion_matrix(logits.argmax(1), labels, self.num_classes)
        accuracy = float(confusion.diagonal().sum()) / max(1, int(confusion.sum()))
        return {
            "miou": miou(confusion),
            "pixel_accuracy": accuracy,
            "loss": loss_sum / pixels if pixels else math.nan,
        }
