"""cvlth-checkpoint/1: the importable weights file cvlth writes (a pre-training's ``theta_p.pt``).

It is either

* a ``torch.save`` file holding ``{"cvlth": header, "model": state_dict}`` (other top-level entries,
  e.g. ``"epoch"``, are allowed and ignored on import), or
* a safetensors file whose tensors are the state_dict and whose metadata is the header (strings);

``state_dict`` has canonical torchvision keys (no wrappers; ``fc.*`` only for a plain linear head) and
``header`` is ``{"format": "cvlth-checkpoint/1", "arch": "resnet50", "width": 64, "stem": "imagenet",
"in_channels": 3, "normalization": "imagenet" | "none", "source": <objective that produced it>, ...}``
plus free provenance entries (str/int/float). It is not the resumable training state
(``train-state.pt``, :mod:`cvlth.training.train_state`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from cvlth.atomic import atomic_path
from cvlth.errors import CheckpointError
from cvlth.models.backbones import BackboneSpec
from cvlth.models.checkpoints.backbone_keys import select_backbone
from cvlth.models.checkpoints.sources import NORMALIZATION

CHECKPOINT_FORMAT = "cvlth-checkpoint/1"


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    spec: BackboneSpec,
    *,
    normalization: str = "imagenet",
    source: str = "supervised",
    **provenance: str | int | float,
) -> Path:
    """Write a cvlth-checkpoint/1 file atomically (safetensors if ``path`` ends in ``.safetensors``).

    ``state_dict`` may be wrapped (``module.``, ``encoder_q.``, ...): it is stored under canonical keys.
    """
    if normalization not in NORMALIZATION:
        raise CheckpointError(
            f"unknown normalization {normalization!r}", hint=f"use one of {', '.join(NORMALIZATION)}"
        )
    canonical, _, _ = select_backbone(state_dict, Path(path))
    header: dict[str, object] = {
        **provenance,
        "format": CHECKPOINT_FORMAT,
        "arch": spec.arch,
        "width": spec.width,
        "stem": spec.stem,
        "in_channels": spec.in_channels,
        "normalization": normalization,
        "source": source,
    }
    target = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in canonical.items()}
    with atomic_path(target) as tmp:
        if target.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={k: str(v) for k, v in header.items()})
        else:
            torch.save({"cvlth": header, "model": tensors}, tmp)
    return target


def spec_from_header(header: Mapping[str, object]) -> BackboneSpec:
    """The :class:`BackboneSpec` stored in a cvlth-checkpoint/1 header."""
    try:
        return BackboneSpec(
            str(header["arch"]), int(header["width"]), str(header["stem"]), int(header["in_channels"])
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cvlth checkpoint header lacks a valid architecture: {exc}") from exc


def cvlth_header(obj: object, metadata: Mapping[str, str]) -> dict[str, object] | None:
    """The cvlth-checkpoint/1 header of a loaded file (torch ``"cvlth"`` entry or safetensors
    metadata), None for a file cvlth did not write; another cvlth format tag is refused."""
    if metadata.get("format") == CHECKPOINT_FORMAT:
        return dict(metadata)
    if isinstance(obj, Mapping) and isinstance(obj.get("cvlth"), Mapping):
        header = dict(obj["cvlth"])
        if header.get("format") != CHECKPOINT_FORMAT:
            # A newer cvlth wrote it: guessing its layout could load the wrong tensors silently.
            raise CheckpointError(
                f"cvlth checkpoint format {header.get('format')!r} is not supported (expected {CHECKPOINT_FORMAT!r})",
                hint="upgrade cvlth",
            )
        return header
    return None
