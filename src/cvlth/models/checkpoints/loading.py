"""Loading canonical weights into a model: :func:`load_into` fills every copy of the ResNet backbone
under whatever wrappers the model uses, and explains a mismatch (wrong depth, width, stem, ...) as a
:class:`CheckpointError`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cvlth.errors import CheckpointError
from cvlth.models.checkpoints.architecture import ArchitectureInfo, infer_architecture
from cvlth.models.checkpoints.backbone_keys import BACKBONE_KEY
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.scope import strip_wrappers


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
        if BACKBONE_KEY.match(canonical):
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
