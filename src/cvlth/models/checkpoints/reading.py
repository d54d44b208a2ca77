"""Reading checkpoint files safely: ``torch.load(..., weights_only=True)`` or safetensors, never an
arbitrary pickle, with every failure (missing, empty, text, truncated, refused object) a
:class:`CheckpointError` naming the file; and unwrapping the state_dict from its container."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from cvlth.errors import CheckpointError
from cvlth.input_files import check_regular


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


def read_object(path: str | os.PathLike[str]) -> tuple[object, dict[str, str]]:
    """The loaded object and safetensors metadata (``{}`` for torch files); every failure is a CheckpointError."""
    file = Path(path)
    check_regular(file, "a checkpoint file", CheckpointError)  # a FIFO would block, a device never end
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
    if kind == "zip":
        _check_zip_sizes(file)
    return _read_torch(file), {}


#: torch.save stores every record of its zip uncompressed, so what a checkpoint unpacks to is about
#: its size on disk; a file re-zipped with compression may be a few times smaller. More is a bomb:
#: torch allocates and inflates each record at the size the zip's directory declares.
MAX_ZIP_INFLATION = 10


def _check_zip_sizes(file: Path) -> None:
    """Refuse a zip whose records declare more than MAX_ZIP_INFLATION times the file's size,
    read from its central directory before anything is inflated."""
    try:
        with zipfile.ZipFile(file) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(
            f"{file} could not be read as a PyTorch checkpoint (truncated or corrupted zip?): {exc}",
            hint="re-download or re-save the checkpoint",
        ) from None
    size = file.stat().st_size
    if declared > MAX_ZIP_INFLATION * size:
        raise CheckpointError(
            f"{file}: refused: its zip records unpack to {declared:,} bytes, {declared / size:,.0f} times "
            f"the file's {size:,} bytes (torch.save writes them uncompressed; more than "
            f"{MAX_ZIP_INFLATION}x is a decompression bomb)",
            hint="re-save the checkpoint with torch.save",
        )


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


def unwrap(obj: object, file: Path) -> tuple[dict[str, object], dict[str, object]]:
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
    obj, _ = read_object(path)
    state, _ = unwrap(obj, Path(path))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
