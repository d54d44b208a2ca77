"""Import: any supported checkpoint file into one canonical backbone state_dict and a report.

:func:`import_checkpoint` recognises

==============================  =================================================================
format                          on disk
==============================  =================================================================
``torchvision``                 a plain torchvision state_dict (``conv1.weight``, ``layer1.0.conv1.weight``,
                                ``fc.weight``), possibly under ``{"state_dict": ...}`` / ``{"model": ...}``
                                and ``module.`` (DataParallel)
``moco``                        MoCo v1/v2: ``module.encoder_q.*`` (+ ``module.encoder_k.*``, ``module.queue``,
                                ``module.queue_ptr`` in training checkpoints); the MLP head ``fc.0``/``fc.2``
                                is dropped, encoder_q is kept, everything else is dropped and reported
``simclr``                      SimCLR v1 converted to PyTorch: torchvision keys with a 1000-class linear-eval
                                ``fc``; the weights expect *unnormalised* input. The key layout equals
                                torchvision's, so say ``source="simclr"`` (or store ``simclr`` in metadata)
``timm``                        timm ResNets (torchvision names; released weights lack ``num_batches_tracked``,
                                which is filled with 0 and reported)
``torchvision-detection`` /     a whole Faster R-CNN (``backbone.body.*``) or DeepLab/FCN (``backbone.*``)
``torchvision-segmentation``    model: the ResNet backbone is kept, FPN and heads are dropped
``cvlth``                       cvlth's own cvlth-checkpoint/1 (:mod:`~cvlth.models.checkpoints.cvlth_format`)
==============================  =================================================================

The result is an :class:`ImportedCheckpoint`: the canonical state_dict and an :class:`ImportReport`
(format, architecture inferred from the tensor shapes, loaded / dropped / missing / mis-shaped keys,
expected input normalisation) — what ``cvlth inspect`` prints.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cvlth.errors import CheckpointError
from cvlth.models.backbones import BackboneSpec
from cvlth.models.checkpoints.architecture import ArchitectureInfo, expected_shapes, infer_architecture
from cvlth.models.checkpoints.backbone_keys import fill_num_batches_tracked, projection_head, select_backbone
from cvlth.models.checkpoints.cvlth_format import CHECKPOINT_FORMAT, cvlth_header, spec_from_header
from cvlth.models.checkpoints.reading import read_object, unwrap
from cvlth.models.checkpoints.sources import SOURCES
from cvlth.scope import strip_wrappers

# The format a file is when its backbone sits under this wrapper.
_WRAPPER_FORMAT = {
    "encoder_q.": "moco",
    "encoder_k.": "moco",
    "backbone.body.": "torchvision-detection",
    "backbone.": "torchvision-segmentation",
}


@dataclass
class ImportReport:
    """What :func:`import_checkpoint` found, kept and dropped."""

    path: str
    format: str
    architecture: ArchitectureInfo
    loaded: list[str]  # canonical keys of the imported state_dict
    dropped: dict[str, str]  # key as stored -> why it was not imported
    missing: list[str]  # keys the inferred architecture has and the file lacks
    mis_shaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # key -> (in file, expected)
    filled: list[str]  # num_batches_tracked buffers absent from the file, set to 0
    normalization: str  # "imagenet" | "none" (see NORMALIZATION)
    head: str  # what happened to the classifier / projection head
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def spec(self) -> BackboneSpec | None:
        return self.architecture.spec

    @property
    def has_fc(self) -> bool:
        return self.architecture.fc_classes is not None

    def incomplete(self) -> str | None:
        """What the file lacks of its architecture (missing or mis-shaped tensors), or None when it is
        complete: ``"1 missing tensor(s) (e.g. layer2.0.conv1.weight)"``."""
        problems = [f"{len(self.missing)} missing"] if self.missing else []
        problems += [f"{len(self.mis_shaped)} mis-shaped"] if self.mis_shaped else []
        if not problems:
            return None
        example = (self.missing or list(self.mis_shaped))[0]
        return f"{' and '.join(problems)} tensor(s) (e.g. {example})"

    def dropped_by_reason(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key, reason in self.dropped.items():
            groups.setdefault(reason, []).append(key)
        return groups


@dataclass
class ImportedCheckpoint:
    """A canonical backbone state_dict (torchvision keys; ``fc.*`` only for a plain linear head) and its report."""

    state_dict: dict[str, torch.Tensor]
    report: ImportReport
    #: A MoCo v2 / SimCLR MLP projection head (``fc.0``, ``fc.2`` of the chosen backbone copy) as
    #: ``nn.Sequential(Linear, ReLU, Linear)`` keys (``0.weight`` ...); empty when the file has none.
    projection_head: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def spec(self) -> BackboneSpec | None:
        return self.report.spec


def import_checkpoint(path: str | os.PathLike[str], source: str = "auto") -> ImportedCheckpoint:
    """Read any supported checkpoint (see the module docstring) into canonical torchvision keys.

    ``source`` is ``auto`` or a format name; it is needed for SimCLR (same keys as torchvision, other
    input normalisation) and labels timm files; a hint that contradicts the file's layout is an error.
    """
    if source not in SOURCES:
        raise CheckpointError(
            f"unknown checkpoint source {source!r}", hint=f"choose one of {', '.join(SOURCES)}"
        )
    file = Path(path)
    obj, metadata = read_object(file)
    header = cvlth_header(obj, metadata)
    state, extras = unwrap(obj, file)
    kept, dropped, wrapper = select_backbone(state, file)
    projection = projection_head(state, wrapper, dropped)
    _refuse_unusable({**kept, **projection}, file)
    _refuse_non_finite({**kept, **projection}, file)
    filled = fill_num_batches_tracked(kept)
    architecture = _infer_or_explain(kept, state, file)
    fmt = _decide_format(source, header, wrapper, extras, metadata, file)
    head = _describe_head(state, architecture, fmt, projection)
    expected = expected_shapes(architecture.spec, architecture.fc_classes) if architecture.spec else {}
    report = ImportReport(
        path=str(file),
        format=fmt,
        architecture=architecture,
        loaded=sorted(kept),
        dropped=dropped,
        missing=sorted(set(expected) - set(kept)),
        mis_shaped={
            k: (tuple(kept[k].shape), expected[k])
            for k in sorted(set(expected) & set(kept))
            if tuple(kept[k].shape) != expected[k]
        },
        filled=filled,
        normalization=_normalization(fmt, header),
        head=head,
        metadata={str(k): str(v) for k, v in (header or metadata).items()},
        notes=_notes(fmt, extras, architecture) + _header_notes(header, architecture),
    )
    return ImportedCheckpoint(kept, report, projection)


#: The dtypes weights, biases and BN statistics are trained, pruned and transferred in. Anything else
#: would be cast silently (complex loses its imaginary part, bool and int8 weights become 0/1 or
#: small integers) or fails in the first kernel that does not support it (fp8, sparse, quantized).
REAL_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_COUNTER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, *REAL_FLOAT_DTYPES)


def _unusable(name: str, tensor: torch.Tensor) -> str | None:
    """Why ``tensor`` cannot be used as weights (its kind or dtype), or None."""
    if tensor.is_nested:
        return "a nested tensor"
    if tensor.is_quantized:
        return f"a quantized tensor ({tensor.dtype})"
    if tensor.layout != torch.strided:
        return f"a sparse tensor ({tensor.layout})"
    allowed = _COUNTER_DTYPES if name.endswith("num_batches_tracked") else REAL_FLOAT_DTYPES
    if tensor.dtype not in allowed:
        return f"{tensor.dtype}, not a real floating-point dtype (float16, bfloat16, float32, float64)"
    return None


def _refuse_unusable(state: Mapping[str, torch.Tensor], file: Path) -> None:
    """Every kept tensor is a dense tensor of a real floating-point dtype (BN counters: a number)."""
    bad = {k: why for k, v in state.items() if (why := _unusable(k, v)) is not None}
    if bad:
        name, why = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{file}: tensor {name} is {why}{more}",
            hint="re-save the weights as dense float32 tensors (t.dequantize(), t.to_dense(), t.float())",
        )


def _refuse_non_finite(state: Mapping[str, torch.Tensor], file: Path) -> None:
    """NaN/Inf weights would pass silently into masks (magnitude of NaN) and training."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(
            f"{file}: {len(bad)} tensor(s) hold NaN or Inf values: {', '.join(bad[:5])}{more}",
            hint="the checkpoint is corrupted or was saved after training diverged; use an earlier one",
        )


