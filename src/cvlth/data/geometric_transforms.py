"""Geometric batch augmentations: CIFAR's padded random crop, the random resized crop (SimCLR /
Inception) and the horizontal flip, under the conventions of :mod:`cvlth.data.transforms`.

Known departure from torchvision: random_resized_crop samples with bilinear ``grid_sample`` (no
antialiasing when it shrinks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cvlth.data.transforms import draw_chosen, draw_uniform, restore_dtype, to_float


def random_crop(
    images: torch.Tensor, generator: torch.Generator, padding: int = 4, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """CIFAR-style crop: zero-pad by ``padding`` then cut ``size`` (default: the input size) at a
    random offset per image. Offsets are ``randint(0, H + 2p - h + 1)`` for rows, then columns."""
    n, c, h, w = images.shape
    out_h, out_w = size or (h, w)
    padded = F.pad(images, (padding,) * 4)
    device = images.device
    top = torch.randint(h + 2 * padding - out_h + 1, (n,), generator=generator, device=generator.device).to(
        device
    )
    left = torch.randint(w + 2 * padding - out_w + 1, (n,), generator=generator, device=generator.device).to(
        device
    )
    rows = (top[:, None] + torch.arange(out_h, device=device))[:, None, :, None]
    cols = (left[:, None] + torch.arange(out_w, device=device))[:, None, None, :]
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[:, None, None],
        rows,
        cols,
    ]


def _resized_crop_boxes(
    generator: torch.Generator, n: int, height: int, width: int, scale, ratio, tries: int = 10
) -> torch.Tensor:
    """(N, 4) float boxes (top, left, h, w) sampled like torchvision's RandomResizedCrop.get_params:
    the first of ``tries`` (area, log-aspect) candidates that fits, else a central crop."""
    area = height * width * draw_uniform(generator, (n, tries), torch.device("cpu"), *scale)
    log_ratio = draw_uniform(
        generator, (n, tries), torch.device("cpu"), math.log(ratio[0]), math.log(ratio[1])
    )
    aspect = log_ratio.exp()
    w = (area * aspect).sqrt().round()
    h = (area / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp(min=0)[:, None]
    h, w = h.gather(1, pick).squeeze(1), w.gather(1, pick).squeeze(1)
    fallback_h, fallback_w = _central_crop_size(height, width, ratio)
    h = torch.where(first >= 0, h, torch.full_like(h, fallback_h))
    w = torch.where(first >= 0, w, torch.full_like(w, fallback_w))
    offsets = draw_uniform(generator, (n, 2), torch.device("cpu"))
    top = (offsets[:, 0] * (height - h + 1)).floor()
    left = (offsets[:, 1] * (width - w + 1)).floor()
    return torch.stack([top, left, h, w], dim=1)


def _central_crop_size(height: int, width: int, ratio) -> tuple[float, float]:
    in_ratio = width / height
    if in_ratio < ratio[0]:
        return float(round(width / ratio[0])), float(width)
    if in_ratio > ratio[1]:
        return float(height), float(round(height * ratio[1]))
    return float(height), float(width)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop each image to its (top, left, h, w) box and resize it to ``size`` (bilinear grid_sample)."""
    n, c, height, width = images.shape
    boxes = boxes.to(images.device, torch.float32)
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros((n, 2, 3), device=images.device)
    # With align_corners=False, normalised -1..1 spans pixel edges 0..W: the box's centre and half-size.
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, c, *size], align_corners=False)
    out = F.grid_sample(to_float(images), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return restore_dtype(out, images)


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    size: int | tuple[int, int],
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """SimCLR / Inception crop: per image a random area fraction and aspect ratio, resized to ``size``."""
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    n, _, height, width = images.shape
    boxes = _resized_crop_boxes(generator, n, height, width, scale, ratio)  # small: sampled on the CPU
    return resized_crop(images, boxes, out_size)


def horizontal_flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    return torch.where(draw_chosen(generator, images.shape[0], p, images.device), images.flip(-1), images)
