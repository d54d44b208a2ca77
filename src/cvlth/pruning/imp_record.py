"""What made an IMP folder, so that :func:`~cvlth.pruning.imp.imp` resumes only its own work.

An IMP folder holds finished levels that a later call skips. Called again on the same folder with
another fraction, architecture, strategy, rewind point, objective, recipe or training data, it would
return the old masks as if they were the new ones. ``imp.json`` (cvlth-imp-args/1) records the
arguments that decide the masks; a later call compares its own record with it and refuses any
difference, naming it. ``rounds`` is left out: asking for more rounds continues the same IMP.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvlth.atomic import atomic_write_text
from cvlth.errors import CvlthError
from cvlth.run_files import CONFIG, IMP_RECORD, MASKS, REWIND
from cvlth.scope import prunable_parameters

IMP_RECORD_FORMAT = "cvlth-imp-args/1"
_DIGEST_LIMIT = 1 << 30  # bytes of in-memory data hashed; larger sets are described by shape only


class ImpFolderMismatch(CvlthError):
    """An IMP folder was made with other arguments than the call that wants to resume it."""


def imp_record(
    model: nn.Module,
    make_objective: Callable[[], Any],
    train_data: Any,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """The record of one :func:`imp` call: the model's prunable shapes, the objective (its class and
    the shapes of its heads), the training data and ``settings`` (fraction, strategy, rewind, ...)."""
    with torch.random.fork_rng(devices=[]):  # building a probe objective must not move the RNG
        probe = make_objective()
    heads = {
        name: {key: list(value.shape) for key, value in module.state_dict().items()}
        for name, module in sorted(probe.modules().items())
    }
    rewind = settings.get("rewind")
    if isinstance(rewind, Mapping) and not heads:
        # no heads: the head policy changes nothing, recorded as folders made before policies existed
        settings = {**settings, "rewind": {**rewind, "heads": True}}
    return {
        "format": IMP_RECORD_FORMAT,
        "prunable": {name: list(p.shape) for name, p in prunable_parameters(model).items()},
        "objective": {"class": type(probe).__qualname__, "heads": heads},
        "data": data_identity(train_data),
        **{key: _plain(value) for key, value in settings.items()},
    }


def check_imp_folder(root: Path, record: dict[str, Any]) -> None:
    """Write ``record`` into a new IMP folder, or check it against the one already there.

    A folder with IMP work but no record was started by a cvlth before records existed: a run folder
    of the store (its config hash already names every argument) gets the record and resumes; any
    other such folder is refused, since nothing says what made it."""
    path = root / IMP_RECORD
    if not path.is_file():
        started = (root / REWIND).exists() or (root / MASKS).exists()
        if started and not (root / CONFIG).is_file():
            raise ImpFolderMismatch(
                f"{root} holds IMP work but no {IMP_RECORD}: nothing says which arguments made it",
                hint="give imp() an empty folder, or move this one away",
            )
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
        return
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImpFolderMismatch(f"{path} cannot be read ({exc})", hint="move the folder away") from None
    differences = _differences(stored, record)
    if differences:
        raise ImpFolderMismatch(
            f"{root} was made by imp() with other arguments: {'; '.join(differences[:4])}"
            + (f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""),
            hint="give this call its own folder, or call imp() with the arguments that made the folder",
        )


def data_identity(source: Any) -> dict[str, Any]:
    """What the training data is: its own ``data_identity()`` when it has one, else its class, its
    batches per epoch and, for in-memory tensors, their shapes and a sha256 of their bytes."""
    own = getattr(source, "data_identity", None)
    if callable(own):
        return {"class": type(source).__qualname__, **own()}
    identity: dict[str, Any] = {"class": type(source).__qualname__, "batches": len(source)}
    tensors = getattr(source, "tensors", None)
    if isinstance(tensors, tuple) and all(isinstance(t, torch.Tensor) for t in tensors):
        identity["shapes"] = [list(t.shape) for t in tensors]
        identity["batch_size"] = getattr(source, "batch_size", None)
        identity["seed"] = getattr(source, "seed", None)
        if sum(t.numel() * t.element_size() for t in tensors) <= _DIGEST_LIMIT:
            digest = hashlib.sha256()
            for tensor in tensors:
                digest.update(
                    tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                )
            identity["sha256"] = digest.hexdigest()
    return identity


def _differences(stored: Any, wanted: Any, path: str = "") -> list[str]:
    """``what: folder X, this call Y`` for every leaf that differs."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        found = []
        for key in sorted(set(stored) | set(wanted), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in stored or key not in wanted:
                found.append(
                    f"{where}: folder {stored.get(key, '<absent>')!r}, this call {wanted.get(key, '<absent>')!r}"
                )
            else:
                found.extend(_differences(stored[key], wanted[key], where))
        return found
    return [] if stored == wanted else [f"{path}: folder {_short(stored)}, this call {_short(wanted)}"]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain(value: Any) -> Any:
    """JSON-able: pydantic models as their data, paths as strings."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return json.loads(json.dumps(value))