def _infer_or_explain(
    kept: Mapping[str, torch.Tensor], state: Mapping[str, object], file: Path
) -> ArchitectureInfo:
    if "conv1.0.weight" in {strip_wrappers(k) for k in state}:
        raise CheckpointError(
            f"{file} has a deep stem (conv1.0/conv1.1/...: timm ResNet-C/D, e.g. resnet50d)",
            hint="cvlth supports torchvision-style ResNets with a single stem conv (timm resnet18..152)",
        )
    try:
        return infer_architecture(kept)
    except CheckpointError as error:
        raise CheckpointError(f"{file}: {error.message}", hint=error.hint) from error


def _decide_format(
    source: str,
    header: Mapping[str, object] | None,
    wrapper: str,
    extras: Mapping[str, object],
    metadata: Mapping[str, str],
    file: Path,
) -> str:
    if header is not None:
        detected = "cvlth"
    elif wrapper in _WRAPPER_FORMAT:
        detected = _WRAPPER_FORMAT[wrapper]
    elif _mentions_simclr(extras) or _mentions_simclr(metadata):
        detected = "simclr"
    else:
        detected = "torchvision"
    if source == "auto":
        return detected
    structural = detected in ("cvlth", "moco") or detected.startswith("torchvision-")
    if source == "cvlth" and detected != "cvlth":
        raise CheckpointError(
            f"{file} is not a {CHECKPOINT_FORMAT} file (no 'cvlth' header)", hint="use --source auto"
        )
    if structural and source != detected:
        raise CheckpointError(
            f"{file} looks like a {detected} checkpoint ({wrapper or 'cvlth header'} keys) but source "
            f"{source!r} was given",
            hint=f"use --source {detected if detected in SOURCES else 'auto'} or --source auto",
        )
    return source


