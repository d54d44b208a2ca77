"""Every pre-trained ResNet checkpoint format, read safely, into one canonical backbone state_dict.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors, never as arbitrary pickles.
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
``cvlth``                       cvlth's own checkpoint, see below
==============================  =================================================================

**cvlth-checkpoint/1** (written by :func:`save_checkpoint`) is either

* a ``torch.save`` file holding ``{"cvlth": header, "model": state_dict}`` (other top-level entries,
  e.g. ``"epoch"``, are allowed and ignored on import), or
* a safetensors file whose tensors are the state_dict and whose metadata is the header (strings);

``state_dict`` has canonical torchvision keys (no wrappers; ``fc.*`` only for a plain linear head) and
``header`` is ``{"format": "cvlth-checkpoint/1", "arch": "resnet50", "width": 64, "stem": "imagenet",
"in_channels": 3, "normalization": "imagenet" | "none", "source": <objective that produced it>, ...}``
plus free provenance entries (str/int/float).

The result is an :class:`ImportedCheckpoint`: the canonical state_dict and an :class:`ImportReport`
(format, architecture inferred from the tensor shapes, loaded / dropped / missing / mis-shaped keys,
expected input normalisation). :func:`load_into` copies it into any model that holds the ResNet under
known wrappers, and explains a mismatch (wrong depth, width, stem, ...) as a :class:`CheckpointError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from cvlth.atomic import atomic_path
from cvlth.errors import CheckpointError
from cvlth.models.backbones import BackboneSpec, architecture_for, build_backbone
from cvlth.scope import WRAPPER_PREFIXES, strip_wrappers, wrapper_of

CHECKPOINT_FORMAT = "cvlth-checkpoint/1"
#: The checkpoint formats ``import_checkpoint`` reads (``auto``: detect it); run configs take this type.
CheckpointSource = Literal["auto", "torchvision", "moco", "simclr", "timm", "cvlth"]
SOURCES: tuple[str, ...] = get_args(CheckpointSource)
NORMALIZATION = {
    "imagenet": "ImageNet mean/std",
    "none": "unnormalised [0, 1] pixels",
    "dataset": "its pre-training set's own per-channel mean/std",
    "custom": "the mean/std its pre-training recipe gives",
}

_BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_BACKBONE_KEY = re.compile(
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
_WRAPPER_FORMAT = {
    "encoder_q.": "moco",
    "encoder_k.": "moco",
    "backbone.body.": "torchvision-detection",
    "backbone.": "torchvision-segmentation",
}


# --- reading files ------------------------------------------------------------------------------


def _sniff(file: Path) -> str:
    """``zip`` / ``pickle`` (torch.save, new and legacy) / ``safetensors`` / ``text`` / ``unknown``."""
    with open(file, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < file.stat().st_size:
        return "safetensors"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown"
    return "text"


def _read_object(path: str | os.PathLike[str]) -> tuple[object, dict[str, str]]:
    """The loaded object and safetensors metadata (``{}`` for torch files); every failure is a CheckpointError."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint not found: {file}", hint="check the path")
    if file.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {file} is empty (0 bytes)", hint="was the download or save interrupted?"
        )
    kind = _sniff(file)
    if kind == "safetensors" or (kind not in ("zip", "pickle") and file.suffix == ".safetensors"):
        return _read_safetensors(file)
    if kind == "text":
        with open(file, "rb") as handle:
            start = handle.read(40).decode("utf-8", "replace").splitlines()[0]
        raise CheckpointError(
            f"{file} is a text file (starts with {start!r}), not a checkpoint",
            hint="pass a .pt/.pth file written by torch.save or a .safetensors file",
        )
    if kind == "unknown":
        raise CheckpointError(
            f"{file} is neither a PyTorch checkpoint nor a safetensors file (unrecognised header)",
            hint="pass a .pt/.pth file written by torch.save or a .safetensors file",
        )
    return _read_torch(file), {}


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open  # lazy (no cycle): only for .safetensors files

    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not iterable)
    except Exception as exc:  # safetensors has its own error types for truncation and garbage
        raise CheckpointError(
            f"{file} is not a readable safetensors file (truncated or corrupted?): {exc}",
            hint="re-download or re-save the checkpoint",
        ) from exc
    return tensors, metadata


