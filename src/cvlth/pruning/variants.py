"""Mask variants of the paper's perturbation analysis (Sec. 4.4): what a transfer fine-tunes
instead of the ticket itself.

==========================  =====================================================================
``ticket``                  the mask itself
``random``                  the paper's m_r: a global random mask of the ticket's sparsity
``random_layerwise``        a random mask with the ticket's per-layer kept counts (an extension)
``perturbed``               the ticket with a fraction of its kept weights swapped for pruned ones
``complement``              the paper's m^c = 1 - m (sparsity 1 - s)
``complement_matched``      1 - m restricted to the ticket's per-layer kept count (random subset)
==========================  =====================================================================
"""

from __future__ import annotations

import torch

from cvlth.errors import CvlthError
from cvlth.masks import Mask
from cvlth.pruning.strategies import random_like


def vary_mask(mask: Mask, variant: str, seed: int, fraction: float = 0.1) -> Mask:
    """The mask a perturbation-analysis transfer fine-tunes (see the table above)."""
    if variant == "ticket":
        return mask
    if variant == "random":
        return random_global_like(mask, seed=seed)
    if variant == "random_layerwise":
        return random_like(mask, seed=seed)
    if variant == "perturbed":
        return mask.perturb(fraction, seed=seed)
    if variant == "complement":
        return mask.complement()
    if variant == "complement_matched":
        return restricted_complement(mask, seed=seed)
    raise CvlthError(f"unknown mask variant {variant!r}")


def random_global_like(mask: Mask, seed: int) -> Mask:
    """A uniformly random mask over all of ``mask``'s layers with exactly its number of kept weights
    (its per-layer counts are free: the paper's random mask of equal sparsity)."""
    total = sum(tensor.numel() for tensor in mask.values())
    kept = sum(int(torch.count_nonzero(tensor)) for tensor in mask.values())
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:kept]] = True
    result, start = {}, 0
    for name, tensor in mask.items():
        result[name] = flat[start : start + tensor.numel()].reshape(tensor.shape)
        start += tensor.numel()
    return Mask(result)


def restricted_complement(mask: Mask, seed: int) -> Mask:
    """1 - m, keeping per layer a random subset of the ticket's kept count (all of 1 - m if smaller)."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, keep in mask.items():
        flat = (~keep).reshape(-1)
        candidates = flat.nonzero().squeeze(1)
        budget = int(torch.count_nonzero(keep))
        if candidates.numel() > budget:
            chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:budget]]
            flat = torch.zeros_like(flat)
            flat[chosen] = True
        result[name] = flat.reshape(keep.shape)
    return Mask(result)
