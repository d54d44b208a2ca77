"""Augmentation recipes composed from the batch ops: the paper's CIFAR and supervised upstream
augmentations, and the SimCLR / MoCo v2 contrastive view (:class:`ContrastiveView` says what one
view does, :class:`ContrastiveAugment` draws one)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cvlth.data.geometric_transforms import horizontal_flip, random_resized_crop
from cvlth.data.photometric_transforms import color_jitter, random_gaussian_blur, random_grayscale
from cvlth.data.transforms import Normalization, normalize, to_float

# --- the contrastive view ---------------------------------------------------------------------


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