def _read_torch(file: Path) -> object:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        refused = re.search(r"GLOBAL ([\w.]+)", text)
        if refused or "Weights only load failed" in text:
            what = refused.group(1) if refused else "an object that is not a tensor or plain container"
            raise CheckpointError(
                f"{file} contains {what}, which cvlth refuses to unpickle (torch.load weights_only=True)",
                hint="re-save only the tensors, e.g. torch.save(model.state_dict(), path); "
                "cvlth never unpickles arbitrary objects",
            ) from exc
        first_line = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(
            f"{file} could not be read as a PyTorch checkpoint (truncated or corrupted?): {first_line}",
            hint="re-download or re-save the checkpoint",
        ) from exc


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: object, file: Path) -> tuple[dict[str, object], dict[str, object]]:
    """(state_dict, top-level entries beside it): ``{"state_dict": …}``, ``{"model": …}`` or a bare dict."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{file} holds a {type(obj).__name__}, not a state_dict (a mapping of names to tensors)"
        )
    for container in ("state_dict", "model"):
        inner = obj.get(container)
        if _is_state_dict(inner):
            return dict(inner), {k: v for k, v in obj.items() if k != container}
    if not _is_state_dict(obj):
        raise CheckpointError(
            f"{file} holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})",
            hint="expected a state_dict, or a dict with a 'state_dict' or 'model' entry",
        )
    return dict(obj), {}


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The raw state_dict of a ``.pt``/``.pth``/``.safetensors`` file (``state_dict``/``model`` unwrapped).

    Keys are left as stored (wrappers and all); use :func:`import_checkpoint` for canonical keys.
    """
    obj, _ = _read_object(path)
    state, _ = _unwrap(obj, Path(path))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# --- architecture inference ---------------------------------------------------------------------


@dataclass(frozen=True)
class ArchitectureInfo:
    """What the tensor shapes of a canonical ResNet state_dict say about the network."""

    block: str  # "basic" | "bottleneck"
    layers: tuple[int, ...]  # blocks per stage
    width: int  # conv1 out-channels
    stem: str  # "imagenet" (7x7) | "cifar" (3x3)
    in_channels: int
    fc_classes: int | None  # out-features of a plain linear fc, if any
    spec: BackboneSpec | None  # None when block counts match no registered depth

    @property
    def description(self) -> str:
        name = self.spec.arch if self.spec else "unknown ResNet depth"
        blocks = "-".join(map(str, self.layers))
        return (
            f"{name} ({self.block} blocks {blocks}), width {self.width}, {self.stem} stem, "
            f"{self.in_channels} input channel{'s' if self.in_channels != 1 else ''}"
        )


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> ArchitectureInfo:
    """Depth from block counts and block type, width from ``conv1``'s out-channels, stem from its kernel."""
    stem = state_dict.get("conv1.weight")
    if not isinstance(stem, torch.Tensor) or stem.ndim != 4:
        raise CheckpointError("no stem conv (conv1.weight, 4-d) found: not a torchvision-style ResNet")
    layers = tuple(_block_count(state_dict, stage) for stage in range(1, 5))
    if 0 in layers:
        raise CheckpointError(
            f"stage layer{layers.index(0) + 1} has no blocks (blocks per stage {layers}): "
            "not a complete torchvision-style ResNet"
        )
    block = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    kernel = stem.shape[-1]
    stem_kind = {7: "imagenet", 3: "cifar"}.get(kernel)
    if stem_kind is None:
        raise CheckpointError(
            f"stem conv1 has a {kernel}x{kernel} kernel; cvlth knows 7x7 (imagenet) and 3x3 (cifar)"
        )
    fc = state_dict.get("fc.weight")
    fc_classes = int(fc.shape[0]) if isinstance(fc, torch.Tensor) and fc.ndim == 2 else None
    arch = architecture_for(block, layers)
    width, in_channels = int(stem.shape[0]), int(stem.shape[1])
    spec = BackboneSpec(arch.name, width, stem_kind, in_channels) if arch else None
    return ArchitectureInfo(block, layers, width, stem_kind, in_channels, fc_classes, spec)


