"""Mask structure: per-layer sparsity and fully pruned k×k kernels, against a random baseline.

A *kernel* of a conv weight of shape (out, in, kh, kw) is ``mask[o, i, :, :]``; it is *fully
pruned* when none of its kh·kw entries is kept. A fully pruned kernel is structure a sparse
inference engine can skip, and magnitude pruning makes many more of them than chance does.

1×1 (pointwise) convs: a kernel is a single weight, so "fully pruned kernels" is just the number
of pruned weights and says nothing about structure. Such layers are still reported (with
``pointwise=True``) but are left out of the spatial totals ``zero_kernels`` /
``expected_random_zero_kernels``; their counts are summed separately in ``zero_pointwise``.

Random baseline: a random mask with the same kept count ``kept`` in a layer of ``n`` weights keeps
a uniform random subset of size ``kept``. A given kernel of ``s = kh·kw`` entries is fully pruned
with the exact hypergeometric probability ``C(n - s, kept) / C(n, kept)``
``= prod_{i<s} (n - kept - i) / (n - i)`` (s ≤ 49 factors, so the product is exact and cheap and
needs no log space); the expected count is ``n_kernels`` times that. It is close to
``(1 - p)**s`` for large layers but stays exact for tiny ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cvlth.errors import MaskError
from cvlth.masks import Mask
from cvlth.scope import natural_sorted


def kernel_map(tensor: torch.Tensor) -> np.ndarray:
    """2-D bool array (out channels × in channels), True where the kernel is fully pruned."""
    if tensor.ndim != 4:
        raise MaskError(f"kernel maps need a 4-D conv mask (out, in, kh, kw), got shape {list(tensor.shape)}")
    return (~tensor.bool().any(dim=(2, 3))).numpy()


def kernel_maps(mask: Mask, include_pointwise: bool = False) -> dict[str, np.ndarray]:
    """Layer name -> :func:`kernel_map` for every 4-D layer (1×1 convs only if asked)."""
    return {
        name: kernel_map(mask[name])
        for name in natural_sorted(mask)
        if mask[name].ndim == 4 and (include_pointwise or not _is_pointwise(mask[name]))
    }


def _is_pointwise(tensor: torch.Tensor) -> bool:
    return tensor.ndim == 4 and tensor.shape[2] * tensor.shape[3] == 1


def prob_kernel_fully_pruned(n: int, kept: int, kernel_size: int) -> float:
    """P(all ``kernel_size`` given entries are pruned) when ``kept`` of ``n`` are kept at random.

    Hypergeometric: C(n - s, kept) / C(n, kept) = prod_{i<s} (n - kept - i) / (n - i).
    """
    if not 0 <= kept <= n or kernel_size > n:
        raise MaskError(f"need 0 <= kept <= n and kernel size <= n, got n={n}, kept={kept}, s={kernel_size}")
    prob = 1.0
    for i in range(kernel_size):
        prob *= max(n - kept - i, 0) / (n - i)
    return prob


def expected_random_zero_kernels(shape: tuple[int, ...], kept: int) -> float:
    """Expected fully pruned kernels of a layer of ``shape`` under a random mask keeping ``kept``."""
    out_ch, in_ch, kh, kw = shape
    n = out_ch * in_ch * kh * kw
    return out_ch * in_ch * prob_kernel_fully_pruned(n, kept, kh * kw)


@dataclass(frozen=True)
class LayerKernels:
    name: str
    shape: list[int]
    pointwise: bool  # 1×1 conv: a "kernel" is one weight, not spatial structure
    sparsity: float
    kernels: int
    zero_kernels: int
    expected_random_zero_kernels: float

    @property
    def zero_fraction(self) -> float:
        return self.zero_kernels / self.kernels if self.kernels else 0.0


@dataclass(frozen=True)
class KernelReport:
    """Per-layer kernel structure of one mask; totals cover spatial (k×k, k>1) layers only."""

    sparsity: float
    layers: list[LayerKernels]
    kernels: int
    zero_kernels: int
    expected_random_zero_kernels: float
    pointwise_kernels: int
    zero_pointwise: int

    @property
    def zero_kernel_ratio(self) -> float:
        """Share of the spatial k×k kernels that are fully pruned."""
        return self.zero_kernels / self.kernels if self.kernels else 0.0

    @property
    def expected_random_zero_kernel_ratio(self) -> float:
        """The same share expected for a random mask with this mask's per-layer kept counts."""
        return self.expected_random_zero_kernels / self.kernels if self.kernels else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        return {layer.name: layer.sparsity for layer in self.layers}

    def zero_kernel_counts(self, include_pointwise: bool = False) -> dict[str, int]:
        return {
            layer.name: layer.zero_kernels
            for layer in self.layers
            if include_pointwise or not layer.pointwise
        }

    def expected_random_counts(self, include_pointwise: bool = False) -> dict[str, float]:
        return {
            layer.name: layer.expected_random_zero_kernels
            for layer in self.layers
            if include_pointwise or not layer.pointwise
        }

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> KernelReport:
        fields = dict(data)
        fields["layers"] = [LayerKernels(**layer) for layer in data["layers"]]
        return cls(**fields)


def _layer_kernels(name: str, tensor: torch.Tensor) -> LayerKernels:
    shape = tuple(tensor.shape)
    kept = int(torch.count_nonzero(tensor))
    return LayerKernels(
        name=name,
        shape=list(shape),
        pointwise=_is_pointwise(tensor),
        sparsity=1.0 - kept / tensor.numel(),
        kernels=shape[0] * shape[1],
        zero_kernels=int(kernel_map(tensor).sum()),
        expected_random_zero_kernels=expected_random_zero_kernels(shape, kept),
    )


def kernel_report(mask: Mask) -> KernelReport:
    """Sparsity, fully pruned kernels and the random expectation for every 4-D layer of ``mask``,
    layers in natural order (``layer3.2`` before ``layer3.10``).

    Non-4-D entries (e.g. a linear head, if a scope includes one) have no kernels and are skipped.
    """
    layers = [_layer_kernels(name, mask[name]) for name in natural_sorted(mask) if mask[name].ndim == 4]
    spatial = [layer for layer in layers if not layer.pointwise]
    pointwise = [layer for layer in layers if layer.pointwise]
    return KernelReport(
        sparsity=mask.sparsity,
        layers=layers,
        kernels=sum(layer.kernels for layer in spatial),
        zero_kernels=sum(layer.zero_kernels for layer in spatial),
        expected_random_zero_kernels=sum(layer.expected_random_zero_kernels for layer in spatial),
        pointwise_kernels=sum(layer.kernels for layer in pointwise),
        zero_pointwise=sum(layer.zero_kernels for layer in pointwise),
    )
