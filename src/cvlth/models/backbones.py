"""torchvision ResNets with a width multiplier, a stem choice and any number of input channels.

The models are torchvision's :class:`~torchvision.models.ResNet` (a subclass that only changes how
``__init__`` sizes the layers), so every module keeps torchvision's name (``conv1``, ``bn1``,
``layer3.1.conv2``, ``layer2.0.downsample.0``, ``fc``) and a mask or checkpoint keyed by those names
fits any width, stem or wrapper (detection, segmentation, MoCo) built on the same depth.

* ``width`` is the channel count of the stem and of ``layer1``'s 3x3 convs (64 in torchvision);
  the four stages have ``width, 2*width, 4*width, 8*width`` planes, times 4 for bottlenecks.
* ``stem="imagenet"`` is torchvision's 7x7/2 conv + 3x3/2 max-pool; ``stem="cifar"`` is a 3x3/1
  conv and no max-pool (``maxpool`` is an :class:`~torch.nn.Identity`, so names do not move).

>>> model = build_backbone(BackboneSpec("resnet18", width=16, stem="cifar"), num_classes=10)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from cvlth.errors import ConfigError
from cvlth.registry import Registry

STEMS: tuple[str, ...] = ("imagenet", "cifar")


@dataclass(frozen=True)
class Architecture:
    """One ResNet depth: its block type and the number of blocks in each of the four stages."""

    name: str
    block: type[BasicBlock] | type[Bottleneck]
    layers: tuple[int, int, int, int]

    @property
    def expansion(self) -> int:
        return self.block.expansion

    @property
    def block_kind(self) -> str:
        return "bottleneck" if self.block is Bottleneck else "basic"


#: Every ResNet depth by name (``backbone.arch``); adding one is one ``ARCHITECTURES.add``.
ARCHITECTURES: Registry[Architecture] = Registry("architecture", ConfigError)
for _arch in (
    Architecture("resnet18", BasicBlock, (2, 2, 2, 2)),
    Architecture("resnet34", BasicBlock, (3, 4, 6, 3)),
    Architecture("resnet50", Bottleneck, (3, 4, 6, 3)),
    Architecture("resnet101", Bottleneck, (3, 4, 23, 3)),
    Architecture("resnet152", Bottleneck, (3, 8, 36, 3)),
):
    ARCHITECTURES.add(_arch.name, _arch)


def architecture_for(block_kind: str, layers: Sequence[int]) -> Architecture | None:
    """The registered architecture with this block type and these block counts, if any."""
    for arch in ARCHITECTURES.values():
        if arch.block_kind == block_kind and arch.layers == tuple(layers):
            return arch
    return None


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone to build: depth (a key of :data:`ARCHITECTURES`), width, stem, input channels."""

    arch: str = "resnet50"
    width: int = 64
    stem: str = "imagenet"
    in_channels: int = 3

    def __post_init__(self) -> None:
        ARCHITECTURES.lookup(self.arch)
        if self.stem not in STEMS:
            raise ConfigError(f"unknown stem {self.stem!r}", hint=f"choose one of {', '.join(STEMS)}")
        if self.width < 1 or self.in_channels < 1:
            raise ConfigError(
                f"width and in_channels must be positive, got width={self.width}, "
                f"in_channels={self.in_channels}"
            )

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def label(self) -> str:
        """A short readable name, e.g. ``resnet50`` or ``resnet18-w16-cifar-1ch``."""
        parts = [self.arch]
        if self.width != 64:
            parts.append(f"w{self.width}")
        if self.stem != "imagenet":
            parts.append(self.stem)
        if self.in_channels != 3:
            parts.append(f"{self.in_channels}ch")
        return "-".join(parts)


