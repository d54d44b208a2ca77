"""The files of a run folder, named in one place (like OpenLTH's ``paths.py``).

A run folder is ``<store>/<kind>/<hash>/``. Every run has:

========================  ======================================================================
``config.yaml``           the run's config (what its hash names)
``result.json``           the result, written last (its presence means the run is done)
``metrics.jsonl``         one JSON line per logged step / evaluation
``.lock``                 held while a process computes the run
``train-state.pt``        the resumable training state (cvlth-train-state/1), deleted when done
``data-identity.json``    a run that reads a dataset's files: what they were when it started
                          (cvlth-data-identity/1, see :mod:`cvlth.runs.recorded_data`)
``tensorboard/``          TensorBoard event files, when the study logs to TensorBoard (not in the
                          integrity record: a log beside the results, not one of them)
========================  ======================================================================

and, by kind:

* ``pretrain`` / ``import``: ``theta_p.pt`` (θ_p, cvlth-checkpoint/1) and ``heads.pt`` (the
  objective's heads, e.g. a projection head);
* ``imp`` / ``baseline``: ``masks/level-XX.safetensors`` (cvlth-mask/1); IMP also
  ``rewind.safetensors`` (cvlth-rewind/1: the weights every round starts from), ``round-XX/`` (one
  training folder per round) and ``heads-latest.pt`` (the heads as the last round left them);
* a training that captures early weights: ``capture_stepN.pt``.

A leaf module: it imports nothing of cvlth.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG = "config.yaml"
RESULT = "result.json"
METRICS = "metrics.jsonl"
LOCK = ".lock"
TRAIN_STATE = "train-state.pt"
LEGACY_TRAIN_STATE = "checkpoint.pt"  # the training state's name before cvlth-train-state/1
THETA_P = "theta_p.pt"
HEADS = "heads.pt"
REWIND = "rewind.safetensors"
LATEST_HEADS = "heads-latest.pt"
MASKS = "masks"
IMP_RECORD = "imp.json"  # what made an IMP folder (cvlth-imp-args/1)
DATA_IDENTITY = "data-identity.json"
#: Beside the kinds' folders in a store: the file lists of recorded data identities, by sha256.
DATA_MANIFESTS = "data-manifests"
TENSORBOARD = "tensorboard"  # beside metrics.jsonl in every training folder (run or IMP round)


def mask_path(folder: str | os.PathLike[str], level: int) -> Path:
    """The mask of IMP / baseline level ``level`` in a finder's run folder."""
    return Path(folder) / MASKS / f"level-{level:02d}.safetensors"


def round_path(folder: str | os.PathLike[str], level: int) -> Path:
    """The training folder of the IMP round that trains with the level-``level`` mask."""
    return Path(folder) / f"round-{level:02d}"


def capture_path(folder: str | os.PathLike[str], step: int) -> Path:
    """Where a training that captures its weights at ``step`` saves them."""
    return Path(folder) / f"capture_step{step}.pt"
