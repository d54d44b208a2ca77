"""One training loop for every objective.

Per optimizer step: derive the augmentation generator from (seed, step), ``objective.train_step``,
reject a non-finite loss, backward, optimizer step, **re-apply the mask**, the objective's optional
``objective.after_step(model)`` (MoCo's EMA), scheduler step, log one
line to ``metrics.jsonl``, maybe capture the weights (IMP's early-rewind point) and checkpoint,
then run the callbacks. Per epoch: evaluate on validation (and on test when validation improves),
checkpoint.

With a run folder the loop resumes exactly: the checkpoint holds the model, the objective's
modules, optimizer, scheduler, mask, global RNG states, the data position and the size of
``metrics.jsonl``; the data order comes from ``BatchSource.epoch_batches(epoch, start)`` and the
augmentation generator is re-derived, so a killed run finishes bit-identical on CPU.

``training.precision``: the forward (``objective.train_step``) runs under ``torch.autocast`` in
bf16 or fp16; fp16 scales the loss with a ``GradScaler`` (its state is checkpointed), which skips
the optimizer step on overflow. The mask is re-applied after every step either way. Evaluation
stays in fp32.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvlth.config import OptimConfig, ScheduleConfig, TrainingConfig
from cvlth.data.source import BatchSource
from cvlth.errors import TrainingError
from cvlth.masks import Mask
from cvlth.pruning.enforcer import MaskEnforcer
from cvlth.store import RunFolder, reported_io
from cvlth.training import distributed
from cvlth.training.distributed import DistEnv
from cvlth.training.objective import Objective
from cvlth.training.optim import build_optimizer, build_scheduler
from cvlth.training.train_state import (
    TRAIN_STATE_FORMAT,
    capture_rng,
    load_train_state,
    restore_rng,
    step_generator,
)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # fp32: autocast off


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each optimizer step."""

    step: int  # optimizer steps done, counting this one
    epoch: int
    batch: int  # index of the batch just trained, within ``epoch``
    loss: float
    lr: float
    checkpointed: bool  # a checkpoint was written after this step


Callback = Callable[[StepInfo], None]


@dataclass
class _State:
    epoch: int = 0
    batch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_checkpoint: str = "none written yet"


def train(
    model: nn.Module,
    objective: Objective,
    train_data: BatchSource,
    *,
    training: TrainingConfig,
    optim: OptimConfig,
    schedule: ScheduleConfig,
    run: RunFolder | str | os.PathLike[str] | None = None,
    val_data: BatchSource | None = None,
    test_data: BatchSource | None = None,
    mask: Mask | None = None,
    device: str | torch.device = "cpu",
    callbacks: Sequence[Callback] = (),
    capture_at_step: int | None = None,
    quiet: bool = False,
    env: DistEnv | None = None,
) -> dict[str, Any]:
    """Train ``model`` (and ``objective.modules()``) in place and return the result dict.

    ``run`` is the folder for checkpoints and metrics (resumed from if it holds a checkpoint);
    without it nothing is written. ``mask`` stays enforced after every step. ``capture_at_step``
    saves the weights after that step to ``<run>/capture_step<N>.pt`` (the θ_5% rewind point).
    ``env`` defaults to the current process group (see :mod:`cvlth.training.distributed`).
    """
    env = env or distributed.current_env()
    device = torch.device(device)
    folder = RunFolder(run) if run is not None and not isinstance(run, RunFolder) else run
    writer = folder if env.is_writer else None
    steps_per_epoch = len(train_data)
    if steps_per_epoch < 1:
        raise TrainingError(
            "the training data yields no batches", hint="lower batch_size or check the dataset"
        )

    memory_format = torch.channels_last if training.channels_last else torch.preserve_format
    objective.bind(model, mask)
    extra = objective.modules()
    for module in (model, *extra.values()):
        module.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(_parameters(model, extra), optim)
    scaler = torch.amp.GradScaler(device.type, enabled=training.precision == "fp16")
    scheduler = build_scheduler(optimizer, schedule, steps_per_epoch, training.epochs)

    state = _State()
    if folder is not None and folder.train_state_path.is_file():
        state, mask = _resume(folder, model, extra, optimizer, scheduler, mask, scaler)
    elif writer is not None:
        _truncate(writer.metrics_path, 0)  # lines of a run killed before its first checkpoint
    if mask is not None:
        distributed.check_identical("mask", dict(mask), env)
    enforcer = MaskEnforcer(model, mask) if mask is not None else None
    net = _wrap(model, env, device)

    metrics_log = _MetricsLog(writer.metrics_path if writer else None)
    total_steps = steps_per_epoch * training.epochs

    def save_checkpoint() -> None:
        if writer is not None:
            _save_checkpoint(
                writer, state, model, extra, optimizer, scheduler, scaler, mask, metrics_log.flush()
            )

    with metrics_log, _progress(total_steps, state.step, quiet or not env.is_writer) as advance:
        while state.epoch < training.epochs:
            net.train()
            for module in extra.values():
                module.train()
            for index, batch in enumerate(
                train_data.epoch_batches(state.epoch, state.batch), start=state.batch
            ):
                lr = optimizer.param_groups[0]["lr"]
                loss, metrics = _step(
                    net, objective, batch, state, training, env, device, memory_format, optimizer, scaler
                )
                distributed.average_gradients(extra, env)
                scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
                scaler.update()
                if enforcer is not None:
                    enforcer.apply()
                objective.after_step(model)
                scheduler.step()
                state.step += 1
                state.batch = index + 1
                metrics_log.write(
                    {
                        "step": state.step,
                        "epoch": state.epoch,
                        "batch": index,
                        "lr": lr,
                        "loss": loss,
                        **metrics,
                    }
                )
                if writer is not None and capture_at_step == state.step:
                    _capture(writer, state.step, model, extra)
                checkpointed = _due(training, state.step) and state.batch < steps_per_epoch
                if checkpointed:
                    save_checkpoint()
                info = StepInfo(state.step, state.epoch, index, loss, lr, checkpointed and writer is not None)
                for callback in callbacks:
                    callback(info)
                advance(loss)
            state.epoch, state.batch = state.epoch + 1, 0
            for module in (model, *extra.values()):
                distributed.sync_buffers(module, env)
            if state.epoch % training.eval_every_epochs == 0 or state.epoch == training.epochs:
                record = _evaluate(
                    net, model, extra, objective, state.epoch, val_data, test_data, state.history
                )
                state.history.append(record)
                metrics_log.write(record)
            save_checkpoint()
    distributed.barrier(env)
    return summarize(state.history, objective.selection, steps=state.step, epochs=training.epochs)


