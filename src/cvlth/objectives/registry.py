"""Objectives by name (the ``objective.name`` of a config): one builder per objective.

A builder takes the objective's options, the backbone's feature width and the dataset (for its
normalisation statistics and image size) and returns an object that satisfies
:class:`cvlth.training.objective.Objective`. Adding an objective is one ``@register_objective``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from cvlth.config import ObjectiveRef
from cvlth.data.classification import DatasetSplits
from cvlth.data.samples import SampleSplits
from cvlth.errors import ConfigError
from cvlth.training.objective import Objective

Builder = Callable[..., Objective]
OBJECTIVES: dict[str, Builder] = {}


def register_objective(name: str) -> Callable[[Builder], Builder]:
    def decorate(builder: Builder) -> Builder:
        OBJECTIVES[name] = builder
        return builder

    return decorate


def objective_option_defaults(name: str) -> dict[str, Any]:
    """The default value of each option of objective ``name`` (empty for an unknown name)."""
    builder = OBJECTIVES.get(name)
    if builder is None:
        return {}
    parameters = inspect.signature(builder).parameters.items()
    return {n: p.default for n, p in parameters if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def build_objective(
    ref: ObjectiveRef, *, feature_dim: int, data: DatasetSplits | SampleSplits, seed: int = 0
) -> Objective:
    """The objective ``ref`` names. Its heads are initialised from ``seed``, not from the global RNG
    (whose initial seed differs between processes), so a run is reproducible from its config."""
    if ref.name not in OBJECTIVES:
        raise ConfigError(f"objective.name: must be one of {sorted(OBJECTIVES)} (got {ref.name!r})")
    builder = OBJECTIVES[ref.name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return builder(feature_dim=feature_dim, data=data, **ref.options)
        except TypeError as exc:  # an option the builder does not take
            raise ConfigError(f"objective {ref.name!r}: bad options {sorted(ref.options)}: {exc}") from exc


@register_objective("supervised")
def _supervised(
    *,
    feature_dim: int,
    data: DatasetSplits,
    augment: str = "crop_flip",
    padding: int = 4,
    flip: bool = True,
    label_smoothing: float = 0.0,
) -> Objective:
    """Cross-entropy. ``augment``: ``crop_flip`` (the paper's 32x32 recipe: padded crop + flip),
    ``resized_crop`` (RandomResizedCrop + flip, upstream ImageNet style) or ``none``."""
    from cvlth.data import transforms as T
    from cvlth.objectives.supervised import SupervisedObjective

    mean, std = data.mean, data.std
    size = data.image_shape[-1]
    steps: list[Any] = []
    if augment == "crop_flip":
        steps.append(lambda x, g: T.random_crop(x, g, padding=padding))
    elif augment == "resized_crop":
        steps.append(lambda x, g: T.random_resized_crop(x, g, size))
    elif augment != "none":
        raise ConfigError(
            f"objective.options.augment: must be one of 'crop_flip', 'resized_crop', 'none' (got {augment!r})"
        )
    if flip and augment != "none":
        steps.append(T.horizontal_flip)
    steps.append(lambda x, g: T.normalize(x, mean, std))
    return SupervisedObjective(
        augment=T.compose(*steps),
        preprocess=lambda x, g=None: T.normalize(x, mean, std),
        label_smoothing=label_smoothing,
    )


@register_objective("simclr")
def _simclr(
    *,
    feature_dim: int,
    data: DatasetSplits,
    projection_dim: int = 128,
    temperature: float = 0.5,
    variant: str = "standard",
    crop_scale: tuple[float, float] = (0.2, 1.0),
    jitter_strength: float = 0.5,
) -> Objective:
    """SimCLR: NT-Xent over two augmented views, projection head hidden = feature_dim."""
    from cvlth.data.transforms import contrastive_augment
    from cvlth.objectives.simclr import SimCLRObjective

    augment = contrastive_augment(data.mean, data.std, scale=tuple(crop_scale), strength=jitter_strength)
    return SimCLRObjective(
        feature_dim, projection_dim=projection_dim, temperature=temperature, augment=augment, variant=variant
    )


@register_objective("moco")
def _moco(
    *,
    feature_dim: int,
    data: DatasetSplits,
    dim: int = 128,
    queue_size: int = 65536,
    momentum: float = 0.999,
    temperature: float = 0.2,
    mlp: bool = True,
    key_bn_groups: int = 8,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    jitter_strength: float = 0.5,
) -> Objective:
    """MoCo v2: EMA key encoder, a queue of negatives, InfoNCE at temperature 0.2, "aug+" views."""
    from cvlth.data.transforms import contrastive_augment
    from cvlth.objectives.moco import MoCoObjective

    augment = contrastive_augment(data.mean, data.std, scale=tuple(crop_scale), strength=jitter_strength)
    return MoCoObjective(
        feature_dim,
        dim=dim,
        queue_size=queue_size,
        momentum=momentum,
        temperature=temperature,
        mlp=mlp,
        augment=augment,
        key_bn_groups=key_bn_groups,
    )


@register_objective("detection")
def _detection(
    *, feature_dim: int, data: SampleSplits, flip: float = 0.5, train_difficult: bool = False
) -> Objective:
    """Summed Faster R-CNN losses; flips with probability ``flip``; AP@[.5:.95] selects."""
    from cvlth.objectives.detection import DetectionObjective

    return DetectionObjective(flip=flip, train_difficult=train_difficult)


@register_objective("segmentation")
def _segmentation(
    *, feature_dim: int, data: SampleSplits, flip: float = 0.5, crop_size: int | None = None
) -> Objective:
    """Cross-entropy (255 ignored) with the dataset's normalisation; mIoU selects."""
    from cvlth.objectives.segmentation import SegmentationObjective

    return SegmentationObjective(data.num_classes, data.mean, data.std, flip=flip, crop_size=crop_size)
