"""Resumable training state: what it holds and how RNG states are captured.

``train-state.pt`` (:attr:`cvlth.store.RunFolder.train_state_path`) is a ``torch.save`` of tensors and
primitive containers only, so it loads with ``torch.load(weights_only=True)``. It is not a model
checkpoint to import elsewhere (that is ``theta_p.pt``, :func:`cvlth.models.checkpoints.save_checkpoint`).
Format ``cvlth-train-state/1`` (``cvlth-checkpoint/1`` in ``checkpoint.pt``, written by older cvlth,
is the same layout and still resumes)::

    format          "cvlth-train-state/1"
    epoch, batch    position of the next batch to train (batch 0 = start of ``epoch``)
    step            optimizer steps done
    model           model.state_dict()
    modules         {name: state_dict} of the objective's extra modules
    optimizer       optimizer.state_dict()
    scheduler       scheduler.state_dict()
    mask            {canonical name: bool tensor} or None
    rng             {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...}, "python": [...]}
    history         [{"epoch": e, "val": {...}, "test": {...}}] evaluations so far
    metrics_offset  size of metrics.jsonl when saved (lines after it are dropped on resume)
    threads         torch's intra-op thread count (a resume with another count is refused)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvlth.errors import CheckpointError

TRAIN_STATE_FORMAT = "cvlth-train-state/1"
_LEGACY_FORMATS = ("cvlth-checkpoint/1",)  # the tag before the rename: same layout


def capture_rng() -> dict[str, Any]:
    """Every global RNG the loop or user code may draw from, as tensors and primitives."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": [version, list(internal), gauss],
    }


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The augmentation generator of one step, re-derived from (seed, step, rank) on resume."""
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB) % (1 << 63)
    generator = torch.Generator(device=device)
    generator.manual_seed(mixed)
    return generator


def load_train_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(
            f"cannot read training state {path}: {exc}",
            hint="the file is corrupted; delete it to restart the run from the beginning",
        ) from exc
    if not isinstance(state, dict) or state.get("format") not in (TRAIN_STATE_FORMAT, *_LEGACY_FORMATS):
        raise CheckpointError(f"{path} is not a {TRAIN_STATE_FORMAT} training state")
    return state
