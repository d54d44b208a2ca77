"""The model a run trains, assembled from θ_p: upstream (θ_p with its own head), downstream (θ_p
adapted to a task: a classifier, a Faster R-CNN or a DeepLabV3+) or θ_0 (the same architecture at
torchvision's random initialisation). New parameters are drawn from the seed given.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from cvlth.data.classification import DatasetSplits
from cvlth.data.samples import SampleSplits
from cvlth.errors import CvlthError
from cvlth.models.backbones import build_backbone, init_like_torchvision
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.models.checkpoints.loading import load_into
from cvlth.models.task_models import DENSE_OBJECTIVES, build_task_model
from cvlth.models.transfer import transfer_model


def seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with torch's global RNG at ``seed``, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def upstream_model(
    theta: ImportedCheckpoint, data: DatasetSplits, seed: int, *, objective: str, dataset: str
) -> nn.Module:
    """θ_p with its pre-training classifier (``fc``), for training on the pre-training task itself."""
    spec = theta.spec
    fc = theta.state_dict.get("fc.weight")
    if fc is not None and fc.shape[0] != data.num_classes and objective == "supervised":
        raise CvlthError(
            f"upstream IMP on {dataset} needs a {data.num_classes}-class head, θ_p has {fc.shape[0]}",
            hint="upstream IMP runs on the pre-training task; use the pre-training's dataset",
        )
    model = seeded(seed, lambda: build_backbone(spec, fc.shape[0] if fc is not None else data.num_classes))
    load_into(model, theta.state_dict, strict=fc is not None, skip=())  # the pre-training head too
    return model


def downstream_model(
    theta: ImportedCheckpoint,
    data: DatasetSplits | SampleSplits,
    seed: int,
    *,
    objective: str,
    model_options: Mapping[str, Any] | None = None,
    small_images: bool = False,
    keep_stem: bool = False,
    fresh: bool = False,
) -> nn.Module:
    """θ_p adapted to a task (by the objective's name); ``fresh``: θ_0 of that model instead."""
    if objective in DENSE_OBJECTIVES:
        spec = replace(theta.spec, in_channels=data.image_shape[0])
        model = build_task_model(objective, theta, spec, data, seed, model_options)
    else:
        spec = (
            replace(theta.spec, in_channels=data.image_shape[0])
            if small_images and not keep_stem
            else theta.spec
        )
        model = transfer_model(
            theta, spec, data.num_classes, small_images=small_images, keep_stem=keep_stem, seed=seed
        )
    if fresh:
        model = seeded(seed, lambda: fresh_like(model))
    return model


def fresh_like(model: nn.Module) -> nn.Module:
    """θ_0: the same architecture with torchvision's random initialisation (BN statistics reset)."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
    init_like_torchvision(fresh)
    return fresh
