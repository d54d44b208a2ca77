"""What the tensor shapes of a canonical ResNet state_dict say about the network: depth from the
block counts and block type, width from ``conv1``'s out-channels, stem from its kernel."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from cvlth.errors import CheckpointError
from cvlth.models.backbones import BackboneSpec, architecture_for, build_backbone


@dataclass(frozen=True)
class ArchitectureInfo:
    """What the tensor shapes of a canonical ResNet state_dict say about the network."""

    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]  # blocks per stage
    width: int  # conv1 out-channels
    stem: str  # "imagenet" (7x7) | "cifar" (3x3)
    in_channels: int
    fc_classes: int | None  # out-features of a plain linear fc, if any
    spec: BackboneSpec | None  # None when block counts match no registered depth

    @property
    def description(self) -> str:
        name = self.spec.arch if self.spec else "unknown ResNet depth"
        blocks = "-".join(map(str, self.layers))
        return (
            f"{name} ({self.block} blocks {blocks}), width {self.width}, {self.stem} stem, "
            f"{self.in_channels} input channel{'s' if self.in_channels != 1 else ''}"
        )


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> ArchitectureInfo:
    """Depth from block counts and block type, width from ``conv1``'s out-channels, stem from its kernel."""
    stem = state_dict.get("conv1.weight")
    if not isinstance(stem, torch.Tensor) or stem.ndim != 4:
        raise CheckpointError("no stem conv (conv1.weight, 4-d) found: not a torchvision-style ResNet")
    layers = tuple(_block_count(state_dict, stage) for stage in range(1, 5))
    if 0 in layers:
        raise CheckpointError(
            f"stage layer{layers.index(0) + 1} has no blocks (blocks per stage {layers}): "
            "not a complete torchvision-style ResNet"
        )
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    kernel = stem.shape[-1]
    stem_kind = {7: "imagenet", 3: "cifar"}.get(kernel)
    if stem_kind is None:
        raise CheckpointError(
            f"stem conv1 has a {kernel}x{kernel} kernel; cvlth knows 7x7 (imagenet) and 3x3 (cifar)"
        )
    fc = state_dict.get("fc.weight")
    fc_classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.ndim == 2 else None
    arch = architecture_for(block, layers)
    width, in_channels = int(stem.shape[0]), int(stem.shape[1])
    spec = BackboneSpec(arch.name, width, stem_kind, in_channels) if arch else None
    return ArchitectureInfo(block, layers, width, stem_kind, in_channels, fc_classes, spec)


def _block_count(state_dict: Mapping[str, object], stage: int) -> int:
    pattern = re.compile(rf"^layer{stage}\.(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def expected_shapes(spec: BackboneSpec, num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``build_backbone(spec)``'s state_dict (built on the meta device: no memory, fast)."""
    with torch.device("meta"):
        model = build_backbone(spec, num_classes or 1)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if num_classes is None:
        shapes = {k: s for k, s in shapes.items() if not k.startswith("fc.")}
    return shapes