def feature_dim(backbone: BackboneSpec | nn.Module) -> int:
    """Channels of the pooled feature that ``fc`` reads (2048 for a torchvision ResNet-50), from a
    spec or from a built ResNet (inside any (Distributed)DataParallel wrapper)."""
    if isinstance(backbone, BackboneSpec):
        return 8 * backbone.width * backbone.architecture.expansion
    while isinstance(backbone, nn.DataParallel | nn.parallel.DistributedDataParallel):
        backbone = backbone.module
    fc = getattr(backbone, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError("feature_dim needs a model whose `fc` is an nn.Linear; pass feature_dim explicitly")
    return fc.in_features


class ScaledResNet(ResNet):
    """torchvision's ResNet with every stage's planes scaled by ``width / 64`` and a choice of stem.

    Only ``__init__`` differs: ``forward``, ``_make_layer`` and the blocks are torchvision's own, and
    torchvision's ``__init__`` is not called because it would first build the full-width layers.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        num_classes: int = 1000,
        norm_layer: Callable[..., nn.Module] | None = None,
        replace_stride_with_dilation: Sequence[bool] | None = None,
    ) -> None:
        nn.Module.__init__(self)
        arch = spec.architecture
        dilate = list(replace_stride_with_dilation or (False, False, False))
        if len(dilate) != 3:
            raise ConfigError(f"replace_stride_with_dilation needs 3 entries, got {dilate}")
        self.spec = spec
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes = spec.width
        self.dilation = 1
        self.groups = 1
        # Bottleneck's inner width is planes * base_width / 64: keep 64 so it equals ``planes``.
        self.base_width = 64
        self.conv1, self.maxpool = _stem(spec)
        self.bn1 = self._norm_layer(spec.width)
        self.relu = nn.ReLU(inplace=True)
        w = spec.width
        # torchvision's BasicBlock refuses dilation: build it strided, then trade strides afterwards.
        native = [flag and arch.block is Bottleneck for flag in dilate]
        self.layer1 = self._make_layer(arch.block, w, arch.layers[0])
        self.layer2 = self._make_layer(arch.block, 2 * w, arch.layers[1], stride=2, dilate=native[0])
        self.layer3 = self._make_layer(arch.block, 4 * w, arch.layers[2], stride=2, dilate=native[1])
        self.layer4 = self._make_layer(arch.block, 8 * w, arch.layers[3], stride=2, dilate=native[2])
        if arch.block is BasicBlock and any(dilate):
            _dilate_basic_stages((self.layer2, self.layer3, self.layer4), dilate)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(feature_dim(spec), num_classes)
        init_like_torchvision(self)


def _dilate_basic_stages(stages: Sequence[nn.Sequential], dilate: Sequence[bool]) -> None:
    """Replace each flagged stage's stride 2 by dilation, as torchvision does for Bottleneck stages.

    The first block of a stage keeps the previous dilation, later blocks use the new one; only
    stride, dilation and padding change, so parameter shapes and names are those of the plain model.
    """
    current = 1
    for stage, flag in zip(stages, dilate, strict=True):
        previous = current
        if flag:
            current *= 2
        for index, block in enumerate(stage):
            rate = previous if index == 0 else current
            if flag:
                block.conv1.stride = (1, 1)
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
            for conv in (block.conv1, block.conv2):
                conv.dilation = (rate, rate)
                conv.padding = (rate, rate)


def _stem(spec: BackboneSpec) -> tuple[nn.Conv2d, nn.Module]:
    if spec.stem == "cifar":
        return nn.Conv2d(spec.in_channels, spec.width, 3, stride=1, padding=1, bias=False), nn.Identity()
    conv = nn.Conv2d(spec.in_channels, spec.width, 7, stride=2, padding=3, bias=False)
    return conv, nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def init_like_torchvision(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


def build_backbone(
    spec: BackboneSpec,
    num_classes: int = 1000,
    *,
    norm_layer: Callable[..., nn.Module] | None = None,
    replace_stride_with_dilation: Sequence[bool] | None = None,
) -> ScaledResNet:
    """A randomly initialised ResNet whose state_dict keys are torchvision's; ``model.fc`` is the head.

    ``norm_layer`` (e.g. torchvision's ``FrozenBatchNorm2d`` for detection) and
    ``replace_stride_with_dilation`` (DeepLab's output stride) are passed through as in torchvision.
    """
    return ScaledResNet(spec, num_classes, norm_layer, replace_stride_with_dilation)
