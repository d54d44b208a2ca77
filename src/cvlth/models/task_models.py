"""The dense-prediction model a downstream task fine-tunes, chosen by the task's objective.

``detection`` → :func:`cvlth.models.detection.build_detector` (Faster R-CNN + FPN),
``segmentation`` → :func:`cvlth.models.segmentation.build_segmenter` (DeepLabV3+); classification
tasks get :func:`cvlth.models.transfer.transfer_model` instead. A task recipe's ``model:`` mapping
is passed to the builder as keyword options (e.g. ``returned_layers: [2, 3, 4]`` or
``box_batch_size_per_image: 32`` for the detector, ``head_channels: 16`` for the segmenter), over
the defaults derived from the dataset (image size, normalisation statistics). The detector's
``min_size`` may be a list (multi-scale training; evaluation at its last entry: torchvision's
GeneralizedRCNNTransform).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn
from torchvision.models.detection import FasterRCNN

from cvlth.data.samples import SampleSplits
from cvlth.errors import ConfigError
from cvlth.models.backbones import BackboneSpec
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.models.detection import build_detector
from cvlth.models.segmentation import build_segmenter
from cvlth.registry import Registry
from cvlth.run_identity import without_defaults

#: The model a dense-prediction task fine-tunes, by the task's objective name.
TASK_MODELS: Registry[Callable[..., nn.Module]] = Registry("dense-prediction objective", ConfigError)
# Builder parameters a recipe cannot set: the study supplies them (θ_p, its spec, the classes, the seed).
_FIXED = frozenset({"source", "spec", "num_classes", "seed", "options"})


@TASK_MODELS.register("detection")
def _detector(
    theta: ImportedCheckpoint, spec: BackboneSpec, data: SampleSplits, seed: int, options: Mapping[str, Any]
) -> nn.Module:
    size = max(data.image_shape[1:])
    defaults = {"min_size": size, "max_size": size, "image_mean": data.mean, "image_std": data.std}
    return build_detector(theta, spec, data.num_classes, seed=seed, **{**defaults, **options})


@TASK_MODELS.register("segmentation")
def _segmenter(
    theta: ImportedCheckpoint, spec: BackboneSpec, data: SampleSplits, seed: int, options: Mapping[str, Any]
) -> nn.Module:
    return build_segmenter(theta, spec, data.num_classes, seed=seed, **options)


#: What each dense-prediction objective's model is, as result tables label the task.
TASK_MODEL_NAMES: dict[str, str] = {"detection": "Faster R-CNN + FPN", "segmentation": "DeepLabV3+"}

#: The objectives whose tasks fine-tune a detector / segmenter rather than a classifier.
DENSE_OBJECTIVES: tuple[str, ...] = tuple(TASK_MODELS)


def model_options(objective: str) -> frozenset[str]:
    """The ``model:`` option names a task with this objective accepts (empty: none)."""
    if objective == "detection":
        # build_detector passes the rest on to torchvision's FasterRCNN.
        own = set(inspect.signature(build_detector).parameters)
        built_here = {"backbone", "num_classes", "rpn_anchor_generator", "box_head", "box_predictor"}
        names = own | (set(inspect.signature(FasterRCNN).parameters) - built_here - {"kwargs"})
    elif objective == "segmentation":
        names = set(inspect.signature(build_segmenter).parameters)
    else:
        names = set()
    return frozenset(names - _FIXED)


def model_option_defaults(objective: str) -> dict[str, Any]:
    """The default value of each ``model:`` option with a fixed default (the detector's sizes and
    normalisation come from the dataset, so they have none here)."""
    if objective == "detection":
        signatures = [inspect.signature(FasterRCNN), inspect.signature(build_detector)]
        dataset_derived = {"min_size", "max_size", "image_mean", "image_std"}
    elif objective == "segmentation":
        signatures, dataset_derived = [inspect.signature(build_segmenter)], set()
    else:
        return {}
    names = model_options(objective) - dataset_derived
    defaults: dict[str, Any] = {}
    for signature in signatures:  # build_detector's own defaults override FasterRCNN's
        defaults.update(
            {n: p.default for n, p in signature.parameters.items() if n in names and p.default is not p.empty}
        )
    return defaults


#: Options whose default became the paper's after runs were computed, with the value those runs had:
#: a run's identity writes such an option when its effective value differs from the former default
#: (:func:`model_options_identity`), so an old config keeps its hash only where it computes the same.
FORMER_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "segmentation": {"backbone_lr_factor": 1.0, "backbone_bn_momentum": 0.1},
}


def model_options_identity(objective: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as a run's identity holds them: options at their default left out, except those
    whose default changed (:data:`FORMER_MODEL_DEFAULTS`), written when they differ from the former one."""
    defaults = model_option_defaults(objective)
    former = FORMER_MODEL_DEFAULTS.get(objective, {})
    effective = {**{key: defaults[key] for key in former}, **options}
    return without_defaults(effective, {**defaults, **former})


def check_model_options(objective: str, options: Mapping[str, Any]) -> None:
    """ConfigError naming the first unknown option (checked when a study is loaded)."""
    if not options:
        return
    allowed = model_options(objective)
    if not allowed:
        raise ConfigError(
            f"model: options apply to detection and segmentation tasks only (objective is {objective!r})",
            hint="remove `model:` from this task, or use a detection/segmentation objective",
        )
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"model: unknown option {', '.join(unknown)} for a {objective} task",
            hint=f"options are: {', '.join(sorted(allowed))}",
        )


def build_task_model(
    objective: str,
    theta: ImportedCheckpoint,
    spec: BackboneSpec,
    data: SampleSplits,
    seed: int,
    options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The detector / segmenter for a dense task (objective in :data:`DENSE_OBJECTIVES`) from θ_p."""
    builder = TASK_MODELS.lookup(objective)
    check_model_options(objective, options or {})
    try:
        return builder(theta, spec, data, seed, dict(options or {}))
    except (TypeError, ValueError) as error:  # a value of the wrong type or out of range
        raise ConfigError(f"model: bad options {dict(options or {})} for {objective}: {error}") from error
