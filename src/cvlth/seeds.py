"""Every random choice of a run derives from its seeds here, through numpy's ``SeedSequence``.

A run's *root entropy* is the tuple of integers that make its runs independent: a transfer's
``seed`` and its recipe's ``train.seed`` (and its ticket's finder seed, when not 0); an IMP run's ``seed`` (its finder seed, one of a study
finder's ``seeds``) and its recipe's ``train.seed``; a baseline's ``seed`` (its finder seed); a
pre-training's ``train.seed``. :func:`derive_seeds`
spawns one independent stream per source of randomness from it, so two seeds of one transfer differ
in data order, augmentation, new parameters, mask variants and everything drawn from torch's
global RNG (dropout, detection RoI sampling), and the same seed repeats all of them exactly.
:func:`mix` derives sub-streams (an epoch's order, a level's random mask) from one of them.

The deterministic subsets of a dataset (``max_train`` ...) are part of the dataset's definition,
not of a run's randomness: every run of a study sees the same images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# torch.Generator.manual_seed takes < 2**64; 63 bits also leave room for callers' arithmetic.
_SEED_BITS = 63
#: The largest seed a user may give (``--seed``): every seed fits torch's generators and int64.
MAX_SEED = 2**_SEED_BITS - 1


@dataclass(frozen=True)
class RunSeeds:
    """One seed per source of randomness of a run (all derived from the same root entropy)."""

    data_order: int  # which images form each training batch, per epoch
    augmentation: int  # crops, flips, colour jitter, blur: the loop's per-step generator
    init: int  # newly initialised parameters (task head, re-initialised stem, θ_0, detector heads)
    objective: int  # the objective's own parameters and state (projection heads, MoCo's queue)
    mask: int  # mask variants and random masks (complement subsets, random-like, perturbed)
    torch_global: int  # torch's global RNG at the start of the run (dropout, RoI samplers)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_STREAMS = tuple(RunSeeds.__dataclass_fields__)


def _to_seed(sequence: np.random.SeedSequence) -> int:
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(64 - _SEED_BITS))


def derive_seeds(*entropy: int) -> RunSeeds:
    """The seeds of a run whose root entropy is ``entropy`` (non-negative integers)."""
    if not entropy or any(int(value) < 0 for value in entropy):
        raise ValueError(f"a run's root entropy must be non-negative integers (got {entropy})")
    children = np.random.SeedSequence([int(value) for value in entropy]).spawn(len(_STREAMS))
    return RunSeeds(**{name: _to_seed(child) for name, child in zip(_STREAMS, children, strict=True)})


def mix(seed: int, *keys: int) -> int:
    """A seed for the sub-stream ``keys`` of ``seed`` (e.g. an epoch of a data order)."""
    return _to_seed(np.random.SeedSequence([int(seed), *(int(key) for key in keys)]))
