"""Which tensors of a state_dict are the ResNet backbone: canonical torchvision keys under one
wrapper (``encoder_q.`` first when a file holds several copies), every other key dropped with the
reason, a MoCo v2 / SimCLR projection head taken out, and missing BN counters filled."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from cvlth.errors import CheckpointError
from cvlth.scope import WRAPPER_PREFIXES, strip_wrappers, wrapper_of

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
#: A canonical key of a torchvision ResNet backbone (with a plain linear ``fc``).
BACKBONE_KEY = re.compile(
    rf"^(conv1\.weight|bn1\.{_BN}|fc\.(weight|bias)"
    rf"|layer[1-4]\.\d+\.(conv[1-3]\.weight|bn[1-3]\.{_BN}|downsample\.0\.weight|downsample\.1\.{_BN}))$"
)
# Which copy of the backbone wins when a file holds several (MoCo's two encoders).
_WRAPPER_PREFERENCE: tuple[str, ...] = (
    "encoder_q.",
    "",
    "encoder.",
    "backbone.body.",
    "backbone.",
    "encoder_k.",
)
_PROJECTION_KEY = re.compile(r"^fc\.(\d+)\.(weight|bias)$")
_PROJECTION_LAYOUT = frozenset({"0.weight", "0.bias", "2.weight", "2.bias"})


def select_backbone(
    state: Mapping[str, object], file: Path
) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """Canonical backbone tensors of one wrapper (``encoder_q`` first), everything else with a reason."""
    copies: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    dropped: dict[str, str] = {}
    for key, value in state.items():
        canonical = strip_wrappers(key)
        wrapper = wrapper_of(key).replace("module.", "")
        if not isinstance(value, torch.Tensor):
            dropped[key] = "not a tensor"
        elif BACKBONE_KEY.match(canonical):
            copies.setdefault(wrapper, {})[canonical] = (key, value)
        else:
            dropped[key] = _drop_reason(canonical, wrapper)
    if not copies:
        raise CheckpointError(_not_a_resnet_message(state, file), hint=_prefix_hint(state))
    chosen = _choose_wrapper(copies, file)
    for wrapper, entries in copies.items():
        if wrapper != chosen:
            reason = (
                "MoCo key encoder (a momentum copy of encoder_q)"
                if wrapper == "encoder_k."
                else f"another copy of the backbone (under {wrapper!r})"
            )
            dropped.update(dict.fromkeys((key for key, _ in entries.values()), reason))
    return {name: tensor for name, (_, tensor) in copies[chosen].items()}, dropped, chosen


def _drop_reason(canonical: str, wrapper: str) -> str:
    if wrapper == "encoder_k.":
        return "MoCo key encoder (a momentum copy of encoder_q)"
    if canonical in ("queue", "queue_ptr"):
        return "MoCo queue of negative keys"
    if re.match(r"^fc\.\d+\.", canonical):
        return "MLP projection head (MoCo v2 / SimCLR style), not a classifier"
    if wrapper == "backbone." and canonical.startswith("fpn."):
        return "detection FPN"
    if wrapper == "" and canonical.split(".")[0] in ("rpn", "roi_heads", "classifier", "aux_classifier"):
        return "detection or segmentation head"
    return "not part of a ResNet backbone"


def _choose_wrapper(copies: Mapping[str, object], file: Path) -> str:
    for wrapper in _WRAPPER_PREFERENCE:
        if wrapper in copies:
            return wrapper
    raise CheckpointError(f"{file} holds ResNet weights under unexpected prefixes {sorted(copies)}")


def _not_a_resnet_message(state: Mapping[str, object], file: Path) -> str:
    examples = ", ".join(list(state)[:5])
    return f"{file} is not a ResNet checkpoint: none of its {len(state)} keys is a ResNet weight (e.g. {examples})"


def _prefix_hint(state: Mapping[str, object]) -> str:
    for key in state:
        if key.endswith("layer1.0.conv1.weight") and key != "layer1.0.conv1.weight":
            prefix = key[: -len("layer1.0.conv1.weight")]
            return (
                f"its ResNet keys carry the unknown prefix {prefix!r}; known prefixes are "
                f"{', '.join(WRAPPER_PREFIXES)} — strip it and re-save"
            )
    return "cvlth imports torchvision-style ResNets (conv1, bn1, layer1..layer4, fc)"


def projection_head(
    state: Mapping[str, object], wrapper: str, dropped: dict[str, str]
) -> dict[str, torch.Tensor]:
    """The chosen copy's MLP head (``fc.0``/``fc.2``: Linear-ReLU-Linear), taken out of ``dropped``.
    A head of another layout stays dropped."""
    found: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = _PROJECTION_KEY.match(strip_wrappers(key))
        if match and isinstance(value, torch.Tensor) and wrapper_of(key).replace("module.", "") == wrapper:
            found[f"{match[1]}.{match[2]}"] = (key, value)
    if set(found) != _PROJECTION_LAYOUT:
        return {}
    for key, _ in found.values():
        dropped.pop(key, None)
    return {name: value for name, (_, value) in found.items()}


def fill_num_batches_tracked(state: dict[str, torch.Tensor]) -> list[str]:
    """timm and FrozenBatchNorm state_dicts lack ``num_batches_tracked``: add 0 so every format matches."""
    filled = []
    for key in [k for k in state if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        if counter not in state:
            state[counter] = torch.tensor(0, dtype=torch.long)
            filled.append(counter)
    return sorted(filled)
