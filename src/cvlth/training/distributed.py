"""The training loop under ``torchrun`` (or a study's data-parallel Ray workers, which get torchrun's
variables from :mod:`cvlth.study.ray_executor`): process group from env vars, batch sharding,
identical masks.

With ``WORLD_SIZE > 1`` every rank runs :func:`cvlth.training.loop.train` on the same config; the
loop wraps the model in DistributedDataParallel, each rank trains on its own contiguous slice of
every global batch (so the global batch size, the data order and the resume position are those of a
single-process run), masks are checked to be identical on every rank, and only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cvlth.errors import TrainingError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes checkpoints, metrics and results."""
        return self.rank == 0


SINGLE = DistEnv()


def init_from_env(backend: str | None = None) -> DistEnv:
    """Join the process group that ``torchrun`` describes in RANK / WORLD_SIZE / MASTER_ADDR / ...

    Returns a single-process :class:`DistEnv` when ``WORLD_SIZE`` is unset or 1. The backend is
    nccl when CUDA is available, gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank)


def current_env() -> DistEnv:
    """The DistEnv of an already initialised process group (single-process otherwise)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    rank = dist.get_rank()
    return DistEnv(
        rank=rank, world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", rank))
    )


def shard_batch(batch: Any, env: DistEnv) -> Any:
    """This rank's contiguous slice of every tensor in a (nested) batch, along dimension 0.

    A ``list`` is a batch of per-sample items (detection / segmentation images and target dicts of
    different sizes): the rank gets its contiguous slice of the list, the items stay whole.
    """
    if not env.enabled:
        return batch
    if isinstance(batch, torch.Tensor):
        return torch.tensor_split(batch, env.world_size)[env.rank]
    if isinstance(batch, dict):
        return {key: shard_batch(value, env) for key, value in batch.items()}
    if isinstance(batch, list):
        bounds = torch.tensor_split(torch.arange(len(batch)), env.world_size)[env.rank]
        return batch[int(bounds[0]) : int(bounds[-1]) + 1] if bounds.numel() else []
    if isinstance(batch, tuple):
        return type(batch)(shard_batch(value, env) for value in batch)
    return batch


def tensors_digest(tensors: dict[str, torch.Tensor]) -> bytes:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.digest()


def check_identical(what: str, tensors: dict[str, torch.Tensor], env: DistEnv) -> None:
    """Raise TrainingError unless ``tensors`` hash the same on every rank (e.g. the mask)."""
    if not env.enabled:
        return
    mine = torch.frombuffer(bytearray(tensors_digest(tensors)), dtype=torch.uint8).to(_collective_device())
    gathered = [torch.empty_like(mine) for _ in range(env.world_size)]
    dist.all_gather(gathered, mine)
    differing = [rank for rank, theirs in enumerate(gathered) if not torch.equal(theirs, gathered[0])]
    if differing:
        raise TrainingError(
            f"the {what} differs between rank 0 and ranks {differing}",
            hint="compute it once on rank 0 and broadcast it (cvlth.training.distributed.broadcast_tensors)",
        )


def broadcast_tensors(
    tensors: dict[str, torch.Tensor], env: DistEnv, src: int = 0
) -> dict[str, torch.Tensor]:
    """Rank ``src``'s tensors on every rank (same names and shapes required everywhere)."""
    if not env.enabled:
        return tensors
    device = _collective_device()
    result = {}
    for name in sorted(tensors):
        tensor = tensors[name]
        buffer = tensor.to(device=device, dtype=torch.uint8 if tensor.dtype == torch.bool else tensor.dtype)
        dist.broadcast(buffer, src=src)
        result[name] = buffer.to(device=tensor.device, dtype=tensor.dtype)
    return result


def sync_buffers(module: nn.Module, env: DistEnv, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BN running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step every rank's BN
    statistics differ; syncing before evaluation keeps metrics and final states identical.
    """
    if not env.enabled:
        return
    with torch.no_grad():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def average_gradients(modules: dict[str, nn.Module], env: DistEnv) -> None:
    """All-reduce the gradients of modules outside the DDP wrapper (an objective's heads)."""
    if not env.enabled:
        return
    grads = [p.grad for m in modules.values() for p in m.parameters() if p.grad is not None]
    if grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= env.world_size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def agree(flag: bool, env: DistEnv, src: int = 0) -> bool:
    """Rank ``src``'s ``flag`` on every rank (e.g. whether rank 0 found a run still to compute)."""
    if not env.enabled:
        return flag
    return bool(broadcast_tensors({"flag": torch.tensor([flag])}, env, src)["flag"].item())


def all_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if not env.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / env.world_size


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def close(env: DistEnv) -> None:
    """Leave the process group :func:`init_from_env` joined (a no-op for a single process)."""
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
