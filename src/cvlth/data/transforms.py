"""Batch augmentations: whole-batch tensor ops that run unchanged on CPU or GPU. This module holds
what they share: the ``Transform`` signature, dtype handling, the random draws, ``normalize`` and
``compose``. The ops are :mod:`cvlth.data.geometric_transforms` (crops, flip) and
:mod:`cvlth.data.photometric_transforms` (colour jitter, grayscale, Gaussian blur); the recipes built
from them (CIFAR, supervised, the SimCLR / MoCo v2 contrastive view) are :mod:`cvlth.data.augment_pipelines`.

Every random op takes ``(images, generator, ...)`` with images (N, C, H, W), either uint8 in
0..255 or float in [0, 1], and returns the same dtype (geometric ops round uint8 results; colour
ops compute in float and round back). Random numbers are drawn on the generator's device, a
fixed count per call whatever the image content, then moved to the images' device: a CPU
generator drives GPU batches too, and a given (generator state, batch shape) gives one result.

This replaces per-image PIL pipelines (see benchmarks/augment_speed.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
Normalization = tuple[Sequence[float], Sequence[float]] | None  # (mean, std), or None: raw [0, 1]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 -> float32 in [0, 1]; float input is returned as is."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def restore_dtype(result: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Back to ``original``'s dtype (uint8 results are rounded from the [0, 1] scale)."""
    if original.dtype == torch.uint8:
        return result.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return result


def draw_uniform(
    generator: torch.Generator,
    shape: Sequence[int],
    device: torch.device,
    low: float = 0.0,
    high: float = 1.0,
) -> torch.Tensor:
    """Uniform in [low, high), drawn on the generator's device, then moved to ``device``."""
    draw = torch.rand(tuple(shape), generator=generator, device=generator.device)
    return (low + (high - low) * draw).to(device)


def draw_chosen(generator: torch.Generator, n: int, p: float, device: torch.device) -> torch.Tensor:
    """(N, 1, 1, 1) bool: which images a p-probability op applies to."""
    return (draw_uniform(generator, (n,), device) < p).view(n, 1, 1, 1)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(to_float(images) - mean) / std per channel; always float32."""
    x = to_float(images)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def compose(*steps: Transform) -> Transform:
    """Chain ``(images, generator) -> images`` steps; all share the one generator, in order."""

    def pipeline(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in steps:
            images = step(images, generator)
        return images

    return pipeline
