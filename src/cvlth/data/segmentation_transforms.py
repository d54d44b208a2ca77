"""The geometry of semantic-segmentation samples: random scale + crop for training, resize + centre
crop for evaluation, on uint8 tensors (image [C, H, W], label (H, W)) wherever they already are.

Training, as the paper's DeepLabV3+ reference (its ``Segmentation/args.py``: ``ExtRandomScale((0.5,
2.0))``, ``ExtRandomCrop(513, pad_if_needed=True)``, flip) and torchvision's segmentation reference:

1. **scale** by ``s ~ U(lo, hi)`` of the image's own size: ``(int(H s), int(W s))`` (truncated, as
   the reference); the image bilinear with antialiasing (what PIL's resize does), the label with
   nearest-exact (PIL's NEAREST: pixel centres, so labels stay aligned with the image pixels and no
   class is ever blended);
2. **pad** bottom and right up to ``crop`` (torchvision's reference ``pad_if_smaller``; the VOC
   reference pads every side, which only moves the image within the crop): the image with 0 or the
   dataset mean, the label with the ignore index 255, so padding never counts in the loss;
3. **crop** ``crop x crop`` at a uniformly random position.

The objective flips afterwards. Draws come from the step's augmentation generator, per sample in a
fixed order: the scale (only with a scale range), then top, then left. Without a scale range the
draws are exactly those of the plain random crop the scene tasks have always used.

Evaluation (the reference's ``--crop_val``, which its scripts pass): the shorter side resized to
``size`` (torchvision's ``Resize(int)``: the longer side becomes ``int(size * long / short)``), then
the centre ``size x size`` crop (torchvision's anchor ``round((H - size) / 2)``).

Images are resized in float32 and rounded back to uint8 on every device, so CPU and GPU agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ScaleCrop:
    """One sample's drawn geometry: its size after scaling, then the crop's top-left corner."""

    height: int
    width: int
    top: int
    left: int


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(int(height * scale), int(width * scale))``, at least 1 pixel each."""
    return max(1, int(height * scale)), max(1, int(width * scale))


def draw_scale_crop(
    height: int,
    width: int,
    crop: int,
    generator: torch.Generator | None,
    scale_range: tuple[float, float] | None = None,
    device: torch.device | None = None,
) -> ScaleCrop:
    """Draw a sample's scale (with ``scale_range``) and crop position from ``generator``.

    ``device`` is where the draws happen when ``generator`` is None (torch's default generator
    there); a generator draws on its own device.
    """
    device = generator.device if generator is not None else device or torch.device("cpu")
    if scale_range is not None:
        low, high = scale_range
        unit = float(torch.rand((), generator=generator, device=device))
        height, width = scaled_size(height, width, low + (high - low) * unit)
    top = int(torch.randint(max(crop, height) - crop + 1, (1,), generator=generator, device=device))
    left = int(torch.randint(max(crop, width) - crop + 1, (1,), generator=generator, device=device))
    return ScaleCrop(height, width, top, left)


def resize_pair(image: torch.Tensor, label: torch.Tensor, height: int, width: int) -> Pair:
    """The image (bilinear, antialiased) and label (nearest-exact) at ``height x width``."""
    if tuple(image.shape[-2:]) == (height, width):
        return image, label
    resized = F.interpolate(
        image[None].float(), size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )[0]
    image = resized.round_().clamp_(0, 255).to(torch.uint8)
    label = F.interpolate(label[None, None], size=(height, width), mode="nearest-exact")[0, 0]
    return image, label


def pad_pair(
    image: torch.Tensor, label: torch.Tensor, height: int, width: int, fill: int | Sequence[int] = 0
) -> Pair:
    """Pad bottom/right up to ``height x width`` (never crops): the image with ``fill`` (one value,
    or one per channel), the label with :data:`IGNORE_INDEX`."""
    pad_height, pad_width = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
    if pad_height == 0 and pad_width == 0:
        return image, label
    pad = (0, pad_width, 0, pad_height)
    label = F.pad(label, pad, value=IGNORE_INDEX)
    values = [fill] if isinstance(fill, int) else list(fill)
    if len(set(values)) == 1:
        return F.pad(image, pad, value=values[0]), label
    channels, old_height, old_width = image.shape
    if len(values) != channels:
        raise ValueError(f"pad fill has {len(values)} values for a {channels}-channel image")
    canvas = torch.tensor(values, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    canvas = canvas.expand(channels, old_height + pad_height, old_width + pad_width).clone()
    canvas[:, :old_height, :old_width] = image
    return canvas, label


def crop_pair(image: torch.Tensor, label: torch.Tensor, top: int, left: int, size: int) -> Pair:
    return image[:, top : top + size, left : left + size], label[top : top + size, left : left + size]


def apply_scale_crop(
    image: torch.Tensor, label: torch.Tensor, geometry: ScaleCrop, crop: int, fill: int | Sequence[int] = 0
) -> Pair:
    """Resize to the drawn size, pad up to ``crop``, crop at the drawn corner."""
    image, label = resize_pair(image, label, geometry.height, geometry.width)
    image, label = pad_pair(image, label, crop, crop, fill)
    return crop_pair(image, label, geometry.top, geometry.left, crop)


def random_scale_crop(
    image: torch.Tensor,
    label: torch.Tensor,
    crop: int,
    generator: torch.Generator | None,
    scale_range: tuple[float, float] | None = None,
    fill: int | Sequence[int] = 0,
) -> Pair:
    """A training sample's random scale, pad and ``crop x crop`` crop (see the module doc)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    geometry = draw_scale_crop(height, width, crop, generator, scale_range, image.device)
    return apply_scale_crop(image, label, geometry, crop, fill)


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision's ``Resize(size)`` output (height, width): the shorter side becomes ``size``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_center_crop(image: torch.Tensor, label: torch.Tensor, size: int) -> Pair:
    """The evaluation view: shorter side to ``size``, then the centre ``size x size`` crop."""
    height, width = shorter_side_size(int(image.shape[-2]), int(image.shape[-1]), size)
    image, label = resize_pair(image, label, height, width)
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return crop_pair(image, label, top, left, size)


def mean_fill(mean: Sequence[float]) -> tuple[int, ...]:
    """Per-channel uint8 values of a [0, 1]-scale mean (they normalise to 0)."""
    return tuple(int(round(255 * value)) for value in mean)
