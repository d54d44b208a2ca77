"""Pre-trained ResNet checkpoints of every format, read safely, as one canonical backbone state_dict.

Import the modules directly (this package imports nothing); arrows point down the list:

* :mod:`~cvlth.models.checkpoints.sources` -- the formats that can be imported (``CheckpointSource``,
  ``SOURCES``) and the input normalisations a checkpoint can expect (``NORMALIZATION``);
* :mod:`~cvlth.models.checkpoints.reading` -- opening ``.pt``/``.pth``/``.safetensors`` files without
  unpickling arbitrary objects (``read_state_dict``);
* :mod:`~cvlth.models.checkpoints.architecture` -- depth, width, stem and input channels from the
  tensor shapes (``infer_architecture``, ``ArchitectureInfo``);
* :mod:`~cvlth.models.checkpoints.backbone_keys` -- which keys are the backbone, under which wrapper,
  and why every other key is dropped;
* :mod:`~cvlth.models.checkpoints.cvlth_format` -- cvlth-checkpoint/1, the importable weights file
  cvlth writes (``save_checkpoint``, ``CHECKPOINT_FORMAT``);
* :mod:`~cvlth.models.checkpoints.importer` -- ``import_checkpoint``: any format into canonical keys
  with an ``ImportReport`` (what ``cvlth inspect`` prints);
* :mod:`~cvlth.models.checkpoints.loading` -- ``load_into``: the canonical weights into any model that
  holds the ResNet under known wrappers.

The common names are also importable from :mod:`cvlth.models`.
"""
