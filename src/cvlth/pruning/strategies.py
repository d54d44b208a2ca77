"""Pruning strategies: turn weights (and the current mask) into a new, sparser mask.

Every strategy has the signature ``strategy(weights, fraction, mask=None, seed=0) -> Mask`` and
prunes ``round(fraction * remaining)`` of the weights the current mask still keeps; already
pruned weights stay pruned. After k IMP steps of 0.2 the sparsity is 1 - 0.8**k.

Selection works on whole tensors. For magnitudes the threshold is found by a two-pass radix
select on the IEEE-754 bit patterns (monotone for non-negative floats): a 2**15-bin histogram of
the top bits, then an exact ``kthvalue`` inside the one bin that holds the threshold. Ties are
broken deterministically: among equal scores, the lower flat index (in sorted-name order) is
pruned first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

import torch

from cvlth.errors import CvlthError
from cvlth.masks import Mask


class Strategy(Protocol):
    def __call__(
        self, weights: Mapping[str, torch.Tensor], fraction: float, mask: Mask | None = None, seed: int = 0
    ) -> Mask: ...


STRATEGIES: dict[str, Strategy] = {}


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    def decorate(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return decorate


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise CvlthError(f"unknown pruning method {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


# --- selection core ---------------------------------------------------------------------


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction <= 1.0:
        raise CvlthError(f"pruning fraction must be in [0, 1], got {fraction}")


def _current_mask(weights: Mapping[str, torch.Tensor], mask: Mask | None) -> Mask:
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    if mask is None:
        return Mask.dense(shapes)
    if mask.shapes != shapes:
        missing = sorted(set(shapes) ^ set(mask.shapes))[:5]
        raise CvlthError(f"the mask and the weights cover different tensors (e.g. {missing or 'shapes'})")
    return mask


def _score_keys(scores: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """int32 keys ordered like the non-negative float32 ``scores``; dead entries get -1."""
    keys = scores.detach().to(torch.float32).abs().contiguous().view(torch.int32).clone()
    keys[~alive] = -1
    return keys


def _threshold_key(keys: torch.Tensor, count: int) -> int:
    """The ``count``-th smallest (1-based) of ``keys`` (int32, values >= -1)."""
    shifted = keys + 1  # >= 0, < 2**31
    high = shifted >> 16
    histogram = torch.bincount(high, minlength=1 << 15)
    cumulative = histogram.cumsum(0)
    bucket = int(torch.searchsorted(cumulative, torch.tensor(count, dtype=cumulative.dtype)))
    before = int(cumulative[bucket - 1]) if bucket > 0 else 0
    in_bucket = shifted[high == bucket]
    value = int(torch.kthvalue(in_bucket, count - before).values)
    return value - 1


def _keep_flags(keys: torch.Tensor, prune_count: int) -> torch.Tensor:
    """Bool flags keeping all but the ``prune_count`` smallest keys (ties: lowest index pruned)."""
    if prune_count <= 0:
        return torch.ones_like(keys, dtype=torch.bool)
    if prune_count >= keys.numel():
        return torch.zeros_like(keys, dtype=torch.bool)
    threshold = _threshold_key(keys, prune_count)
    keep = keys > threshold
    ties = (keys == threshold).nonzero().squeeze(1)
    below = int((keys < threshold).sum())
    # Among the entries equal to the threshold, prune the first (prune_count - below).
    keep[ties[: prune_count - below]] = False
    keep[ties[prune_count - below :]] = True
    return keep


def _split(flat: torch.Tensor, shapes: Mapping[str, tuple[int, ...]]) -> Mask:
    tensors = {}
    offset = 0
    for name, shape in shapes.items():
        numel = 1
        for d in shape:
            numel *= d
        tensors[name] = flat[offset : offset + numel].reshape(shape)
        offset += numel
    return Mask(tensors)


def _prune_global(scores: Mapping[str, torch.Tensor], mask: Mask, fraction: float) -> Mask:
    names = list(mask)  # sorted
    alive = torch.cat([mask[n].reshape(-1) for n in names])
    flat_scores = torch.cat([scores[n].detach().reshape(-1).float().cpu() for n in names])
    remaining = int(alive.sum())
    prune_new = round(fraction * remaining)
    keys = _score_keys(flat_scores, alive)
    keep = _keep_flags(keys, (alive.numel() - remaining) + prune_new)
    return _split(keep, {n: mask[n].shape for n in names})


# --- strategies -------------------------------------------------------------------------


@register_strategy("magnitude")
def global_magnitude(
    weights: Mapping[str, torch.Tensor], fraction: float, mask: Mask | None = None, seed: int = 0
) -> Mask:
    """Global magnitude pruning: one threshold over all layers (the IMP step)."""
    _check_fraction(fraction)
    current = _current_mask(weights, mask)
    return _prune_global({n: w.abs() for n, w in weights.items()}, current, fraction)


@register_strategy("layerwise")
def layerwise_magnitude(
    weights: Mapping[str, torch.Tensor], fraction: float, mask: Mask | None = None, seed: int = 0
) -> Mask:
    """Prune ``fraction`` of each layer's remaining weights by magnitude, layer by layer."""
    _check_fraction(fraction)
    current = _current_mask(weights, mask)
    result = {}
    for name in current:
        alive = current[name].reshape(-1)
        remaining = int(alive.sum())
        keys = _score_keys(weights[name].detach().reshape(-1).float().cpu(), alive)
        keep = _keep_flags(keys, (alive.numel() - remaining) + round(fraction * remaining))
        result[name] = keep.reshape(current[name].shape)
    return Mask(result)


@register_strategy("random")
def random_global(
    weights: Mapping[str, torch.Tensor], fraction: float, mask: Mask | None = None, seed: int = 0
) -> Mask:
    """Prune a uniformly random ``fraction`` of the remaining weights, globally (the control)."""
    _check_fraction(fraction)
    current = _current_mask(weights, mask)
    generator = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(current[n].shape, generator=generator) for n in current}
    return _prune_global(scores, current, fraction)


def one_shot_magnitude(weights: Mapping[str, torch.Tensor], sparsity: float) -> Mask:
    """OMP: global magnitude pruning of the dense weights straight to ``sparsity``."""
    return global_magnitude(weights, sparsity)


def random_like(mask: Mask, seed: int = 0) -> Mask:
    """A random mask with exactly the same number of kept weights in every layer as ``mask``."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, tensor in mask.items():
        flat = torch.zeros(tensor.numel(), dtype=torch.bool)
        flat[torch.randperm(tensor.numel(), generator=generator)[: int(tensor.sum())]] = True
        result[name] = flat.reshape(tensor.shape)
    return Mask(result)


def imp_sparsity(rounds: int, fraction: float = 0.2) -> float:
    """Sparsity after ``rounds`` IMP steps of ``fraction``: 1 - (1 - fraction)**rounds."""
    return 1.0 - (1.0 - fraction) ** rounds
