"""The contract between datasets and the training loop.

A :class:`BatchSource` yields one epoch of batches in an order fixed by ``(seed, epoch)``, and can
start mid-epoch, which is what makes exact resume possible: the loop records (epoch, batch index)
and asks for ``epoch_batches(epoch, start=index)`` after a restart.

Batches hold raw data (uint8 images, int64 labels). Augmentation and normalisation are applied by
the objective on the training device with batch tensor ops, taking an explicit ``torch.Generator``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch

from cvlth.seeds import mix


@runtime_checkable
class BatchSource(Protocol):
    def __len__(self) -> int:
        """Batches per epoch."""
        ...

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of ``epoch`` from index ``start`` on, deterministic in (seed, epoch)."""
        ...


class TensorBatchSource:
    """In-memory tensors served in shuffled (or fixed) order; batch = tuple of tensor slices."""

    def __init__(
        self,
        *tensors: torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("TensorBatchSource needs tensors with one common first dimension")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last

    @property
    def num_examples(self) -> int:
        return int(self.tensors[0].shape[0])

    def __len__(self) -> int:
        n = self.num_examples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_examples)
        generator = torch.Generator().manual_seed(mix(self.seed, epoch))
        return torch.randperm(self.num_examples, generator=generator)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        order = self.order(epoch)
        for index in range(start, len(self)):
            chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
            yield tuple(t[chosen] for t in self.tensors)
