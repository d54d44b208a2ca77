"""Adapt a pre-trained backbone to a downstream classification task.

For 32x32 tasks the paper (following its reference code) replaces the ImageNet stem: the 7x7/2 conv
is re-initialised as a 3x3/1 conv (its weights are not loaded), the stem BN *is* loaded, the max-pool
is removed, and ``fc`` is a new head for the task's classes. Every other backbone tensor is θ_p.
Because the stem is re-initialised, the task may also have another number of input channels
(grayscale Fashion-MNIST) than the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from cvlth.errors import CheckpointError
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.architecture import infer_architecture
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.models.checkpoints.loading import load_into


def transfer_model(
    source: ImportedCheckpoint | Mapping[str, torch.Tensor],
    spec: BackboneSpec | None,
    num_classes: int,
    *,
    small_images: bool = True,
    keep_stem: bool = False,
    keep_maxpool: bool = False,
    seed: int = 0,
) -> nn.Module:
    """A classifier for ``num_classes`` initialised from ``source`` (a canonical state_dict).

    ``spec`` is the backbone to build (``None``: the checkpoint's own; its ``in_channels`` may differ
    from the checkpoint's when the stem is re-initialised). With ``small_images`` the stem conv is a
    fresh 3x3/1 conv (``keep_stem=True`` loads the checkpoint's stem instead) and the max-pool is removed
    (unless ``keep_maxpool``); without it the ImageNet stem is loaded as is. New tensors (fc, and the
    stem conv when re-initialised) are drawn from ``seed``, independently of the global RNG.
    """
    state = source.state_dict if isinstance(source, ImportedCheckpoint) else dict(source)
    base = spec or _spec_of(state)
    reinit_stem = small_images and not keep_stem
    target = replace(base, stem="cifar") if reinit_stem else base
    if not reinit_stem:
        _check_stem(state, target)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_backbone(target, num_classes)
    if small_images and not keep_maxpool:
        model.maxpool = nn.Identity()
    skip = ("fc.", "conv1.") if reinit_stem else ("fc.",)
    load_into(model, state, strict=True, skip=skip)
    return model


def _spec_of(state: Mapping[str, torch.Tensor]) -> BackboneSpec:
    info = infer_architecture(state)
    if info.spec is None:
        raise CheckpointError(
            f"cannot build a model for {info.description}", hint="pass spec= with a registered architecture"
        )
    return info.spec


def _check_stem(state: Mapping[str, torch.Tensor], spec: BackboneSpec) -> None:
    stem = state.get("conv1.weight")
    if stem is not None and stem.shape[1] != spec.in_channels:
        raise CheckpointError(
            f"the checkpoint's stem takes {stem.shape[1]} input channels, the task {spec.in_channels}",
            hint="re-initialise the stem (keep_stem=False with small_images) or repeat the image channels",
        )