# --- one step -----------------------------------------------------------------------------


def _step(
    net: nn.Module,
    objective: Objective,
    batch: Any,
    state: _State,
    training: TrainingConfig,
    env: DistEnv,
    device: torch.device,
    memory_format: torch.memory_format,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[float, dict[str, float]]:
    """Forward (under autocast) and backward of one batch; raises TrainingError on a non-finite loss."""
    batch = _to_device(distributed.shard_batch(batch, env), device, memory_format)
    generator = step_generator(training.seed, state.step, env.rank, device)
    optimizer.zero_grad(set_to_none=True)
    dtype = AUTOCAST_DTYPES.get(training.precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss, metrics = objective.train_step(net, batch, generator)
    loss_value = float(distributed.all_mean(loss.detach().float(), env))
    if not math.isfinite(loss_value):
        raise _non_finite(loss_value, state)
    scaler.scale(loss).backward()
    return loss_value, {name: float(value) for name, value in metrics.items()}


def _non_finite(value: float, state: _State) -> TrainingError:
    return TrainingError(
        f"the loss is {value} at step {state.step + 1} (epoch {state.epoch}, batch {state.batch})",
        hint=f"the last good checkpoint is kept ({state.last_checkpoint}); "
        "lower the learning rate or add warm-up, then run again to resume from it",
    )


def _to_device(batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        return batch.contiguous(memory_format=memory_format) if batch.ndim == 4 else batch
    if isinstance(batch, dict):
        return {key: _to_device(value, device, memory_format) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(value, device, memory_format) for value in batch)
    return batch


def _parameters(model: nn.Module, extra: dict[str, nn.Module]) -> list[nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    for name in sorted(extra):
        params.extend(p for p in extra[name].parameters() if p.requires_grad)
    return params


def _wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    if not env.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _due(training: TrainingConfig, step: int) -> bool:
    every = training.checkpoint_every_steps
    return every is not None and step % every == 0


# --- evaluation and the result ------------------------------------------------------------


def _evaluate(
    net: nn.Module,
    model: nn.Module,
    extra: dict[str, nn.Module],
    objective: Objective,
    epoch: int,
    val_data: BatchSource | None,
    test_data: BatchSource | None,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Evaluate the bare model (not the DDP wrapper: no collectives, every rank sees all data).

    The test split is evaluated only when validation improves on every earlier epoch (or there is
    no validation split): the result reports test at the best-validation epoch only, and on the
    CPU study's detector a test image costs about a third of a training image (~75 vs ~26 img/s).
    """
    model.eval()
    for module in extra.values():
        module.eval()
    record: dict[str, Any] = {"epoch": epoch}
    if val_data is not None:
        record["val"] = objective.evaluate(model, val_data)
    if test_data is not None and _improves(record, history, objective.selection):
        record["test"] = objective.evaluate(model, test_data)
    net.train()
    return record


def _improves(record: dict[str, Any], history: list[dict[str, Any]], selection: tuple[str, str]) -> bool:
    """Whether ``record`` would become the epoch :func:`summarize` reports."""
    return best_record([*history, record], selection) is record


def best_record(history: list[dict[str, Any]], selection: tuple[str, str]) -> dict[str, Any]:
    """The best-validation evaluation (the first one wins a tie); the last one if none is scored."""
    name, direction = selection
    scored = [r for r in history if "val" in r and math.isfinite(r["val"].get(name, math.nan))]
    if not scored:
        return history[-1]
    pick = max if direction == "max" else min
    return pick(scored, key=lambda r: r["val"][name])


def summarize(
    history: list[dict[str, Any]], selection: tuple[str, str], *, steps: int, epochs: int
) -> dict[str, Any]:
    """The result: final metrics and the test metrics at the best-validation epoch (the paper's)."""
    result: dict[str, Any] = {"epochs": epochs, "steps": steps, "history": history}
    if not history:
        return result
    name, direction = selection
    best = best_record(history, selection)
    result.update(
        final=history[-1],
        best_epoch=best["epoch"],
        selection={"metric": f"val.{name}", "mode": direction},
        best_val=best.get("val"),
        test_at_best_val=best.get("test"),
    )
    return result


# --- checkpoints --------------------------------------------------------------------------


def _save_checkpoint(
    folder: RunFolder,
    state: _State,
    model: nn.Module,
    extra: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    mask: Mask | None,
    metrics_offset: int,
) -> None:
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


def _resume(
    folder: RunFolder,
    model: nn.Module,
    extra: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    mask: Mask | None,
    scaler: torch.amp.GradScaler,
) -> tuple[_State, Mask | None]:
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
    _truncate(folder.metrics_path, saved["metrics_offset"])
    state = _State(epoch=saved["epoch"], batch=saved["batch"], step=saved["step"], history=saved["history"])
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


def _truncate(path: Path, size: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be rewritten)."""
    if path.is_file() and path.stat().st_size > size:
        with reported_io(path), open(path, "r+b") as handle:
            handle.truncate(size)


def _capture(folder: RunFolder, step: int, model: nn.Module, extra: dict[str, nn.Module]) -> None:
    payload = {
        "step": step,
        "model": model.state_dict(),
        "modules": {n: m.state_dict() for n, m in extra.items()},
    }
    folder.write_file_atomically(f"capture_step{step}.pt", lambda tmp: torch.save(payload, tmp))


def capture_path(folder: RunFolder | str | os.PathLike[str], step: int) -> Path:
    """Where ``train(..., capture_at_step=step)`` saved the weights."""
    return Path(folder) / f"capture_step{step}.pt"


# --- metrics file and progress bar --------------------------------------------------------


class _MetricsLog:
    """Appends JSON lines to ``metrics.jsonl``; ``flush()`` returns the size on disk."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._handle: Any = None

    def __enter__(self) -> _MetricsLog:
        if self.path is not None:
            with reported_io(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            with reported_io(self.path):  # type: ignore[arg-type]
                self._handle.close()

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is not None:
            with reported_io(self.path):  # type: ignore[arg-type]
                self._handle.write(json.dumps(record, sort_keys=True) + "\n")

    def flush(self) -> int:
        if self._handle is None:
            return 0
        with reported_io(self.path):  # type: ignore[arg-type]
            self._handle.flush()
            os.fsync(self._handle.fileno())
            return self._handle.tell()


@contextlib.contextmanager
def _progress(total: int, done: int, quiet: bool) -> Iterator[Callable[[float], None]]:
    """A rich progress bar with ETA on a terminal; a no-op when quiet or not a TTY."""
    if quiet or not sys.stderr.isatty():
        yield lambda loss: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("train"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("train", total=total, completed=done, loss=float("nan"))
        yield lambda loss: progress.update(task, advance=1, loss=loss)
