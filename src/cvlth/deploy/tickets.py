"""A ticket as a model to run: a checkpoint's classifier with a mask applied (pruned weights exactly 0)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cvlth.errors import CheckpointError
from cvlth.masks import Mask, load_mask
from cvlth.models.backbones import build_backbone
from cvlth.models.checkpoints.importer import ImportedCheckpoint, import_checkpoint
from cvlth.models.checkpoints.loading import load_into

#: Classes of a classifier whose checkpoint has no ``fc`` (a self-supervised backbone): ImageNet's.
DEFAULT_CLASSES = 1000


def ticket_model(
    checkpoint: str | Path, mask: str | Path | Mask | None = None, source: str = "auto"
) -> nn.Module:
    """The classifier of ``checkpoint`` (any format cvlth imports) in eval mode, with ``mask`` applied:
    every pruned weight is exactly zero. A checkpoint without ``fc`` (SimCLR, MoCo) gets a new
    1000-class head drawn from seed 0 (its latency is what matters)."""
    imported = import_checkpoint(checkpoint, source)
    model = classifier_of(imported, str(checkpoint))
    if mask is not None:
        loaded = mask if isinstance(mask, Mask) else load_mask(mask)[0]
        with torch.no_grad():
            loaded.apply(model)  # validates first: a mask of another architecture is refused by name
    return model.eval()


def classifier_of(imported: ImportedCheckpoint, name: str) -> nn.Module:
    spec = imported.spec
    if spec is None:
        raise CheckpointError(
            f"{name}: {imported.report.architecture.description} is not an architecture cvlth builds",
            hint="cvlth exports the ResNets of its registry (cvlth inspect shows what a file holds)",
        )
    fc = imported.state_dict.get("fc.weight")
    classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.ndim == 2 else DEFAULT_CLASSES
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_backbone(spec, classes)
    load_into(model, imported, strict=True, skip=() if fc is not None else ("fc.",))
    return model
