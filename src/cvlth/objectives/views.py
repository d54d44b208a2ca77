"""Where a contrastive objective's two views come from.

In memory (the small sets, the built-in world) a batch is ``(N, C, H, W)`` images and the objective
crops both views out of each image on the device (:class:`~cvlth.data.augment_pipelines.ContrastiveAugment`).
A streamed image folder (:mod:`cvlth.data.streaming`) holds full-size JPEGs: cropping views out of a
224 px image already cropped by the loader would not be the papers' views. For SimCLR and MoCo
:func:`training_images` therefore turns a streamed training set into two-view pairs, each view a
``RandomResizedCrop`` of the full decoded image at the objective's ``crop_scale``; the batch is then
``(N, 2, C, H, W)`` and :func:`two_views` applies only the rest of the view (flip, colour, blur,
normalisation) to each half.
"""

from __future__ import annotations

from typing import Any

import torch

from cvlth.config import ObjectiveRef
from cvlth.data.augment_pipelines import MOCO_V2_VIEW, SIMCLR_VIEW, ContrastiveView
from cvlth.errors import ConfigError, CvlthError

#: The paper view each contrastive objective starts from (its options replace fields of it).
CONTRASTIVE_VIEWS: dict[str, ContrastiveView] = {"simclr": SIMCLR_VIEW, "moco": MOCO_V2_VIEW}


def crop_scale(ref: ObjectiveRef) -> tuple[float, float]:
    """The view's RandomResizedCrop area range: ``crop_scale`` if the config sets it, else the paper's.
    Raises ConfigError unless it is two numbers with 0 < low <= high."""
    given = ref.options.get("crop_scale")
    if given is None:
        return CONTRASTIVE_VIEWS[ref.name].scale
    try:
        low, high = (float(bound) for bound in given)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0 < low <= high:  # also false for nan
        raise ConfigError(
            f"objective {ref.name!r}: crop_scale {given!r} is not an area range",
            hint="give two fractions of the image area, 0 < low <= high (SimCLR: [0.08, 1.0], MoCo v2: [0.2, 1.0])",
        )
    return low, high


def training_images(ref: ObjectiveRef, images: Any) -> Any:
    """The training set objective ``ref`` draws its batches from: ``images`` itself, or -- a
    contrastive objective on a streamed image folder -- the same files as two-view pairs cropped
    from the full image at the objective's crop scale. Raises ConfigError for a streamed training
    set that is centre-cropped already (``train_crop: center``): its views could not see the full image."""
    if ref.name not in CONTRASTIVE_VIEWS:
        return images
    from cvlth.data.streaming import StreamingImageSet  # late, as the registry loads it: torchvision, PIL

    if not isinstance(images, StreamingImageSet):
        return images
    if not images.training:
        raise ConfigError(
            f"objective {ref.name!r} on streamed {images.dataset}: its training images are centre-cropped "
            "(`train_crop: center`), but its two views are drawn from the full image in the data loader",
            hint="remove `train_crop: center` from the dataset's options",
        )
    return images.two_views(crop_scale(ref))


def two_views(augment: Any, images: torch.Tensor, generator: torch.Generator | None) -> tuple[Any, Any]:
    """Two augmented views of each image of ``images``: ``(N, C, H, W)`` images are cropped twice
    by ``augment``; ``(N, 2, C, H, W)`` pairs (cropped by the loader) get ``augment.after_crop`` only.
    The generator draws view 1's parameters, then view 2's."""
    if images.ndim != 5:
        return augment(images, generator), augment(images, generator)
    after_crop = getattr(augment, "after_crop", None)
    if after_crop is None or images.shape[1] != 2:
        raise CvlthError(
            f"a batch of {tuple(images.shape)} view pairs needs a 2-view batch and an augmentation with "
            "`after_crop` (a ContrastiveAugment)",
            hint="build the objective's augment with cvlth.data.augment_pipelines.contrastive_augment",
        )
    return after_crop(images[:, 0], generator), after_crop(images[:, 1], generator)
