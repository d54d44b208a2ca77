"""DeepLabV3+ with a cvlth ResNet backbone, initialised from θ_p.

* ``backbone``: :func:`build_backbone` with the last stride(s) replaced by dilation (output stride
  16: ``[False, False, True]``; 8: ``[False, True, True]``); ``avgpool`` and ``fc`` are removed.
  Its tensors are named ``backbone.layer1.0.conv1.weight`` ..., so masks and checkpoints map through
  the ``backbone.`` wrapper; ASPP, decoder and classifier convs have other names and are never pruned.
* ``aspp``: torchvision's ASPP (1x1 conv, three 3x3 atrous convs at rates 6/12/18, image pooling,
  then a 1x1 projection) on layer4.
* ``decoder``: layer1's features through a 1x1 projection (48 channels at width 64), concatenated
  with the 4x-upsampled ASPP output, then two 3x3 convs and a 1x1 classifier; the logits are
  bilinearly upsampled to the input size.

Head widths scale with the backbone width (``width / 64`` of DeepLab's 256 and 48, with floors of
16 and 8). Input: a float [N, C, H, W] batch already normalised (the objective does it).

Fine-tuning follows the paper's reference code (its ``Segmentation/main*.py``): the backbone learns
at ``backbone_lr_factor`` (0.1) times the heads' learning rate -- the model names its parameter groups
in :meth:`DeepLabV3Plus.parameter_lr_factors`, which the training loop reads -- and the backbone's BN
layers update their running statistics with momentum ``backbone_bn_momentum`` (0.01; torch's default
is 0.1). Runs computed before these were the defaults had 1.0 and 0.1: those values keep their hashes
(:data:`cvlth.models.task_models.FORMER_MODEL_DEFAULTS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from cvlth.models.backbones import BackboneSpec, ScaledResNet, build_backbone
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.models.checkpoints.loading import load_into
from cvlth.models.detection import scaled_channels

ATROUS_RATES: tuple[int, int, int] = (6, 12, 18)
_DILATION = {16: (False, False, True), 8: (False, True, True)}


class DeepLabDecoder(nn.Module):
    """Low-level projection + concat + two 3x3 convs + 1x1 classifier (DeepLabV3+'s decoder)."""

    def __init__(self, low_channels: int, low_projected: int, high_channels: int, num_classes: int) -> None:
        super().__init__()
        self.project = _conv_bn_relu(low_channels, low_projected, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(low_projected + high_channels, high_channels, 3),
            _conv_bn_relu(high_channels, high_channels, 3),
        )
        self.classifier = nn.Conv2d(high_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([self.project(low), high], dim=1)))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DeepLabV3Plus(nn.Module):
    """``model(images) -> logits [N, num_classes, H, W]`` at the input resolution."""

    def __init__(
        self,
        backbone: ScaledResNet,
        num_classes: int,
        *,
        atrous_rates: Sequence[int] = ATROUS_RATES,
        head_channels: int = 256,
        low_projected: int = 48,
        backbone_lr_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.backbone_lr_factor = backbone_lr_factor
        spec = backbone.spec
        expansion = spec.architecture.expansion
        backbone.avgpool = nn.Identity()  # unused: no dangling parameters for DDP or the optimizer
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.aspp = ASPP(8 * spec.width * expansion, list(atrous_rates), head_channels)
        self.decoder = DeepLabDecoder(spec.width * expansion, low_projected, head_channels, num_classes)

    def parameter_lr_factors(self) -> dict[str, float]:
        """Learning-rate factor by parameter-name prefix (the rest: 1): the backbone's."""
        return {"backbone.": self.backbone_lr_factor}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        low = b.layer1(x)
        high = self.aspp(b.layer4(b.layer3(b.layer2(low))))
        logits = self.decoder(low, high)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(
    source: ImportedCheckpoint | Mapping[str, torch.Tensor] | None,
    spec: BackboneSpec,
    num_classes: int,
    *,
    seed: int = 0,
    output_stride: int = 16,
    atrous_rates: Sequence[int] = ATROUS_RATES,
    head_channels: int | None = None,
    low_projected: int | None = None,
    backbone_lr_factor: float = 0.1,
    backbone_bn_momentum: float = 0.01,
) -> DeepLabV3Plus:
    """A DeepLabV3+ for ``num_classes`` (background included) from θ_p (``fc`` is not loaded).

    ``source`` is a canonical state_dict or an :class:`ImportedCheckpoint` (``None``: random
    backbone); new tensors (ASPP, decoder) are drawn from ``seed``, independently of the global RNG.
    ``head_channels`` / ``low_projected`` override the scaled ASPP-decoder and low-level widths;
    ``backbone_lr_factor`` scales the backbone's learning rate and ``backbone_bn_momentum`` is its BN
    layers' running-statistics momentum (the reference's 0.1 and 0.01).
    """
    if output_stride not in _DILATION:
        raise ValueError(f"output_stride must be one of {sorted(_DILATION)}, got {output_stride}")
    if not backbone_lr_factor > 0:
        raise ValueError(f"backbone_lr_factor must be > 0, got {backbone_lr_factor}")
    if not 0 < backbone_bn_momentum <= 1:
        raise ValueError(f"backbone_bn_momentum must be in (0, 1], got {backbone_bn_momentum}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = build_backbone(spec, replace_stride_with_dilation=_DILATION[output_stride])
        model = DeepLabV3Plus(
            backbone,
            num_classes,
            atrous_rates=atrous_rates,
            head_channels=head_channels or scaled_channels(256, spec.width, 16),
            low_projected=low_projected or scaled_channels(48, spec.width, 8),
            backbone_lr_factor=backbone_lr_factor,
        )
    for module in backbone.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = backbone_bn_momentum
    if source is not None:
        load_into(model, source, strict=True, skip=("fc.",))
    return model
