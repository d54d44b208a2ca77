"""Mask overlap: IoU of kept weights between tickets, always beside a random-mask baseline.

IoU = |A ∩ B| / |A ∪ B| over kept weights. On its own an IoU is hard to read: two masks at 80%
density overlap a lot by chance. So every IoU here comes with the IoU that two *independent*
random masks with the same per-layer kept counts would have.

Random baseline. In one layer of ``n`` weights, let A and B be independent uniform random subsets
of fixed sizes ``k1`` and ``k2``. Then ``E|A ∩ B| = k1 * k2 / n`` (each of the k1 entries of A is
in B with probability k2 / n) and ``E|A ∪ B| = k1 + k2 - E|A ∩ B|``. We report the *ratio of these
expectations*, not the expectation of the ratio: it is exact up to O(1/n) for layers of thousands
of weights, has a closed form, and for densities p, q gives ``pq / (p + q - pq)``; for equal
densities ``p / (2 - p)`` as in SPEC §6. The global baseline sums expected intersections and
expected unions over layers before dividing, exactly as the global IoU sums real counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from cvlth.errors import MaskError
from cvlth.masks import Mask
from cvlth.scope import in_natural_order


def expected_random_iou(p: float, q: float) -> float:
    """IoU of two independent random masks of densities ``p`` and ``q`` (ratio of expectations).

    ``pq / (p + q - pq)``; ``p / (2 - p)`` when ``p == q``. 1.0 when both keep nothing, matching
    :meth:`Mask.iou`.
    """
    for value in (p, q):
        if not 0.0 <= value <= 1.0:
            raise MaskError(f"densities must be in [0, 1], got {value}")
    inter = p * q
    union = p + q - inter
    return inter / union if union > 0 else 1.0


def _expected_counts(k1: int, k2: int, n: int) -> tuple[float, float]:
    """(E|A ∩ B|, E|A ∪ B|) for independent uniform subsets of sizes k1, k2 of n items."""
    inter = k1 * k2 / n if n else 0.0
    return inter, k1 + k2 - inter


def _ratio(inter: float, union: float) -> float:
    return inter / union if union > 0 else 1.0


def _expected_layer_counts(mask_a: Mask, mask_b: Mask) -> dict[str, tuple[float, float]]:
    if mask_a.shapes != mask_b.shapes:
        raise MaskError("the two masks cover different weights; compare tickets of the same model")
    counts_b = mask_b.layer_counts()
    return {
        name: _expected_counts(k1, counts_b[name][0], n) for name, (k1, n) in mask_a.layer_counts().items()
    }


def _global_random_iou(layers: Mapping[str, tuple[float, float]]) -> float:
    return _ratio(sum(i for i, _ in layers.values()), sum(u for _, u in layers.values()))


def random_iou(mask_a: Mask, mask_b: Mask, per_layer: bool = False) -> float | dict[str, float]:
    """Expected IoU of two independent random masks with the per-layer kept counts of a and b.

    Global (default): sum of per-layer expected intersections / sum of expected unions.
    ``per_layer=True``: layer name -> that layer's expected IoU.
    """
    layers = _expected_layer_counts(mask_a, mask_b)
    if per_layer:
        return in_natural_order({name: _ratio(*counts) for name, counts in layers.items()})
    return _global_random_iou(layers)


@dataclass(frozen=True)
class PairOverlap:
    """Overlap of two tickets: observed IoU and random baseline, global and per layer."""

    a: str
    b: str
    iou: float
    random_iou: float
    layer_iou: dict[str, float] = field(default_factory=dict)
    layer_random_iou: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class IoUTable:
    """Pairwise overlap of a set of named tickets (usually all at one sparsity).

    ``iou[i][j]`` and ``random_iou[i][j]`` are symmetric; the diagonal holds 1.0 and the
    baseline ``p / (2 - p)`` of a ticket against a random mask of its own density.
    ``pairs`` holds each unordered pair once (i < j) with per-layer values.
    """

    names: list[str]
    iou: list[list[float]]
    random_iou: list[list[float]]
    sparsity: dict[str, float]
    pairs: list[PairOverlap]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping) -> IoUTable:
        return cls(
            names=list(data["names"]),
            iou=[list(row) for row in data["iou"]],
            random_iou=[list(row) for row in data["random_iou"]],
            sparsity=dict(data["sparsity"]),
            pairs=[PairOverlap(**pair) for pair in data["pairs"]],
        )


def pair_overlap(mask_a: Mask, mask_b: Mask, name_a: str = "a", name_b: str = "b") -> PairOverlap:
    """Observed and random-baseline IoU of two tickets, global and per layer."""
    layers = _expected_layer_counts(mask_a, mask_b)
    return PairOverlap(
        a=name_a,
        b=name_b,
        iou=mask_a.iou(mask_b),
        random_iou=_global_random_iou(layers),
        layer_iou=in_natural_order(mask_a.layer_iou(mask_b)),
        layer_random_iou=in_natural_order({name: _ratio(*counts) for name, counts in layers.items()}),
    )


def iou_table(masks: Mapping[str, Mask]) -> IoUTable:
    """Pairwise IoU and random-baseline IoU of named tickets, e.g. {"imagenet": m1, "simclr": m2}."""
    names = list(masks)
    if not names:
        raise MaskError("iou_table needs at least one mask")
    size = len(names)
    iou = [[1.0] * size for _ in range(size)]
    rand = [[1.0] * size for _ in range(size)]
    pairs = []
    for i, name_i in enumerate(names):
        rand[i][i] = _global_random_iou(_expected_layer_counts(masks[name_i], masks[name_i]))
        for j in range(i + 1, size):
            pair = pair_overlap(masks[name_i], masks[names[j]], name_i, names[j])
            iou[i][j] = iou[j][i] = pair.iou
            rand[i][j] = rand[j][i] = pair.random_iou
            pairs.append(pair)
    sparsity = {name: masks[name].sparsity for name in names}
    return IoUTable(names=names, iou=iou, random_iou=rand, sparsity=sparsity, pairs=pairs)
