"""Backbones (torchvision ResNets at any width and stem), checkpoint import, transfer adaptation.

>>> from cvlth.models import BackboneSpec, build_backbone, import_checkpoint, transfer_model
>>> imported = import_checkpoint("moco_v2_800ep.pth.tar")          # any supported format
>>> model = transfer_model(imported, None, num_classes=10)         # 32x32 task: new stem + head
"""

from cvlth.models.backbones import ARCHITECTURES, BackboneSpec, build_backbone, feature_dim
from cvlth.models.checkpoints.architecture import infer_architecture
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.models.checkpoints.importer import ImportedCheckpoint, ImportReport, import_checkpoint
from cvlth.models.checkpoints.loading import LoadReport, load_into
from cvlth.models.checkpoints.reading import read_state_dict
from cvlth.models.transfer import transfer_model

__all__ = [
    "ARCHITECTURES",
    "BackboneSpec",
    "ImportReport",
    "ImportedCheckpoint",
    "LoadReport",
    "build_backbone",
    "feature_dim",
    "import_checkpoint",
    "infer_architecture",
    "load_into",
    "read_state_dict",
    "save_checkpoint",
    "transfer_model",
]