def _header_notes(header: Mapping[str, object] | None, architecture: ArchitectureInfo) -> list[str]:
    if header is None:
        return []
    stored = spec_from_header(header)
    if stored != architecture.spec:
        return [f"header says {stored.label} but the tensors are {architecture.description}; the tensors win"]
    return []


def _mentions_simclr(entries: Mapping[str, object]) -> bool:
    return any(isinstance(v, str) and "simclr" in v.lower() for v in entries.values())


def _normalization(fmt: str, header: Mapping[str, object] | None) -> str:
    if header is not None:
        return str(header.get("normalization", "imagenet"))
    return "none" if fmt == "simclr" else "imagenet"


def _describe_head(
    state: Mapping[str, object],
    architecture: ArchitectureInfo,
    fmt: str,
    projection: Mapping[str, torch.Tensor],
) -> str:
    if projection:
        sizes = (
            projection["0.weight"].shape[1],
            projection["0.weight"].shape[0],
            projection["2.weight"].shape[0],
        )
        return (
            "MLP projection head fc.0/fc.2 ({}→{}→{}) kept as the objective's projection head "
            "(MoCo: query and key heads; SimCLR: projection), rewound with the backbone".format(*sizes)
        )
    if any(re.match(r"^fc\.\d+\.", strip_wrappers(k)) for k in state):
        return "MLP projection head (fc.0/fc.2) dropped"
    if architecture.fc_classes is None:
        return "none (backbone only)"
    role = "projection head (MoCo v1)" if fmt == "moco" else "classifier"
    return f"linear fc with {architecture.fc_classes} outputs kept as fc.* ({role})"


def _notes(fmt: str, extras: Mapping[str, object], architecture: ArchitectureInfo) -> list[str]:
    notes = []
    ignored = sorted(str(k) for k in extras if k != "cvlth")
    if ignored:
        notes.append(f"top-level entries ignored: {', '.join(ignored)}")
    if fmt == "simclr":
        notes.append("SimCLR v1 weights expect unnormalised [0, 1] input: do not apply ImageNet mean/std")
    if architecture.spec is None:
        notes.append(f"block counts {architecture.layers} match no registered depth (resnet18..resnet152)")
    if architecture.stem == "cifar":
        notes.append("3x3 stem: a CIFAR-style network (max-pool absent by convention)")
    return notes
