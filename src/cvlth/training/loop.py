"""One training loop for every objective.

Per optimizer step: derive the augmentation generator from (seed, step), ``objective.train_step``,
reject a non-finite loss, backward, optimizer step, **re-apply the mask**, the objective's optional
``objective.after_step(model)`` (MoCo's EMA), scheduler step, log one
line to ``metrics.jsonl`` (and, when the study asks, to TensorBoard / MLflow:
:mod:`cvlth.training.scalar_logs`), maybe capture the weights (IMP's early-rewind point) and checkpoint,
then run the callbacks. Per epoch: evaluate on validation (and on test when validation improves),
checkpoint.

With a run folder the loop resumes exactly: the checkpoint holds the model, the objective's
modules, optimizer, scheduler, mask, global RNG states, the data position and the size of
``metrics.jsonl``; the data order comes from ``BatchSource.epoch_batches(epoch, start)`` and the
augmentation generator is re-derived, so a killed run finishes bit-identical on CPU.

Around the loop: the checkpoint is written and resumed in :mod:`cvlth.training.train_state`, the
epoch-end evaluation and the result (test at the best validation epoch) are
:mod:`cvlth.training.evaluation`, and ``metrics.jsonl`` is :mod:`cvlth.training.metrics_log`.

``training.precision``: the forward (``objective.train_step``) runs under ``torch.autocast`` in
bf16 or fp16; fp16 scales the loss with a ``GradScaler`` (its state is checkpointed), which skips
the optimizer step on overflow. The mask is re-applied after every step either way. Evaluation
stays in fp32.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cvlth.config import OptimConfig, ScheduleConfig, TrainingConfig
from cvlth.data.source import BatchSource
from cvlth.errors import TrainingError
from cvlth.masks import Mask
from cvlth.pruning.enforcer import MaskEnforcer
from cvlth.run_files import capture_path
from cvlth.store import RunFolder
from cvlth.training import distributed
from cvlth.training.distributed import DistEnv
from cvlth.training.evaluation import evaluate_epoch, summarize
from cvlth.training.metrics_log import MetricsLog, truncate_metrics
from cvlth.training.objective import Objective
from cvlth.training.optim import build_optimizer, build_scheduler
from cvlth.training.scalar_logs import open_scalar_logs
from cvlth.training.train_state import LoopState, resume_train_state, save_train_state, step_generator

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
    augmentation_seed: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` (and ``objective.modules()``) in place and return the result dict.

    The augmentation stream of step ``t`` is drawn from ``(augmentation_seed, t)``; without it from
    ``training.seed`` (a study passes the seed its run derives, and leaves ``train.seed`` as the
    root entropy the study's YAML gives it).

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
    seed = training.seed if augmentation_seed is None else augmentation_seed
    objective.bind(model, mask)
    extra = objective.modules()
    for module in (model, *extra.values()):
        module.to(device=device, memory_format=memory_format)
    optimizer = build_optimizer(parameter_groups(model, extra, optim.lr), optim)
    scaler = torch.amp.GradScaler(device.type, enabled=training.precision == "fp16")
    scheduler = build_scheduler(optimizer, schedule, steps_per_epoch, training.epochs)

    state = LoopState()
    if folder is not None and folder.train_state_path.is_file():
        state, mask = resume_train_state(folder, model, extra, optimizer, scheduler, mask, scaler)
    elif writer is not None:
        truncate_metrics(writer.metrics_path, 0)  # lines of a run killed before its first checkpoint
    if mask is not None:
        distributed.check_identical("mask", dict(mask), env)
    enforcer = MaskEnforcer(model, mask) if mask is not None else None
    net = _wrap(model, env, device)

    metrics_log = MetricsLog(writer.metrics_path if writer else None, open_scalar_logs(writer, mask))
    total_steps = steps_per_epoch * training.epochs

    def save_checkpoint() -> None:
        if writer is not None:
            save_train_state(
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
                    net,
                    objective,
                    batch,
                    state,
                    training,
                    seed,
                    env,
                    device,
                    memory_format,
                    optimizer,
                    scaler,
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
                record = evaluate_epoch(
                    net,
                    model,
                    extra,
                    objective,
                    state.epoch,
                    val_data,
                    test_data,
                    state.history,
                    last=state.epoch == training.epochs,
                )
                state.history.append(record)
                metrics_log.write(record)
            save_checkpoint()
    distributed.barrier(env)
    return summarize(
        state.history,
        objective.selection,
        steps=state.step,
        epochs=training.epochs,
        best_without_validation=getattr(objective, "best_without_validation", False),
    )


# --- one step -----------------------------------------------------------------------------


def _step(
    net: nn.Module,
    objective: Objective,
    batch: Any,
    state: LoopState,
    training: TrainingConfig,
    seed: int,
    env: DistEnv,
    device: torch.device,
    memory_format: torch.memory_format,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[float, dict[str, float]]:
    """Forward (under autocast) and backward of one batch; raises TrainingError on a non-finite loss."""
    batch = _to_device(distributed.shard_batch(batch, env), device, memory_format)
    generator = step_generator(seed, state.step, env.rank, device)
    optimizer.zero_grad(set_to_none=True)
    dtype = AUTOCAST_DTYPES.get(training.precision)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss, metrics = objective.train_step(net, batch, generator)
    loss_value = float(distributed.all_mean(loss.detach().float(), env))
    if not math.isfinite(loss_value):
        raise _non_finite(loss_value, state)
    scaler.scale(loss).backward()
    return loss_value, {name: float(value) for name, value in metrics.items()}


def _non_finite(value: float, state: LoopState) -> TrainingError:
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


def parameter_groups(
    model: nn.Module, extra: dict[str, nn.Module], lr: float
) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters of ``model`` and the objective's modules, in a fixed order (the
    optimizer's state is checkpointed by position). A model with ``parameter_lr_factors()`` (name
    prefix -> factor: DeepLabV3+'s backbone at 0.1x) gets one group per factor, each at ``lr`` times
    it; otherwise one plain list, as every run before groups existed."""
    factors: dict[str, float] = getattr(model, "parameter_lr_factors", dict)()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name in sorted(extra):
        named.extend((f"{name}:{n}", p) for n, p in extra[name].named_parameters() if p.requires_grad)
    if not any(factor != 1.0 for factor in factors.values()):
        return [p for _, p in named]
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in named:
        factor = next((f for prefix, f in factors.items() if name.startswith(prefix)), 1.0)
        groups.setdefault(factor, []).append(param)
    return [{"params": params, "lr": lr * factor} for factor, params in groups.items()]


def _wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    if not env.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _due(training: TrainingConfig, step: int) -> bool:
    every = training.checkpoint_every_steps
    return every is not None and step % every == 0


# --- the weights at one step (IMP's rewind point) and the progress bar ----------------------


def _capture(folder: RunFolder, step: int, model: nn.Module, extra: dict[str, nn.Module]) -> None:
    payload = {
        "step": step,
        "model": model.state_dict(),
        "modules": {n: m.state_dict() for n, m in extra.items()},
    }
    folder.write_file_atomically(capture_path(folder, step).name, lambda tmp: torch.save(payload, tmp))


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
