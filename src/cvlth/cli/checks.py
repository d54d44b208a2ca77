"""Checks the commands run on their arguments before doing any work, so a wrong path or device
fails at once with one clear line instead of a traceback or a half-written output."""

from __future__ import annotations

from pathlib import Path

from cvlth.errors import CvlthError


def input_file(path: Path, what: str) -> Path:
    """Refuse a directory where a file is expected (a missing file is reported by its reader)."""
    if path.is_dir():
        raise CvlthError(f"{path} is a directory, not {what}", hint=f"give the path of {what} itself")
    return path


def output_file(out: Path, inputs: list[Path], force: bool) -> Path:
    """Refuse to write over an input, a directory, or (without ``--force``) any existing file."""
    if out.is_dir():
        raise CvlthError(f"--out {out} is a directory", hint="give a file name, e.g. DIR/mask.safetensors")
    if out.exists():
        if any(p.exists() and out.samefile(p) for p in inputs):
            raise CvlthError(
                f"--out {out} is an input of this command; writing it would destroy the input",
                hint="choose another output file",
            )
        if not force:
            raise CvlthError(
                f"--out {out} already exists", hint="pass --force to overwrite it, or choose another file"
            )
    return out


def check_device(device: str) -> str:
    """A device string torch understands and this machine has (``cuda`` needs a visible GPU)."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise CvlthError(f"--device {device!r} is not a device", hint="use cpu, cuda, cuda:1, ...") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise CvlthError(
                f"--device {device}: no CUDA GPU is visible on this machine", hint="use --device cpu"
            )
        if parsed.index is not None and parsed.index >= count:
            raise CvlthError(
                f"--device {device}: this machine has {count} CUDA GPU(s), numbered 0..{count - 1}",
                hint=f"use --device cuda:0 .. cuda:{count - 1}",
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CvlthError(f"--device {device}: MPS is not available on this machine", hint="use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise CvlthError(f"--device {device}: cvlth runs on cpu, cuda or mps", hint="use --device cpu")
    return device
