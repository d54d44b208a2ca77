"""Object detection with a torchvision detector: summed detector losses; COCO-style AP for evaluation.

Batches are ``(list of uint8 [C, H, W] images, list of target dicts)`` as served by
:meth:`cvlth.data.samples.SampleSplits.batches`. The detector normalises its input itself (its
GeneralizedRCNNTransform), so the objective only scales pixels to [0, 1] and flips (boxes with the
image, before the detector resizes both). Resizing is the detector's: the task's ``model:
{min_size, max_size}``; a list of ``min_size`` values makes training draw one per image (from
torch's global RNG, which a run seeds and a resume restores) and evaluation use the last, as
detectron2's multi-scale ``MIN_SIZE_TRAIN`` / ``MIN_SIZE_TEST``.

Evaluation is AP@[.5:.95] (``map``), AP50 and AP75 from torchmetrics' ``MeanAveragePrecision``
(pycocotools backend: COCO's 101-point interpolated precision, up to 100 detections per image), and
beside them VOC07's 11-point AP50 (``voc07_ap50``, :mod:`cvlth.objectives.voc_ap`).
VOC "difficult" objects are neither trained on (unless ``train_difficult``) nor counted in
evaluation: they are passed as COCO "crowd" regions, so detections on them are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from cvlth.data.source import BatchSource
from cvlth.objectives.voc_ap import voc07_ap50
from cvlth.training.objective import ObjectiveBase

TRAINING_KEYS = ("boxes", "labels")


def to_float(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """uint8 images -> float images in [0, 1]."""
    return [image.float() / 255.0 for image in images]


def flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """x1, y1, x2, y2 boxes of an image of ``width`` pixels, mirrored left-right."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def training_targets(target: dict[str, Any], train_difficult: bool) -> dict[str, torch.Tensor]:
    """Only boxes and labels (the detector would also resize masks), difficult objects dropped."""
    keep = None
    if not train_difficult and "difficult" in target:
        keep = ~target["difficult"]
    return {k: target[k] if keep is None else target[k][keep] for k in TRAINING_KEYS}


class DetectionObjective(ObjectiveBase):
    """``sum(model(images, targets).values())`` with random horizontal flips (probability ``flip``)."""

    selection: tuple[str, Literal["max", "min"]] = ("map", "max")

    def __init__(self, flip: float = 0.5, train_difficult: bool = False) -> None:
        self.flip = flip
        self.train_difficult = train_difficult

    def train_step(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        images, targets = batch[0], batch[1]
        floats = to_float(images)
        prepared = [training_targets(t, self.train_difficult) for t in targets]
        coins = torch.rand(len(floats), generator=generator, device=generator.device).tolist()
        for index, coin in enumerate(coins):
            if coin < self.flip:
                floats[index] = floats[index].flip(-1)
                width = floats[index].shape[-1]
                prepared[index]["boxes"] = flip_boxes(prepared[index]["boxes"], width)
        losses = model(floats, prepared)
        total = sum(losses.values())
        return total, {name: value.detach() for name, value in losses.items()}  # type: ignore[return-value]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchSource) -> dict[str, float]:
        device = next(model.parameters()).device
        predictions: list[dict[str, torch.Tensor]] = []
        references: list[dict[str, torch.Tensor]] = []
        for images, targets in batches.epoch_batches(0):
            outputs = model(to_float([image.to(device) for image in images]))
            predictions.extend({k: v.cpu() for k, v in out.items()} for out in outputs)
            references.extend(targets)
        return average_precision(predictions, references)


def average_precision(
    predictions: Iterable[dict[str, torch.Tensor]], targets: Iterable[dict[str, Any]]
) -> dict[str, float]:
    """``{"map", "map50", "map75", "voc07_ap50"}``: COCO AP@[.5:.95], AP at IoU .5 and .75 over all
    images, and VOC07's 11-point AP at IoU .5.

    ``predictions``: per image ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,);
    ``targets``: per image ``boxes`` and ``labels`` (and optionally ``difficult``, ignored objects).
    """
    from torchmetrics.detection import MeanAveragePrecision  # lazy (no cycle): torchmetrics is slow to import

    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend="pycocotools")
    predictions, targets = list(predictions), list(targets)
    preds, refs = [], []
    for prediction, target in zip(predictions, targets, strict=True):
        preds.append({k: prediction[k].cpu() for k in ("boxes", "scores", "labels")})
        reference = {k: target[k].cpu() for k in TRAINING_KEYS}
        if "difficult" in target:
            reference["iscrowd"] = target["difficult"].cpu().to(torch.int64)
        refs.append(reference)
    if not preds:
        return {"map": float("nan"), "map50": float("nan"), "map75": float("nan"), "voc07_ap50": float("nan")}
    metric.update(preds, refs)
    result = metric.compute()
    return {
        "map": float(result["map"]),
        "map50": float(result["map_50"]),
        "map75": float(result["map_75"]),
        "voc07_ap50": voc07_ap50(predictions, targets),
    }
