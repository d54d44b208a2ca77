"""Semantic segmentation: per-pixel cross-entropy (255 ignored); mIoU from the confusion matrix.

Batches are ``(list of uint8 [C, H, W] images, list of targets with "semantic" uint8 (H, W))`` as
served by :meth:`cvlth.data.samples.SampleSplits.batches`. Images of one batch may differ in size
(VOC): they are padded to a common size (or, training with ``crop_size``, randomly scaled by a
factor in ``scale_range`` and cropped) with image value 0 (or the dataset mean: ``image_pad``) and
label 255, so padding never counts; the geometry is :mod:`cvlth.data.segmentation_transforms`.
Evaluation sees each full image (padded per batch), or with ``eval_crop`` its shorter side resized
to that size and the centre square (the reference's ``--crop_val``). The poly learning rate is the
engine's ``PolySchedule`` (``schedule.name: poly``), not the objective's business.

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

from cvlth.data.segmentation_transforms import (
    IGNORE_INDEX,
    mean_fill,
    pad_pair,
    random_scale_crop,
    resize_center_crop,
)
from cvlth.data.source import BatchSource
from cvlth.data.transforms import normalize
from cvlth.errors import ConfigError
from cvlth.training.objective import ObjectiveBase

IMAGE_PADS: tuple[str, ...] = ("zero", "mean")


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
    *,
    scale_range: tuple[float, float] | None = None,
    fill: int | Sequence[int] = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images uint8 [C, H, W] and labels (H, W) into a batch.

    Without ``crop_size`` everything is padded (bottom/right) to the largest H and W; with it, each
    sample is scaled by a random factor in ``scale_range`` (if given), padded up to ``crop_size`` if
    smaller (image with ``fill``) and cropped at a random position (``generator``); see
    :mod:`cvlth.data.segmentation_transforms`. Labels are always padded with 255.
    """
    if crop_size is None:
        if scale_range is not None:
            raise ValueError("a scale range needs a crop size (scaled samples are cropped to one size)")
        height = max(int(i.shape[-2]) for i in images)
        width = max(int(i.shape[-1]) for i in images)
        pairs = [pad_pair(i, lab, height, width, fill) for i, lab in zip(images, labels, strict=True)]
    else:
        pairs = [
            random_scale_crop(i, lab, crop_size, generator, scale_range, fill)
            for i, lab in zip(images, labels, strict=True)
        ]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


class SegmentationObjective(ObjectiveBase):
    """Cross-entropy (ignore 255) on ``model(normalize(images))``, with random scale, crop and
    horizontal flips."""

    selection: tuple[str, Literal["max", "min"]] = ("miou", "max")
    # VOC has no validation split: the paper reports the best mIoU over its evaluations of val.
    best_without_validation = True

    def __init__(
        self,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        flip: float = 0.5,
        crop_size: int | None = None,
        scale_range: Sequence[float] | None = None,
        image_pad: str = "zero",
        eval_crop: int | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.flip = flip
        self.crop_size = _positive("crop_size", crop_size)
        self.scale_range = _scale_range(scale_range, self.crop_size)
        if image_pad not in IMAGE_PADS:
            raise ConfigError(
                f"segmentation image_pad must be one of {', '.join(IMAGE_PADS)} (got {image_pad!r})",
                hint="zero: black (the reference), mean: the dataset mean (0 after normalisation)",
            )
        self.fill: int | tuple[int, ...] = mean_fill(self.mean) if image_pad == "mean" else 0
        self.eval_crop = _positive("eval_crop", eval_crop)

    def train_step(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        semantic = [t["semantic"] for t in batch[1]]
        images, labels = collate(
            batch[0], semantic, self.crop_size, generator, scale_range=self.scale_range, fill=self.fill
        )
        flips = torch.rand(images.shape[0], generator=generator, device=generator.device) < self.flip
        flips = flips.to(images.device)
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
        labels = torch.where(flips.view(-1, 1, 1), labels.flip(-1), labels)
        logits = model(normalize(images, self.mean, self.std))
        loss = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX)
        return loss, {}

    def evaluation_batch(
        self, images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """What evaluation feeds the model: full images padded to a common size, or the
        ``eval_crop`` view of each."""
        if self.eval_crop is None:
            return collate(images, labels, fill=self.fill)
        pairs = [resize_center_crop(i, lab, self.eval_crop) for i, lab in zip(images, labels, strict=True)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchSource) -> dict[str, float]:
        device = next(model.parameters()).device
        confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=device)
        loss_sum, pixels = 0.0, 0
        for raw_images, targets in batches.epoch_batches(0):
            # Moved first, so any resizing happens on the model's device.
            images, labels = self.evaluation_batch(
                [image.to(device) for image in raw_images], [t["semantic"].to(device) for t in targets]
            )
            labels = labels.long()
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


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"segmentation {name} must be a positive number of pixels (got {value!r})")
    return value


def _scale_range(value: Sequence[float] | None, crop_size: int | None) -> tuple[float, float] | None:
    if value is None:
        return None
    bounds = tuple(float(v) for v in value)
    if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
        raise ConfigError(
            f"segmentation scale_range must be [low, high] with 0 < low <= high (got {list(value)})",
            hint="the reference's DeepLabV3+ uses [0.5, 2.0]",
        )
    if crop_size is None:
        raise ConfigError(
            "segmentation scale_range needs crop_size (scaled images are cropped to one size)",
            hint="add crop_size (the reference's is 513)",
        )
    return bounds  # type: ignore[return-value]