def _block_count(state_dict: Mapping[str, object], stage: int) -> int:
    pattern = re.compile(rf"^layer{stage}\.(\d+)\.")
    indices = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def expected_shapes(spec: BackboneSpec, num_classes: int | None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``build_backbone(spec)``'s state_dict (built on the meta device: no memory, fast)."""
    with torch.device("meta"):
        model = build_backbone(spec, num_classes or 1)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if num_classes is None:
        shapes = {k: s for k, s in shapes.items() if not k.startswith("fc.")}
    return shapes


# --- import -------------------------------------------------------------------------------------


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
    obj, metadata = _read_object(file)
    header = _cvlth_header(obj, metadata)
    state, extras = _unwrap(obj, file)
    kept, dropped, wrapper = _select_backbone(state, file)
    projection_head = _projection_head(state, wrapper, dropped)
    _refuse_non_finite({**kept, **projection_head}, file)
    filled = _fill_num_batches_tracked(kept)
    architecture = _infer_or_explain(kept, state, file)
    fmt = _decide_format(source, header, wrapper, extras, metadata, file)
    head = _describe_head(state, architecture, fmt, projection_head)
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
    return ImportedCheckpoint(kept, report, projection_head)


_PROJECTION_KEY = re.compile(r"^fc\.(\d+)\.(weight|bias)$")
_PROJECTION_LAYOUT = frozenset({"0.weight", "0.bias", "2.weight", "2.bias"})


def _projection_head(
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


def _refuse_non_finite(state: Mapping[str, torch.Tensor], file: Path) -> None:
    """NaN/Inf weights would pass silently into masks (magnitude of NaN) and training."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise CheckpointError(
            f"{file}: {len(bad)} tensor(s) hold NaN or Inf values: {', '.join(bad[:5])}{more}",
            hint="the checkpoint is corrupted or was saved after training diverged; use an earlier one",
        )


def _cvlth_header(obj: object, metadata: Mapping[str, str]) -> dict[str, object] | None:
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


def _select_backbone(
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
        elif _BACKBONE_KEY.match(canonical):
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


def _fill_num_batches_tracked(state: dict[str, torch.Tensor]) -> list[str]:
    """timm and FrozenBatchNorm state_dicts lack ``num_batches_tracked``: add 0 so every format matches."""
    filled = []
    for key in [k for k in state if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        if counter not in state:
            state[counter] = torch.tensor(0, dtype=torch.long)
            filled.append(counter)
    return sorted(filled)


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


# --- loading into a model -----------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`load_into` copied into the model (names are canonical)."""

    loaded: list[str]
    skipped: list[str]  # in the checkpoint but excluded by ``skip``
    missing: list[str]  # backbone tensors of the model the checkpoint does not have
    unexpected: list[str]  # checkpoint tensors the model does not have
    mis_shaped: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # name -> (checkpoint, model)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mis_shaped)


def load_into(
    model: nn.Module,
    imported: ImportedCheckpoint | Mapping[str, torch.Tensor],
    strict: bool = True,
    skip: Iterable[str] = ("fc.",),
) -> LoadReport:
    """Copy the canonical weights into ``model``'s backbone, under whatever wrappers it uses.

    Every copy of a name is filled (a MoCo model's ``encoder_q`` and ``encoder_k``). ``skip`` holds
    canonical prefixes left as they are (the task head by default; ``"conv1."`` to re-initialise the
    stem). Only the model's ResNet backbone tensors count as missing, so detection and segmentation
    heads never do. With ``strict`` any mismatch raises a :class:`CheckpointError` that names the keys
    and the likely cause, and nothing is copied; otherwise mis-shaped and missing tensors are left alone.
    """
    source = imported.state_dict if isinstance(imported, ImportedCheckpoint) else dict(imported)
    skip = tuple(skip)
    targets = _model_backbone_tensors(model)
    skipped = sorted(k for k in source if k.startswith(skip))
    wanted = {k: v for k, v in source.items() if not k.startswith(skip)}
    model_keys = {k for k in targets if not k.startswith(skip)}
    # BN counters are bookkeeping: FrozenBatchNorm has none and files without them were filled.
    counters = {k for k in set(wanted) ^ model_keys if k.endswith("num_batches_tracked")}
    report = LoadReport(
        loaded=sorted(set(wanted) & model_keys),
        skipped=skipped,
        missing=sorted(model_keys - set(wanted) - counters),
        unexpected=sorted(set(wanted) - model_keys - counters),
        mis_shaped={
            k: (tuple(wanted[k].shape), tuple(targets[k][0].shape))
            for k in sorted(set(wanted) & model_keys)
            if tuple(wanted[k].shape) != tuple(targets[k][0].shape)
        },
    )
    if strict and not report.ok:
        raise CheckpointError(_mismatch_message(report, source, targets), hint=_mismatch_hint(report))
    _copy(report, wanted, targets)
    return report


def _model_backbone_tensors(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Canonical name -> every tensor of the model's state under that name (all wrappers)."""
    found: dict[str, list[torch.Tensor]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        canonical = strip_wrappers(key)
        if _BACKBONE_KEY.match(canonical):
            found.setdefault(canonical, []).append(tensor)
    return found


@torch.no_grad()
def _copy(
    report: LoadReport, wanted: Mapping[str, torch.Tensor], targets: Mapping[str, list[torch.Tensor]]
) -> None:
    for name in report.loaded:
        if name in report.mis_shaped:
            continue
        for target in targets[name]:
            target.data.copy_(wanted[name].to(dtype=target.dtype, device=target.device))


def _mismatch_message(
    report: LoadReport, source: Mapping[str, torch.Tensor], targets: Mapping[str, list[torch.Tensor]]
) -> str:
    lines = ["checkpoint does not fit the model:"]
    cause = _likely_cause(source, {k: v[0] for k, v in targets.items()})
    if cause:
        lines.append(f"  likely cause: {cause}")
    for label, names in (("missing from checkpoint", report.missing), ("not in model", report.unexpected)):
        if names:
            lines.append(
                f"  {label} ({len(names)}): {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
            )
    for name, (have, want) in list(report.mis_shaped.items())[:6]:
        lines.append(f"  {name}: checkpoint {list(have)} vs model {list(want)}")
    if len(report.mis_shaped) > 6:
        lines.append(f"  ... and {len(report.mis_shaped) - 6} more mis-shaped tensors")
    return "\n".join(lines)


def _likely_cause(source: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> str | None:
    if not model_state:
        return "the model holds no torchvision-style ResNet (no conv1/layerN.M weights under known wrappers)"
    try:
        have, want = infer_architecture(source), infer_architecture(model_state)
    except CheckpointError:
        return None
    if (have.block, have.layers) != (want.block, want.layers):
        return f"wrong depth: checkpoint is {_depth(have)}, model is {_depth(want)}"
    if have.width != want.width:
        return f"wrong width: checkpoint conv1 has {have.width} channels, model {want.width}"
    if have.stem != want.stem:
        return f"wrong stem: checkpoint has a {have.stem} stem, model a {want.stem} stem"
    if have.in_channels != want.in_channels:
        return f"input channels: checkpoint expects {have.in_channels}, model {want.in_channels}"
    if have.fc_classes != want.fc_classes:
        return f"classifier: checkpoint fc has {have.fc_classes} outputs, model {want.fc_classes}"
    return None


def _depth(info: ArchitectureInfo) -> str:
    name = info.spec.arch if info.spec else "a ResNet"
    return f"{name} ({info.block} blocks {'-'.join(map(str, info.layers))})"


def _mismatch_hint(report: LoadReport) -> str:
    if any(k.startswith("fc.") for k in report.mis_shaped) and len(report.mis_shaped) <= 2:
        return "the classifier differs: pass skip=('fc.',) to keep the model's own head"
    return "build the model with the checkpoint's architecture (see `cvlth inspect CHECKPOINT`)"


# --- writing cvlth checkpoints --------------------------------------------------------------------


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
    canonical, _, _ = _select_backbone(state_dict, Path(path))
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


__all__ = [
    "CHECKPOINT_FORMAT",
    "NORMALIZATION",
    "SOURCES",
    "CheckpointSource",
    "ArchitectureInfo",
    "ImportReport",
    "ImportedCheckpoint",
    "LoadReport",
    "expected_shapes",
    "import_checkpoint",
    "infer_architecture",
    "load_into",
    "read_state_dict",
    "save_checkpoint",
    "spec_from_header",
]
