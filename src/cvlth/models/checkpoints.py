"""Reading checkpoints safely (``weights_only=True`` or safetensors; never arbitrary pickles)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cvlth.errors import CheckpointError


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state_dict from a ``.pt``/``.pth``/``.safetensors`` file, unwrapping ``state_dict``."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint not found: {file}", hint="check the path")
    if file.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {file} is empty (0 bytes)")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(file))
        except Exception as exc:
            raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{file} could not be read as a PyTorch checkpoint with weights_only=True: "
            f"{str(exc).splitlines()[0]}",
            hint="cvlth never unpickles arbitrary objects; re-save the state_dict with torch.save",
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{file} does not hold a state_dict (a mapping of names to tensors)")
    return dict(obj)
