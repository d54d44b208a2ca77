"""Two-view augmentation for contrastive objectives, as batch tensor ops on the device.

A stand-in for the shared :mod:`cvlth.data.transforms` pipeline (to be swapped in later): every
random choice is drawn per image from the step's ``torch.Generator``, so two calls on the same
batch give two independent views, and a resumed run redraws identical ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cvlth.objectives.supervised import IMAGENET_MEAN, IMAGENET_STD, Normalize

_LUMA = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device):
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Crop a random area fraction in ``scale`` (aspect ratio in ``ratio``), resize back to the input
    size (bilinear) and mirror with probability ``flip_p``: one ``affine_grid`` for the whole batch."""
    n, device = images.shape[0], images.device
    area = _uniform(n, *scale, generator, device)
    aspect = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator, device))
    # Half-widths in normalised [-1, 1] coordinates; a crop never leaves the image.
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    center_x = (1 - width) * _uniform(n, -1.0, 1.0, generator, device)
    center_y = (1 - height) * _uniform(n, -1.0, 1.0, generator, device)
    mirror = torch.where(torch.rand(n, generator=generator, device=device) < flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = width * mirror
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = center_y
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _luma(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] != 3:
        return images.mean(1, keepdim=True)
    weights = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def brightness_contrast(
    images: torch.Tensor, generator: torch.Generator | None, strength: float = 0.4, p: float = 0.8
) -> torch.Tensor:
    """With probability ``p`` per image, scale brightness and contrast by factors in [1-s, 1+s]."""
    n, device = images.shape[0], images.device
    chosen = torch.rand(n, generator=generator, device=device) < p
    brightness = torch.where(chosen, _uniform(n, 1 - strength, 1 + strength, generator, device), 1.0)
    contrast = torch.where(chosen, _uniform(n, 1 - strength, 1 + strength, generator, device), 1.0)
    images = (images * brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = _luma(images).mean((1, 2, 3), keepdim=True)
    return ((images - mean) * contrast.view(-1, 1, 1, 1) + mean).clamp(0, 1)


def random_grayscale(images: torch.Tensor, generator: torch.Generator | None, p: float = 0.2) -> torch.Tensor:
    """With probability ``p`` per image, replace RGB by its luma (1-channel input is left alone)."""
    if images.shape[1] != 3:
        return images
    chosen = torch.rand(images.shape[0], generator=generator, device=images.device) < p
    return torch.where(chosen.view(-1, 1, 1, 1), _luma(images).expand_as(images), images)


class ContrastiveAugment:
    """uint8 NCHW -> normalised float views: random resized crop + flip, brightness/contrast
    jitter (p=0.8), random grayscale (p=0.2, RGB only), per-channel normalisation."""

    def __init__(
        self,
        scale: tuple[float, float] = (0.2, 1.0),
        jitter: float = 0.4,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.scale = scale
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.normalize = Normalize(mean, std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float() / 255.0
        x = random_resized_crop(x, generator, self.scale)
        x = brightness_contrast(x, generator, self.jitter, self.jitter_p)
        x = random_grayscale(x, generator, self.grayscale_p)
        return self.normalize(x * 255.0)
