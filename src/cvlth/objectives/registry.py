"""Objectives by name (the ``objective.name`` of a config): one builder per objective.

A builder takes the objective's options, the backbone's feature width and the dataset (for its
normalisation statistics and image size) and returns an object that satisfies
:class:`cvlth.training.objective.Objective`. Adding an objective is one ``@OBJECTIVES.register``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from cvlth.config import ObjectiveRef
from cvlth.data import transforms as T
from cvlth.data.augment_pipelines import ContrastiveAugment, ContrastiveView, contrastive_augment
from cvlth.data.classification import DatasetSplits
from cvlth.data.geometric_transforms import horizontal_flip, random_crop, random_resized_crop
from cvlth.data.samples import SampleSplits
from cvlth.data.stats import IMAGENET_MEAN, IMAGENET_STD
from cvlth.errors import ConfigError
from cvlth.objectives.detection import DetectionObjective
from cvlth.objectives.moco import MoCoObjective
from cvlth.objectives.segmentation import SegmentationObjective
from cvlth.objectives.simclr import SimCLRObjective
from cvlth.objectives.supervised import SupervisedObjective
from cvlth.objectives.views import CONTRASTIVE_VIEWS
from cvlth.registry import Registry
from cvlth.training.objective import Objective

Builder = Callable[..., Objective]
#: Every training objective by name (a recipe's ``objective.name``).
OBJECTIVES: Registry[Builder] = Registry("objective", ConfigError)


#: The objectives that own heads (``modules()`` not empty: projection MLPs, MoCo's queue), known
#: without building one (a run's identity needs it; a test checks it against every objective built).
OBJECTIVES_WITH_HEADS = frozenset({"simclr", "moco"})


def objective_option_defaults(name: str) -> dict[str, Any]:
    """Every option of objective ``name`` with its default value (empty for an unknown name). A
    builder's ``**options`` are the contrastive view's (:func:`_contrastive_augment`)."""
    builder = OBJECTIVES.get(name)
    if builder is None:
        return {}
    options: dict[str, Any] = {}
    for option, parameter in inspect.signature(builder).parameters.items():
        if parameter.kind is parameter.VAR_KEYWORD:
            view = inspect.signature(_contrastive_augment).parameters.items()
            options.update({n: p.default for n, p in view if n not in ("data", "base")})
        elif parameter.kind is parameter.KEYWORD_ONLY and option not in ("feature_dim", "data"):
            options[option] = parameter.default
    return options


def build_objective(
    ref: ObjectiveRef, *, feature_dim: int, data: DatasetSplits | SampleSplits, seed: int = 0
) -> Objective:
    """The objective ``ref`` names. Its heads are initialised from ``seed``, not from the global RNG
    (whose initial seed differs between processes), so a run is reproducible from its config."""
    builder = OBJECTIVES.lookup(ref.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return builder(feature_dim=feature_dim, data=data, **ref.options)
        except TypeError as exc:  # an option the builder does not take
            raise ConfigError(f"objective {ref.name!r}: bad options {sorted(ref.options)}: {exc}") from exc


NormalizeOption = str | dict[str, list[float]]


def resolve_normalization(option: NormalizeOption, data: DatasetSplits) -> T.Normalization:
    """The ``normalize`` option of the classification objectives as (mean, std), or None.

    ``dataset`` (default): the dataset's own statistics; ``imagenet``: ImageNet's (averaged over
    channels for 1-channel images); ``none``: raw [0, 1] pixels (SimCLR's converted weights expect
    them; a study passes its θ_p's recorded normalisation); ``{mean: [...], std: [...]}``: given
    constants (e.g. a reference implementation's), one value or one per channel."""
    channels = data.image_shape[0]
    if option == "dataset":
        return data.mean, data.std
    if option == "none":
        return None
    if option == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if channels != len(mean):
            mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
        return mean, std
    if isinstance(option, dict) and set(option) == {"mean", "std"}:
        mean, std = tuple(option["mean"]), tuple(option["std"])
        if {len(mean), len(std)} <= {1, channels} and len(mean) == len(std) and min(std) > 0:
            return mean, std
    raise ConfigError(
        f"objective.options.normalize: {option!r} does not fit {data.name} ({channels}-channel images)",
        hint="use dataset, imagenet, none or {mean: [...], std: [...]} with 1 or "
        f"{channels} values each and std > 0",
    )


def _finish(normalization: T.Normalization) -> T.Transform:
    if normalization is None:
        return lambda x, g=None: T.to_float(x)
    return lambda x, g=None: T.normalize(x, *normalization)


@OBJECTIVES.register("supervised")
def _supervised(
    *,
    feature_dim: int,
    data: DatasetSplits,
    augment: str = "crop_flip",
    padding: int = 4,
    flip: bool = True,
    label_smoothing: float = 0.0,
    normalize: NormalizeOption = "dataset",
    crop_scale: tuple[float, float] = (0.08, 1.0),
) -> Objective:
    """Cross-entropy. ``augment``: ``crop_flip`` (the paper's 32x32 recipe: padded crop + flip),
    ``resized_crop`` (RandomResizedCrop(crop_scale) + flip, upstream ImageNet style) or ``none``;
    ``normalize``: see :func:`resolve_normalization`."""
    size = data.image_shape[-1]
    steps: list[Any] = []
    if augment == "crop_flip":
        steps.append(lambda x, g: random_crop(x, g, padding=padding))
    elif augment == "resized_crop":
        steps.append(lambda x, g: random_resized_crop(x, g, size, scale=tuple(crop_scale)))
    elif augment != "none":
        raise ConfigError(
            f"objective.options.augment: must be one of 'crop_flip', 'resized_crop', 'none' (got {augment!r})"
        )
    if flip and augment != "none":
        steps.append(horizontal_flip)
    finish = _finish(resolve_normalization(normalize, data))
    steps.append(finish)
    return SupervisedObjective(augment=T.compose(*steps), preprocess=finish, label_smoothing=label_smoothing)


def _contrastive_augment(
    data: DatasetSplits,
    base: ContrastiveView,
    normalize: NormalizeOption = "dataset",
    crop_scale: tuple[float, float] | None = None,
    jitter_strength: float | None = None,
    jitter_p: float | None = None,
    grayscale_p: float | None = None,
    blur_p: float | None = None,
    blur_sigma: tuple[float, float] | None = None,
    blur_kernel: int | None = None,
    flip_p: float | None = None,
) -> ContrastiveAugment:
    """The view of ``base`` (the paper's values) with the options given in a config replacing them.
    ``jitter_strength`` s is SimCLR's: jitter (0.8s, 0.8s, 0.8s, 0.2s); SimCLR s = 1, MoCo v2 s = 0.5.
    On a streamed image folder the loader crops both views at ``crop_scale`` from the full image
    and the objective applies the rest (:mod:`cvlth.objectives.views`)."""
    given = {
        "scale": None if crop_scale is None else tuple(crop_scale),
        "jitter": None
        if jitter_strength is None
        else tuple(f * jitter_strength for f in (0.8, 0.8, 0.8, 0.2)),
        "jitter_p": jitter_p,
        "grayscale_p": grayscale_p,
        "blur_p": blur_p,
        "blur_sigma": None if blur_sigma is None else tuple(blur_sigma),
        "blur_kernel": blur_kernel,
        "flip_p": flip_p,
    }
    view = replace(base, **{k: v for k, v in given.items() if v is not None})
    return contrastive_augment(resolve_normalization(normalize, data), view)


@OBJECTIVES.register("simclr")
def _simclr(
    *,
    feature_dim: int,
    data: DatasetSplits,
    projection_dim: int = 128,
    temperature: float = 0.5,
    variant: str = "standard",
    **augment_options: Any,
) -> Objective:
    """SimCLR: NT-Xent over two augmented views, projection head hidden = feature_dim. Augmentation
    options (see :func:`_contrastive_augment`) default to SimCLR's paper values."""
    augment = _contrastive_augment(data, CONTRASTIVE_VIEWS["simclr"], **augment_options)
    return SimCLRObjective(
        feature_dim, projection_dim=projection_dim, temperature=temperature, augment=augment, variant=variant
    )


@OBJECTIVES.register("moco")
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
    **augment_options: Any,
) -> Objective:
    """MoCo v2: EMA key encoder, a queue of negatives, InfoNCE at temperature 0.2; augmentation
    options (see :func:`_contrastive_augment`) default to MoCo v2's "aug+"."""
    augment = _contrastive_augment(data, CONTRASTIVE_VIEWS["moco"], **augment_options)
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


@OBJECTIVES.register("detection")
def _detection(
    *, feature_dim: int, data: SampleSplits, flip: float = 0.5, train_difficult: bool = False
) -> Objective:
    """Summed Faster R-CNN losses; flips with probability ``flip``; AP@[.5:.95] selects."""
    return DetectionObjective(flip=flip, train_difficult=train_difficult)


@OBJECTIVES.register("segmentation")
def _segmentation(
    *,
    feature_dim: int,
    data: SampleSplits,
    flip: float = 0.5,
    crop_size: int | None = None,
    scale_range: list[float] | None = None,
    image_pad: str = "zero",
    eval_crop: int | None = None,
) -> Objective:
    """Cross-entropy (255 ignored) with the dataset's normalisation; mIoU selects. Training scales
    by a random factor in ``scale_range`` (needs ``crop_size``), pads with ``image_pad`` (zero or
    mean) and crops ``crop_size``; evaluation uses full images or, with ``eval_crop``, the
    shorter side resized to it and the centre square (:mod:`cvlth.data.segmentation_transforms`)."""
    return SegmentationObjective(
        data.num_classes,
        data.mean,
        data.std,
        flip=flip,
        crop_size=crop_size,
        scale_range=scale_range,
        image_pad=image_pad,
        eval_crop=eval_crop,
    )
