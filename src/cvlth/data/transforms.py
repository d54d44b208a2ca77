"""Batch augmentations: whole-batch tensor ops that run unchanged on CPU or GPU.

Every random op takes ``(images, generator, ...)`` with images (N, C, H, W), either uint8 in
0..255 or float in [0, 1], and returns the same dtype (geometric ops round uint8 results; colour
ops compute in float and round back). Random numbers are drawn on the generator's device, a
fixed count per call whatever the image content, then moved to the images' device: a CPU
generator drives GPU batches too, and a given (generator state, batch shape) gives one result.

This replaces per-image PIL pipelines (see benchmarks/augment_speed.py). Known departures from
torchvision: colour-jitter factors are applied in the fixed order brightness, contrast,
saturation, hue (torchvision shuffles the order per image); random_resized_crop samples with
bilinear ``grid_sample`` (no antialiasing when it shrinks).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [0, 1]; float input is returned as is."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def _like(result: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Back to ``original``'s dtype (uint8 results are rounded from the [0, 1] scale)."""
    if original.dtype == torch.uint8:
        return result.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return result


def _uniform(generator: torch.Generator, shape: Sequence[int], device: torch.device, low=0.0, high=1.0):
    draw = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return (low + (high - low) * draw).to(device)


def _chosen(generator: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
    """(N, 1, 1, 1) bool: which images a p-probability op applies to."""
    return (_uniform(generator, (n,), device) < p).view(n, 1, 1, 1)


# --- geometry -------------------------------------------------------------------------------------


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
    area = height * width * _uniform(generator, (n, tries), torch.device("cpu"), *scale)
    log_ratio = _uniform(generator, (n, tries), torch.device("cpu"), math.log(ratio[0]), math.log(ratio[1]))
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
    offsets = _uniform(generator, (n, 2), torch.device("cpu"))
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
    return _like(out, images)


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
    return torch.where(_chosen(generator, images.shape[0], p, images.device), images.flip(-1), images)


# --- colour ---------------------------------------------------------------------------------------


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luminance of float RGB (or the single channel itself)."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    flat = maxc == minc
    ones = torch.ones_like(maxc)
    chroma = maxc - minc
    s = chroma / torch.where(flat, ones, maxc)
    divisor = torch.where(flat, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """The closed form f(n) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B."""
    h, s, v = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp_(0, 1)


def color_jitter(
    images: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """With probability ``p`` per image, scale brightness, contrast, saturation by factors drawn from
    [1-x, 1+x] and shift hue by [-hue, hue] (torchvision's meanings). 1-channel images get brightness
    and contrast only."""
    n, c = images.shape[:2]
    device = images.device
    factors = _uniform(generator, (4, n), device).view(4, n, 1, 1, 1)
    applied = _chosen(generator, n, p, device)
    x = to_float(images)
    out = x.clamp(0, 1) * (1 - brightness + 2 * brightness * factors[0])
    out = out.clamp_(0, 1)
    mean = grayscale(out).mean((1, 2, 3), keepdim=True)
    out = _blend(out, mean, 1 - contrast + 2 * contrast * factors[1])
    if c == 3:
        out = _blend(out, grayscale(out), 1 - saturation + 2 * saturation * factors[2])
        hsv = _rgb_to_hsv(out)
        shift = (2 * factors[3] - 1).view(n, 1, 1) * hue
        hsv = torch.stack([torch.remainder(hsv[:, 0] + shift, 1.0), hsv[:, 1], hsv[:, 2]], 1)
        out = _hsv_to_rgb(hsv)
    return torch.where(applied, _like(out, images), images)


def random_grayscale(images: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability ``p`` per image, replace RGB by its luminance in all three channels."""
    applied = _chosen(generator, images.shape[0], p, images.device)
    if images.shape[1] == 1:
        return images
    gray = _like(grayscale(to_float(images)).expand_as(images), images)
    return torch.where(applied, gray, images)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(to_float(images) - mean) / std per channel; always float32."""
    x = to_float(images)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


# --- pipelines ------------------------------------------------------------------------------------


def compose(*steps: Transform) -> Transform:
    """Chain ``(images, generator) -> images`` steps; all share the one generator, in order."""

    def pipeline(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in steps:
            images = step(images, generator)
        return images

    return pipeline


def cifar_augment(mean: Sequence[float], std: Sequence[float], padding: int = 4) -> Transform:
    """The paper's downstream classification augmentation: crop with padding, flip, normalise."""
    return compose(
        lambda x, g: random_crop(x, g, padding=padding),
        horizontal_flip,
        lambda x, g: normalize(x, mean, std),
    )


def simclr_augment(
    size: int, mean: Sequence[float], std: Sequence[float], strength: float = 1.0
) -> Transform:
    """SimCLR's view: RandomResizedCrop, flip, ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) p=0.8, grayscale p=0.2."""
    return compose(
        lambda x, g: to_float(x),
        lambda x, g: random_resized_crop(x, g, size),
        horizontal_flip,
        lambda x, g: color_jitter(
            x, g, 0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength, p=0.8
        ),
        random_grayscale,
        lambda x, g: normalize(x, mean, std),
    )


def contrastive_augment(
    mean: Sequence[float],
    std: Sequence[float],
    scale: tuple[float, float] = (0.2, 1.0),
    strength: float = 0.5,
) -> Transform:
    """One view for SimCLR / MoCo v2 ("aug+") at the input's own size: RandomResizedCrop(scale),
    flip, colour jitter (0.8s, 0.8s, 0.8s, 0.2s) with p=0.8, grayscale p=0.2, normalise.
    Two calls with one generator give two independent views."""

    def view(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_resized_crop(to_float(images), generator, tuple(images.shape[-2:]), scale=scale)
        x = horizontal_flip(x, generator)
        x = color_jitter(x, generator, 0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength, p=0.8)
        return normalize(random_grayscale(x, generator), mean, std)

    return view


def supervised_augment(size: int, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Supervised upstream training (paper): RandomResizedCrop + flip, then normalise."""
    return compose(
        lambda x, g: random_resized_crop(x, g, size),
        horizontal_flip,
        lambda x, g: normalize(x, mean, std),
    )
