"""Test-only helpers for the contrastive objectives: a narrow torchvision-named ResNet and digits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet

from cvlth.data.source import TensorBatchSource


class NarrowResNet(ResNet):
    """torchvision's ResNet with BasicBlocks and stage widths ``widths`` (torchvision's are 64..512).

    Module names are torchvision's (``layer3.0.downsample.0``), so scope, masks and features apply.
    """

    def __init__(
        self, layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), in_channels: int = 1, num_classes: int = 10
    ) -> None:
        super().__init__(BasicBlock, list(layers), num_classes=num_classes)
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.maxpool = nn.Identity()  # CIFAR-style stem: small inputs keep their resolution
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.fc = nn.Linear(widths[3], num_classes)


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1,797 handwritten digits as uint8 (N, 1, size, size) images and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images * 255).round().clamp(0, 255).to(torch.uint8)
    return images, torch.tensor(data.target, dtype=torch.long)


def digit_sources(batch_size: int = 128, val: int = 256) -> tuple[TensorBatchSource, TensorBatchSource]:
    images, labels = digits()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    train = TensorBatchSource(images[val:], labels[val:], batch_size=batch_size, seed=0, drop_last=True)
    held_out = TensorBatchSource(images[:val], labels[:val], batch_size=128, shuffle=False)
    return train, held_out
