"""Backbone features of a torchvision-named ResNet: everything up to the global pool, no ``fc``.

Self-supervised objectives train the backbone through their own heads, so they need the pooled
features, not the classifier's logits. The stages are looked up by their torchvision names
(``conv1, bn1, relu, maxpool, layer1..layer4, avgpool``); a missing ``maxpool`` (CIFAR stems
replace it by ``nn.Identity`` or drop it) or missing later stages are simply skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare network inside a (Distributed)DataParallel wrapper."""
    while isinstance(model, (DataParallel, DistributedDataParallel)):
        model = model.module
    return model


def _pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for name in _STAGES:
        stage = getattr(model, name, None)
        if stage is not None:
            x = stage(x)
    pool = getattr(model, "avgpool", None)
    x = pool(x) if pool is not None else F.adaptive_avg_pool2d(x, 1)
    return torch.flatten(x, 1)


@contextlib.contextmanager
def _forward_replaced(model: nn.Module) -> Iterator[None]:
    """Temporarily make ``model.forward`` return pooled features (an instance attribute)."""
    model.forward = lambda x: _pooled_features(model, x)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.forward


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` images -> ``(N, feature_dim)`` globally pooled backbone features
    (:func:`cvlth.models.backbones.feature_dim`).

    A DDP-wrapped model is still called through the wrapper (with the inner forward swapped for
    the feature path), because DDP only all-reduces gradients of a forward that went through it.
    Its ``fc`` then gets no gradient: freeze it (:func:`freeze_classifier`) before wrapping.
    """
    if isinstance(model, DistributedDataParallel):
        with _forward_replaced(model.module):
            return model(x)
    return _pooled_features(unwrap(model), x)  # DataParallel: runs on the bare module


def freeze_classifier(model: nn.Module) -> None:
    """Stop training ``model.fc``: self-supervised objectives never use it.

    Frozen, it stays out of the optimizer (no weight decay shrinks it) and DDP does not wait for
    a gradient that never comes.
    """
    fc = getattr(unwrap(model), "fc", None)
    if isinstance(fc, nn.Module):
        fc.requires_grad_(False)
