"""Photometric batch augmentations: colour jitter, random grayscale and Gaussian blur, under the
conventions of :mod:`cvlth.data.transforms`.

The random colour ops and the blur draw their parameters with ``*_params`` functions and apply
them with ``apply_*`` (so tests can hand the same parameters to torchvision's per-image ops).
Known departures from torchvision: colour-jitter factors are applied in the fixed order
brightness, contrast, saturation, hue (torchvision shuffles the order per image); the blur is a
true Gaussian (MoCo's PIL ``GaussianBlur(radius=sigma)`` approximates one with box filters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cvlth.data.transforms import draw_chosen, draw_uniform, restore_dtype, to_float

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, as torchvision's rgb_to_grayscale


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


@dataclass(frozen=True)
class JitterParams:
    """Colour-jitter draws for N images: ``factors`` (4, N) are the brightness, contrast and
    saturation factors and the hue shift (torchvision's ``adjust_*`` arguments); ``applied`` (N,)
    says which images are jittered at all."""

    factors: torch.Tensor
    applied: torch.Tensor


def jitter_params(
    generator: torch.Generator,
    n: int,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> JitterParams:
    """Factors from [1-x, 1+x] (hue shift from [-hue, hue]), then which images, as ColorJitter."""
    draw = draw_uniform(generator, (4, n), generator.device)
    low = torch.tensor([1 - brightness, 1 - contrast, 1 - saturation, -hue], device=draw.device)
    span = torch.tensor([2 * brightness, 2 * contrast, 2 * saturation, 2 * hue], device=draw.device)
    factors = low[:, None] + span[:, None] * draw
    return JitterParams(factors, draw_uniform(generator, (n,), generator.device) < p)


def apply_color_jitter(images: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (in that fixed order) on the ``applied`` images.
    1-channel images get brightness and contrast only (saturation and hue mean nothing there)."""
    n, c = images.shape[:2]
    factors = params.factors.to(images.device).view(4, n, 1, 1, 1)
    applied = params.applied.to(images.device).view(n, 1, 1, 1)
    out = to_float(images).clamp(0, 1).mul(factors[0]).clamp_(0, 1)
    mean = grayscale(out).mean((1, 2, 3), keepdim=True)
    out = _blend(out, mean, factors[1])
    if c == 3:
        out = _blend(out, grayscale(out), factors[2])
        hsv = _rgb_to_hsv(out)
        hue = torch.remainder(hsv[:, 0] + factors[3].view(n, 1, 1), 1.0)
        out = _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], 1))
    return torch.where(applied, restore_dtype(out, images), images)


def color_jitter(
    images: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """With probability ``p`` per image, torchvision's ColorJitter(brightness, contrast, saturation,
    hue) in a fixed order (see :func:`jitter_params` and :func:`apply_color_jitter`)."""
    params = jitter_params(generator, images.shape[0], brightness, contrast, saturation, hue, p)
    return apply_color_jitter(images, params)


def random_grayscale(images: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability ``p`` per image, replace RGB by its luminance in all three channels."""
    applied = draw_chosen(generator, images.shape[0], p, images.device)
    if images.shape[1] == 1:
        return images
    gray = restore_dtype(grayscale(to_float(images)).expand_as(images), images)
    return torch.where(applied, gray, images)


# --- blur -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlurParams:
    """Gaussian-blur draws for N images: ``sigma`` (N,) and which images are ``applied`` (N,)."""

    sigma: torch.Tensor
    applied: torch.Tensor


def simclr_kernel_size(side: int) -> int:
    """SimCLR's blur kernel: 10% of the image side, made odd (224 -> 23, 32 -> 3, under 20 -> 1)."""
    return 2 * ((side // 10) // 2) + 1


def blur_params(
    generator: torch.Generator, n: int, sigma: tuple[float, float] = (0.1, 2.0), p: float = 0.5
) -> BlurParams:
    """Sigma uniform in ``sigma`` per image, then which images (SimCLR / MoCo v2's GaussianBlur)."""
    sigmas = draw_uniform(generator, (n,), generator.device, *sigma)
    return BlurParams(sigmas, draw_uniform(generator, (n,), generator.device) < p)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur image i with a ``kernel_size`` Gaussian of std ``sigma[i]``, reflect-padded, as
    torchvision's ``gaussian_blur``: one separable pass per axis, as grouped convolutions over all
    N x C planes at once (a per-image kernel needs no loop)."""
    n, c, h, w = images.shape
    radius = min(kernel_size // 2, h - 1, w - 1)  # reflect padding needs radius < side
    if radius <= 0:
        return images
    x = to_float(images).reshape(1, n * c, h, w)
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sigma = sigma.to(x.device, x.dtype).clamp(min=1e-6)
    kernels = torch.softmax(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2, dim=1)  # normalised
    kernels = kernels.repeat_interleave(c, dim=0)  # one kernel per (image, channel) plane
    size = 2 * radius + 1
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernels.view(n * c, 1, 1, size), groups=n * c
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="reflect"), kernels.view(n * c, 1, size, 1), groups=n * c
    )
    return restore_dtype(x.view(n, c, h, w), images)


def random_gaussian_blur(
    images: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
) -> torch.Tensor:
    """With probability ``p`` per image, a Gaussian blur with sigma uniform in ``sigma``; the kernel
    defaults to SimCLR's 10% of the image side (:func:`simclr_kernel_size`)."""
    params = blur_params(generator, images.shape[0], sigma, p)
    return apply_blur(images, params, kernel_size or simclr_kernel_size(min(images.shape[-2:])))


def apply_blur(images: torch.Tensor, params: BlurParams, kernel_size: int) -> torch.Tensor:
    applied = params.applied.to(images.device).view(-1, 1, 1, 1)
    return torch.where(applied, gaussian_blur(images, params.sigma, kernel_size), images)
