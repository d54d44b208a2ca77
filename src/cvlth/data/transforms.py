"""Batch augmentations: whole-batch tensor ops that run unchanged on CPU or GPU.

Every random op takes ``(images, generator, ...)`` with images (N, C, H, W), either uint8 in
0..255 or float in [0, 1], and returns the same dtype (geometric ops round uint8 results; colour
ops compute in float and round back). Random numbers are drawn on the generator's device, a
fixed count per call whatever the image content, then moved to the images' device: a CPU
generator drives GPU batches too, and a given (generator state, batch shape) gives one result.

The random colour ops and the blur draw their parameters with ``*_params`` functions and apply
them with ``apply_*`` (so tests can hand the same parameters to torchvision's per-image ops).

This replaces per-image PIL pipelines (see benchmarks/augment_speed.py). Known departures from
torchvision: colour-jitter factors are applied in the fixed order brightness, contrast,
saturation, hue (torchvision shuffles the order per image); random_resized_crop samples with
bilinear ``grid_sample`` (no antialiasing when it shrinks); the blur is a true Gaussian (MoCo's
PIL ``GaussianBlur(radius=sigma)`` approximates one with box filters).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
    draw = _uniform(generator, (4, n), generator.device)
    low = torch.tensor([1 - brightness, 1 - contrast, 1 - saturation, -hue], device=draw.device)
    span = torch.tensor([2 * brightness, 2 * contrast, 2 * saturation, 2 * hue], device=draw.device)
    factors = low[:, None] + span[:, None] * draw
    return JitterParams(factors, _uniform(generator, (n,), generator.device) < p)


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
    return torch.where(applied, _like(out, images), images)


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
    applied = _chosen(generator, images.shape[0], p, images.device)
    if images.shape[1] == 1:
        return images
    gray = _like(grayscale(to_float(images)).expand_as(images), images)
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
    sigmas = _uniform(generator, (n,), generator.device, *sigma)
    return BlurParams(sigmas, _uniform(generator, (n,), generator.device) < p)


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
    return _like(x.view(n, c, h, w), images)


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


Normalization = tuple[Sequence[float], Sequence[float]] | None  # (mean, std), or None: raw [0, 1]


@dataclass(frozen=True)
class ContrastiveView:
    """One contrastive view's recipe. The defaults are SimCLR's (Chen et al. 2020, appendix A);
    :data:`MOCO_V2_VIEW` is MoCo v2's "aug+". ``blur_kernel`` None: 10% of the image side."""

    scale: tuple[float, float] = (0.08, 1.0)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None


SIMCLR_VIEW = ContrastiveView()
MOCO_V2_VIEW = ContrastiveView(scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1))


@dataclass(frozen=True)
class ContrastiveAugment:
    """One SimCLR / MoCo v2 view: RandomResizedCrop(view.scale) to ``size`` (default: the input's),
    then :meth:`after_crop`. Two calls with one generator give two independent views."""

    normalization: Normalization
    view: ContrastiveView = SIMCLR_VIEW
    size: int | tuple[int, int] | None = None

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        out_size = self.size or tuple(images.shape[-2:])
        cropped = random_resized_crop(to_float(images), generator, out_size, scale=self.view.scale)
        return self.after_crop(cropped, generator)

    def after_crop(self, views: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The view without its crop, for views cropped already (pairs streamed from the full image):
        flip, colour jitter, grayscale, Gaussian blur (skipped, with its draws, when ``blur_p`` is 0),
        then ``normalize`` by ``normalization`` (None: the raw [0, 1] pixels)."""
        view = self.view
        x = horizontal_flip(to_float(views), generator, p=view.flip_p)
        x = color_jitter(x, generator, *view.jitter, p=view.jitter_p)
        x = random_grayscale(x, generator, p=view.grayscale_p)
        if view.blur_p > 0:
            x = random_gaussian_blur(x, generator, view.blur_p, view.blur_sigma, view.blur_kernel)
        return x if self.normalization is None else normalize(x, *self.normalization)


def contrastive_augment(
    normalization: Normalization,
    view: ContrastiveView = SIMCLR_VIEW,
    size: int | tuple[int, int] | None = None,
) -> ContrastiveAugment:
    """:class:`ContrastiveAugment` (``normalization`` None: raw [0, 1] pixels, for weights trained so)."""
    return ContrastiveAugment(normalization, view, size)


def supervised_augment(size: int, mean: Sequence[float], std: Sequence[float]) -> Transform:
    """Supervised upstream training (paper): RandomResizedCrop + flip, then normalise."""
    return compose(
        lambda x, g: random_resized_crop(x, g, size),
        horizontal_flip,
        lambda x, g: normalize(x, mean, std),
    )
