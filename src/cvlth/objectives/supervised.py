"""Supervised classification: cross-entropy on augmented images, accuracy and loss for evaluation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cvlth.data.source import BatchSource
from cvlth.data.stats import IMAGENET_MEAN, IMAGENET_STD
from cvlth.training.objective import ObjectiveBase

#: ``augment(images_uint8, generator) -> float tensor``, applied on the device.
Augment = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


class Normalize:
    """uint8 NCHW images -> float, scaled to [0, 1] and standardised per channel (no randomness)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        channels = images.shape[1]
        mean, std = self.mean, self.std
        if len(mean) != channels:  # e.g. 1-channel Fashion-MNIST with the 3-channel defaults
            mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
        shape = (1, channels, 1, 1)
        mean_t = torch.tensor(mean, device=images.device).view(shape)
        scale_t = 1.0 / (255.0 * torch.tensor(std, device=images.device).view(shape))
        return (images.float() - 255.0 * mean_t) * scale_t


class SupervisedObjective(ObjectiveBase):
    """Cross-entropy on ``model(augment(images))``; batches are ``(images_uint8, labels, ...)``.

    ``augment`` is used for training, ``preprocess`` (default: the same normalisation without
    randomness) for evaluation. The model's own classifier is trained; the objective owns no heads.
    """

    selection: tuple[str, Literal["max", "min"]] = ("accuracy", "max")

    def __init__(
        self,
        augment: Augment | None = None,
        preprocess: Augment | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        self.preprocess = preprocess or Normalize()
        self.augment = augment or self.preprocess
        self.label_smoothing = label_smoothing

    def train_step(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        images, labels = batch[0], batch[1]
        logits = model(self.augment(images, generator))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.detach().argmax(1) == labels).float().mean()
        return loss, {"accuracy": accuracy}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: BatchSource) -> dict[str, float]:
        device = next(model.parameters()).device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        count = 0
        for batch in batches.epoch_batches(0):
            images, labels = batch[0].to(device), batch[1].to(device)
            logits = model(self.preprocess(images, None))
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(1) == labels).sum()
            count += labels.numel()
        if count == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": float(loss_sum) / count, "accuracy": int(correct) / count}
