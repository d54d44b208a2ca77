"""Masks: canonical conv-weight name -> bool tensor (True = kept), and the cvlth-mask/1 file.

cvlth-mask/1 is a safetensors file that any tool can read without cvlth:

* one ``uint8`` tensor per prunable weight, named by its canonical torchvision name, holding
  ``numpy.packbits(mask.flatten(), bitorder="little")`` (bit 1 = kept);
* metadata ``format = "cvlth-mask/1"``, ``shapes`` = JSON object name -> shape list,
  ``sparsity`` = global sparsity as a decimal string, ``bits_sha256`` = sha256 (hex) of every
  tensor's packed bytes concatenated in sorted name order, plus free provenance strings (source
  checkpoint sha256, method, round, ...). Files written before ``bits_sha256`` existed still load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cvlth.atomic import atomic_path
from cvlth.errors import MaskError
from cvlth.input_files import check_regular, parse_json
from cvlth.scope import DEFAULT_SCOPE, Scope, in_natural_order, iter_prunable

FORMAT_TAG = "cvlth-mask/1"
_RESERVED_METADATA = {"format", "shapes", "sparsity", "bits_sha256"}


class Mask(Mapping[str, torch.Tensor]):
    """An immutable mapping canonical name -> bool tensor on the CPU (True = kept)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        converted: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise MaskError(f"mask entry {name!r} is a {type(tensor).__name__}, not a tensor")
            converted[name] = tensor.detach().to(device="cpu", dtype=torch.bool)
        self._tensors = in_natural_order(converted)

    # --- construction -------------------------------------------------------------------
    @classmethod
    def dense(cls, shapes: Mapping[str, torch.Size | tuple[int, ...]]) -> Mask:
        """The mask that keeps everything (sparsity 0)."""
        return cls({name: torch.ones(tuple(shape), dtype=torch.bool) for name, shape in shapes.items()})

    @classmethod
    def dense_for(cls, model: nn.Module, scope: Scope = DEFAULT_SCOPE) -> Mask:
        return cls.dense(_model_shapes(model, scope))

    # --- Mapping protocol ---------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, kept {self.kept:,}/{self.total:,}, sparsity {self.sparsity:.4%})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self.shapes == other.shapes and all(torch.equal(self[n], other[n]) for n in self)

    __hash__ = None  # type: ignore[assignment]

    # --- counts -------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(t.shape) for name, t in self._tensors.items()}

    @property
    def total(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    @property
    def kept(self) -> int:
        return sum(int(torch.count_nonzero(t)) for t in self._tensors.values())

    @property
    def pruned(self) -> int:
        return self.total - self.kept

    @property
    def density(self) -> float:
        total = self.total
        return self.kept / total if total else 1.0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.density

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - float(t.float().mean()) for name, t in self._tensors.items()}

    def layer_counts(self) -> dict[str, tuple[int, int]]:
        """name -> (kept, total)."""
        return {name: (int(torch.count_nonzero(t)), t.numel()) for name, t in self._tensors.items()}

    # --- algebra ------------------------------------------------------------------------
    def _check_compatible(self, other: Mask) -> None:
        if self.shapes != other.shapes:
            raise MaskError(
                "the two masks cover different weights:\n" + _shape_diff(self.shapes, other.shapes)
            )

    def iou(self, other: Mask) -> float:
        """|kept ∩ kept'| / |kept ∪ kept'| over all weights (1.0 when both keep nothing)."""
        self._check_compatible(other)
        inter = sum(int((self[n] & other[n]).sum()) for n in self)
        union = sum(int((self[n] | other[n]).sum()) for n in self)
        return inter / union if union else 1.0

    def layer_iou(self, other: Mask) -> dict[str, float]:
        self._check_compatible(other)
        result = {}
        for n in self:
            union = int((self[n] | other[n]).sum())
            result[n] = int((self[n] & other[n]).sum()) / union if union else 1.0
        return result

    def complement(self) -> Mask:
        """Keep exactly what this mask prunes."""
        return Mask({n: ~t for n, t in self._tensors.items()})

    def __and__(self, other: Mask) -> Mask:
        self._check_compatible(other)
        return Mask({n: self[n] & other[n] for n in self})

    def perturb(self, fraction: float, seed: int) -> Mask:
        """Swap ``fraction`` of the kept entries with as many pruned ones, layer by layer.

        In every layer ``n = min(round(fraction * kept), pruned)`` kept entries (chosen uniformly)
        are pruned and ``n`` pruned entries are revived, so global and per-layer density are
        unchanged. Deterministic in ``seed``.
        """
        if not 0.0 <= fraction <= 1.0:
            raise MaskError(f"perturb fraction must be in [0, 1], got {fraction}")
        generator = torch.Generator().manual_seed(seed)
        result = {}
        for name, tensor in self._tensors.items():
            flat = tensor.reshape(-1).clone()
            kept_idx = flat.nonzero().squeeze(1)
            pruned_idx = (~flat).nonzero().squeeze(1)
            n = min(round(fraction * kept_idx.numel()), pruned_idx.numel())
            if n:
                drop = kept_idx[torch.randperm(kept_idx.numel(), generator=generator)[:n]]
                revive = pruned_idx[torch.randperm(pruned_idx.numel(), generator=generator)[:n]]
                flat[drop] = False
                flat[revive] = True
            result[name] = flat.reshape(tensor.shape)
        return Mask(result)

    # --- models -------------------------------------------------------------------------
    def validate(self, model: nn.Module, scope: Scope = DEFAULT_SCOPE) -> None:
        """Raise :class:`MaskError` listing every name or shape that differs from ``model``."""
        model_shapes = _model_shapes(model, scope)
        if model_shapes != self.shapes:
            raise MaskError(
                "mask does not fit the model's prunable weights:\n"
                + _shape_diff(self.shapes, model_shapes, "mask", "model"),
                hint="was the mask computed for another depth or width of ResNet?",
            )

    @torch.no_grad()
    def apply(self, model: nn.Module, scope: Scope = DEFAULT_SCOPE) -> nn.Module:
        """Zero the pruned weights of ``model`` in place (every copy, e.g. both MoCo encoders)."""
        self.validate(model, scope)
        for item in iter_prunable(model, scope):
            keep = self._tensors[item.canonical].to(item.parameter.device)
            item.parameter.mul_(keep.to(item.parameter.dtype))
        return model

    # --- files --------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], **provenance: object) -> Path:
        """Write a cvlth-mask/1 file atomically. ``provenance`` values are stored as strings."""
        return save_mask(self, path, **provenance)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Mask:
        return load_mask(path)[0]


