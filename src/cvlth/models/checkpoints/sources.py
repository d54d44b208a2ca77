"""What a checkpoint can be: the formats :func:`~cvlth.models.checkpoints.importer.import_checkpoint`
reads (the one list of checkpoint sources; run configs take :data:`CheckpointSource`) and the input
normalisations a checkpoint's weights can expect. Imports nothing of cvlth (configs import it)."""

from __future__ import annotations

from typing import Literal, get_args

#: The checkpoint formats ``import_checkpoint`` reads (``auto``: detect it); run configs take this type.
CheckpointSource = Literal["auto", "torchvision", "moco", "simclr", "timm", "cvlth"]
SOURCES: tuple[str, ...] = get_args(CheckpointSource)
NORMALIZATION = {
    "imagenet": "ImageNet mean/std",
    "none": "unnormalised [0, 1] pixels",
    "dataset": "its pre-training set's own per-channel mean/std",
    "custom": "the mean/std its pre-training recipe gives",
}
