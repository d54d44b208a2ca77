"""Resumable training state: what it holds, how the loop writes it and resumes from it, and how RNG
states are captured.

``train-state.pt`` (:attr:`cvlth.store.RunFolder.train_state_path`) is a ``torch.save`` of tensors and
primitive containers only, so it loads with ``torch.load(weights_only=True)``. It is not a model
checkpoint to import elsewhere (that is ``theta_p.pt``,
:func:`cvlth.models.checkpoints.cvlth_format.save_checkpoint`).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvlth.errors import CheckpointError, TrainingError
from cvlth.masks import Mask
from cvlth.store import RunFolder
from cvlth.training.metrics_log import truncate_metrics

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


# --- the loop's checkpoint: written after steps and epochs, read back on resume ----------------


@dataclass
class LoopState:
    """Where the loop is: the next batch to train, steps done, evaluations so far, the last checkpoint."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: str = "none written yet"


def save_train_state(
    folder: RunFolder,
    state: LoopState,
    model: nn.Module,
    extra: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    mask: Mask | None,
    metrics_offset: int,
) -> None:
    """Write ``train-state.pt`` atomically (the format above); ``metrics_offset``: metrics.jsonl's size."""
    payload = {
        "format": TRAIN_STATE_FORMAT,
        "epoch": state.epoch,
        "batch": state.batch,
        "step": state.step,
        "model": model.state_dict(),
        "modules": {name: module.state_dict() for name, module in extra.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),  # empty unless fp16
        "mask": dict(mask) if mask is not None else None,
        "rng": capture_rng(),
        "history": state.history,
        "metrics_offset": metrics_offset,
        "threads": torch.get_num_threads(),
    }
    folder.write_file_atomically(folder.train_state_path.name, lambda tmp: torch.save(payload, tmp))
    state.last_checkpoint = f"{folder.train_state_path} at step {state.step}"


def resume_train_state(
    folder: RunFolder,
    model: nn.Module,
    extra: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    mask: Mask | None,
    scaler: torch.amp.GradScaler,
) -> tuple[LoopState, Mask | None]:
    """Load ``train-state.pt`` into the model, modules, optimizer, scheduler, scaler and global RNGs,
    drop the metrics lines written after it, and return where the loop is and the saved mask."""
    saved = load_train_state(folder.train_state_path)
    _check_threads(folder, saved.get("threads"))
    saved_mask = Mask(saved["mask"]) if saved["mask"] is not None else None
    if (saved_mask is None) != (mask is None) or (mask is not None and saved_mask != mask):
        raise TrainingError(
            f"{folder.train_state_path} was trained with another mask than the one given",
            hint="a run's mask is part of its identity; use a new run folder for a new mask",
        )
    model.load_state_dict(saved["model"])
    for name, module in extra.items():
        module.load_state_dict(saved["modules"][name])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    restore_rng(saved["rng"])
    truncate_metrics(folder.metrics_path, saved["metrics_offset"])
    state = LoopState(
        epoch=saved["epoch"], batch=saved["batch"], step=saved["step"], history=saved["history"]
    )
    state.last_checkpoint = f"{folder.train_state_path} at step {state.step}"
    return state, saved_mask


def _check_threads(folder: RunFolder, saved: int | None) -> None:
    """CPU kernels reduce in an order that depends on the intra-op thread count: a run resumed with
    another count would not finish with the numbers it would have had."""
    if saved is not None and saved != torch.get_num_threads():
        raise TrainingError(
            f"{folder.train_state_path} was computed with {saved} intra-op threads, this process uses "
            f"{torch.get_num_threads()}",
            hint=f"resume with the same count (cvlth study --threads {saved}), or delete the checkpoint "
            "to restart the run",
        )