def _model_shapes(model: nn.Module, scope: Scope) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for item in iter_prunable(model, scope):
        shapes.setdefault(item.canonical, tuple(item.parameter.shape))
    return shapes


def _shape_diff(
    left: Mapping[str, tuple[int, ...]],
    right: Mapping[str, tuple[int, ...]],
    left_label: str = "first",
    right_label: str = "second",
) -> str:
    """Readable lines naming the entries only on one side and the shapes that differ."""
    lines = []
    only_left = sorted(set(left) - set(right))
    only_right = sorted(set(right) - set(left))
    if only_left:
        lines.append(f"  only in {left_label} ({len(only_left)}): {', '.join(only_left[:8])}")
    if only_right:
        lines.append(f"  only in {right_label} ({len(only_right)}): {', '.join(only_right[:8])}")
    for name in sorted(set(left) & set(right)):
        if tuple(left[name]) != tuple(right[name]):
            lines.append(f"  {name}: {left_label} {list(left[name])} vs {right_label} {list(right[name])}")
    return "\n".join(lines[:20])


# --- cvlth-mask/1 file format -------------------------------------------------------------


def save_mask(mask: Mask, path: str | os.PathLike[str], **provenance: object) -> Path:
    from safetensors.torch import save_file  # lazy (no cycle): safetensors loads only when masks are written

    bad = _RESERVED_METADATA & set(provenance)
    if bad:
        raise MaskError(f"provenance keys {sorted(bad)} are reserved by the cvlth-mask/1 format")
    packed = {
        name: torch.from_numpy(np.packbits(t.reshape(-1).numpy(), bitorder="little"))
        for name, t in mask.items()
    }
    metadata = {str(k): str(v) for k, v in provenance.items()}
    metadata.update(
        format=FORMAT_TAG,
        shapes=json.dumps({name: list(shape) for name, shape in mask.shapes.items()}),
        sparsity=repr(mask.sparsity),
        bits_sha256=_bits_sha256(packed),
    )
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(packed, str(tmp), metadata=metadata)
    return target


