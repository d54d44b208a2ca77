"""Faster R-CNN with a cvlth ResNet + FPN backbone, initialised from θ_p.

The model is torchvision's :class:`~torchvision.models.detection.FasterRCNN`; its backbone is a
:class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN` over :func:`build_backbone`, so
the ResNet's tensors are named ``backbone.body.layer1.0.conv1.weight`` ... and the canonical mask and
checkpoint names map onto it through the ``backbone.body.`` wrapper (FPN, RPN and box heads have
other names and are never pruned). All layers train (torchvision freezes the stem and layer1 by
default; the paper fine-tunes the whole ticket).

**Normalisation layers.** torchvision uses ``FrozenBatchNorm2d`` for detection because its batches
are 2 images of 800px. cvlth defaults to ordinary ``BatchNorm2d`` (``frozen_bn=False``): the CPU
study trains tiny models on batches of dozens of 64x64 scenes, where batch statistics are reliable
and adapting BN to the new domain helps; pass ``frozen_bn=True`` for VOC-sized images and batches.

**Sizes.** Head widths scale with the backbone width (``width / 64`` of torchvision's FPN 256
channels and 1024-wide box MLP, with floors of 16 and 64). ``min_size`` / ``max_size`` are
GeneralizedRCNNTransform's resize targets (default 64: a 64x64 scene is not resized). The FPN reads
the stages in ``returned_layers`` (default all four, as torchvision) plus a max-pooled level; each
level gets one anchor size, from ``(8, 16, 32, 64, 128)`` when ``max_size <= 128`` and torchvision's
``(32, 64, 128, 256, 512)`` otherwise (stage k's entry, then the next for the pooled level), with
aspect ratios 0.5, 1, 2. With a CIFAR stem layer1 runs at full resolution, so its FPN level holds
most of the anchors and costs most of the time: ``returned_layers=[2, 3, 4]`` keeps strides 2–8 and
is ~1.6x faster on 64x64 scenes. Small images (``max_size <= 128``) also get smaller proposal and
RoI budgets (:data:`SMALL_IMAGE_OPTIONS`; any can be overridden).

Input: a list of float [C, H, W] images in [0, 1]; the transform normalises with ``image_mean`` /
``image_std`` (one entry per channel: give the statistics the dataset or θ_p expects; default
ImageNet's, averaged over RGB for 1-channel input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from cvlth.data.stats import IMAGENET_MEAN, IMAGENET_STD
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.models.checkpoints.loading import load_into

SMALL_ANCHORS: tuple[int, ...] = (8, 16, 32, 64, 128)
TORCHVISION_ANCHORS: tuple[int, ...] = (32, 64, 128, 256, 512)
ASPECT_RATIOS: tuple[float, ...] = (0.5, 1.0, 2.0)
# Scenes hold at most a handful of objects: torchvision's proposal budgets (2000 pre-NMS per level,
# 512 RoIs per image), sized for 800px COCO images, would cost most of a CPU step here.
SMALL_IMAGE_OPTIONS: dict[str, int] = {
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 150,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "box_batch_size_per_image": 128,
}
ALL_STAGES: tuple[int, ...] = (1, 2, 3, 4)


def scaled_channels(full: int, width: int, floor: int) -> int:
    """``full`` channels of a width-64 network scaled to ``width``, at least ``floor``."""
    return max(floor, full * width // 64)


def build_detector(
    source: ImportedCheckpoint | Mapping[str, torch.Tensor] | None,
    spec: BackboneSpec,
    num_classes: int,
    *,
    seed: int = 0,
    frozen_bn: bool = False,
    min_size: int = 64,
    max_size: int = 64,
    returned_layers: Sequence[int] = ALL_STAGES,
    anchor_sizes: Sequence[int] | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    fpn_channels: int | None = None,
    representation_size: int | None = None,
    **options: Any,
) -> FasterRCNN:
    """A Faster R-CNN (ResNet-FPN) for ``num_classes`` (object classes + 1 for background).

    ``source`` is θ_p as a canonical state_dict (or what :func:`import_checkpoint` returns; ``None``
    leaves the backbone random), loaded strictly except ``fc``; its stem must fit ``spec`` (e.g.
    ``in_channels=1`` for the grayscale scenes). New tensors (FPN, heads) are drawn from ``seed``,
    independently of the global RNG. ``options`` go to torchvision's ``FasterRCNN`` (e.g.
    ``box_detections_per_img``, ``rpn_batch_size_per_image``). See the module doc for the defaults.
    """
    mean, std = input_statistics(spec.in_channels, image_mean, image_std)
    stages = _checked_stages(returned_layers)
    default_sizes = SMALL_ANCHORS if max_size <= 128 else TORCHVISION_ANCHORS
    sizes = tuple(anchor_sizes or default_sizes[stages[0] - 1 : stages[-1] + 1])
    if len(sizes) != len(stages) + 1:
        raise ValueError(
            f"anchor_sizes needs {len(stages) + 1} entries (one per FPN level: {len(stages)} stages + pool)"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = build_backbone(spec, norm_layer=FrozenBatchNorm2d if frozen_bn else None)
        fpn = BackboneWithFPN(
            body,
            return_layers={f"layer{stage}": str(index) for index, stage in enumerate(stages)},
            in_channels_list=[_stage_channels(spec)[stage - 1] for stage in stages],
            out_channels=fpn_channels or scaled_channels(256, spec.width, 16),
            extra_blocks=LastLevelMaxPool(),
        )
        detector = FasterRCNN(
            fpn,
            min_size=min_size,
            max_size=max_size,
            image_mean=list(mean),
            image_std=list(std),
            rpn_anchor_generator=AnchorGenerator(
                sizes=tuple((s,) for s in sizes), aspect_ratios=(ASPECT_RATIOS,) * len(sizes)
            ),
            **_box_heads(
                fpn.out_channels, representation_size or scaled_channels(1024, spec.width, 64), num_classes
            ),
            **{**(SMALL_IMAGE_OPTIONS if max_size <= 128 else {}), **options},
        )
    if source is not None:
        load_into(detector, source, strict=True, skip=("fc.",))
    return detector


def input_statistics(
    channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std; the default is ImageNet's (averaged over RGB for other channel counts)."""
    if mean is None or std is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if channels != 3:
            mean, std = (sum(mean) / 3,) * channels, (sum(std) / 3,) * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"image_mean/image_std need {channels} entries (one per input channel)")
    return tuple(mean), tuple(std)


def _checked_stages(returned_layers: Sequence[int]) -> tuple[int, ...]:
    stages = tuple(sorted(set(returned_layers)))
    if not stages or stages != tuple(range(stages[0], 5)):
        raise ValueError(
            f"returned_layers must be consecutive stages ending with 4, e.g. [2, 3, 4] (got {list(returned_layers)})"
        )
    return stages


def _stage_channels(spec: BackboneSpec) -> list[int]:
    expansion = spec.architecture.expansion
    return [spec.width * factor * expansion for factor in (1, 2, 4, 8)]


def _box_heads(channels: int, representation_size: int, num_classes: int) -> dict[str, nn.Module]:
    """torchvision's two-MLP box head and predictor at a chosen width (7x7 RoI-aligned features)."""
    resolution = 7
    return {
        "box_head": TwoMLPHead(channels * resolution**2, representation_size),
        "box_predictor": FastRCNNPredictor(representation_size, num_classes),
    }