def load_mask(path: str | os.PathLike[str]) -> tuple[Mask, dict[str, str]]:
    """Read a cvlth-mask/1 file; return the mask and its provenance metadata."""
    from safetensors import SafetensorError, safe_open  # lazy (no cycle): only to read masks

    file = Path(path)
    if file.is_dir():
        raise MaskError(f"{file} is a directory, not a mask file", hint="give the .safetensors file itself")
    check_regular(file, "a mask file", MaskError)  # a FIFO would block, a device never end
    if not file.is_file():
        raise MaskError(f"mask file not found: {file}", hint="check the path; masks end in .safetensors")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            packed = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise MaskError(
            f"{file} is not a readable cvlth-mask/1 file (truncated or corrupted?): {exc}",
            hint="re-create the mask, e.g. with `cvlth prune`",
        ) from exc
    if metadata.get("format") != FORMAT_TAG:
        raise MaskError(f"{file} has format {metadata.get('format')!r}, expected {FORMAT_TAG!r}")
    shapes = _read_shapes(file, metadata)
    if set(shapes) != set(packed):
        raise MaskError(
            f"{file}: tensors and 'shapes' metadata disagree:\n"
            + _shape_diff(shapes, {n: () for n in packed}, "shapes", "tensors")
        )
    tensors = {}
    for name, shape in shapes.items():
        data = packed[name]
        numel = math.prod(shape)
        if data.dtype != torch.uint8 or data.ndim != 1 or data.numel() != (numel + 7) // 8:
            raise MaskError(
                f"{file}: {name} holds {data.numel()} {data.dtype} bytes, but shape {list(shape)} "
                f"needs {(numel + 7) // 8} uint8 bytes (corrupted, or the wrong shape)"
            )
        bits = np.unpackbits(data.numpy(), bitorder="little")
        if bits[numel:].any():
            raise MaskError(f"{file}: {name} has bits set past its {numel} entries (corrupted)")
        tensors[name] = torch.from_numpy(bits[:numel].astype(bool)).reshape(shape)
    # Checked after the dtypes: the checksum is over uint8 bytes.
    stored_sha = metadata.get("bits_sha256")
    if stored_sha is not None and stored_sha != _bits_sha256(packed):
        raise MaskError(
            f"{file}: the mask bits do not match the file's bits_sha256 checksum (altered or corrupted)",
            hint="re-create the mask, e.g. with `cvlth prune`, or restore it from a copy",
        )
    mask = Mask(tensors)
    stated = metadata.get("sparsity")
    if stated is not None:
        try:
            mismatch = abs(float(stated) - mask.sparsity) > 1e-9
        except ValueError:
            mismatch = True
        if mismatch:
            raise MaskError(f"{file}: stated sparsity {stated} != actual {mask.sparsity!r} (corrupted)")
    provenance = {k: v for k, v in metadata.items() if k not in _RESERVED_METADATA}
    provenance["format"] = FORMAT_TAG
    return mask, provenance


def _bits_sha256(packed: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the packed bytes of every tensor, concatenated in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(packed):
        digest.update(packed[name].numpy().tobytes())
    return digest.hexdigest()


def _read_shapes(file: Path, metadata: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
    """The ``shapes`` metadata as name -> tuple of non-negative ints, or a MaskError."""
    try:
        raw = parse_json(metadata["shapes"], f"{file}: metadata 'shapes'", MaskError)
        shapes = {str(name): tuple(shape) for name, shape in raw.items()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise MaskError(f"{file}: metadata 'shapes' is missing or not a JSON object of lists") from exc
    for name, shape in shapes.items():
        if not all(type(d) is int and d >= 0 for d in shape):
            raise MaskError(
                f"{file}: metadata 'shapes' gives {name} the shape {list(shape)}; "
                "dimensions must be non-negative integers (corrupted)",
                hint="re-create the mask, e.g. with `cvlth prune`",
            )
    return shapes
