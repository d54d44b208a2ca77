import json

import pytest
import torch

from cvlth.analysis.overlap import IoUTable, expected_random_iou, iou_table, pair_overlap, random_iou
from cvlth.errors import MaskError
from cvlth.masks import Mask
from cvlth.pruning.strategies import random_like


def _mask(**layers):
    return Mask({name: torch.tensor(values, dtype=torch.bool) for name, values in layers.items()})


@pytest.mark.parametrize("p", [0.0001, 0.05, 0.2, 0.5, 0.8, 1.0])
def test_expected_random_iou_equal_density_is_p_over_2_minus_p(p):
    assert expected_random_iou(p, p) == pytest.approx(p / (2 - p), rel=1e-12)


def test_expected_random_iou_unequal_and_edges():
    # densities 0.5 and 0.25: E inter = 0.125, E union = 0.625
    assert expected_random_iou(0.5, 0.25) == pytest.approx(0.2)
    assert expected_random_iou(0.0, 0.0) == 1.0  # like Mask.iou of two empty masks
    assert expected_random_iou(0.0, 0.3) == 0.0
    with pytest.raises(MaskError):
        expected_random_iou(1.5, 0.2)


def test_random_iou_against_hand_computation():
    # layer a: n=4, k1=2, k2=1 -> E inter 0.5, E union 2.5; layer b: n=2, k1=1, k2=2 -> 1, 2
    m1 = _mask(a=[1, 1, 0, 0], b=[1, 0])
    m2 = _mask(a=[0, 0, 1, 0], b=[1, 1])
    assert random_iou(m1, m2, per_layer=True) == pytest.approx({"a": 0.5 / 2.5, "b": 1 / 2})
    assert random_iou(m1, m2) == pytest.approx((0.5 + 1) / (2.5 + 2))


def test_pair_overlap_and_table_against_hand_computation():
    m1 = _mask(a=[1, 1, 0, 0], b=[1, 0])
    m2 = _mask(a=[1, 0, 1, 0], b=[1, 1])
    m3 = _mask(a=[0, 0, 1, 1], b=[0, 1])  # complement of m1
    pair = pair_overlap(m1, m2, "x", "y")
    # a: inter {0} / union {0,1,2}; b: inter {0} / union {0,1}; global 2 / 5
    assert pair.layer_iou == pytest.approx({"a": 1 / 3, "b": 1 / 2})
    assert pair.iou == pytest.approx(2 / 5)
    assert pair.random_iou == pytest.approx((1 + 1) / (3 + 2))  # a: 2*2/4=1, union 3; b: 1, union 2

    table = iou_table({"m1": m1, "m2": m2, "m3": m3})
    assert table.names == ["m1", "m2", "m3"]
    assert table.iou[0][2] == table.iou[2][0] == 0.0
    assert table.iou[0][1] == table.iou[1][0] == pytest.approx(2 / 5)
    assert [table.iou[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    density = 3 / 6
    assert table.random_iou[0][0] == pytest.approx(density / (2 - density))  # every layer at 50%
    assert table.random_iou[0][2] == pytest.approx(table.random_iou[0][0])
    assert [(p.a, p.b) for p in table.pairs] == [("m1", "m2"), ("m1", "m3"), ("m2", "m3")]
    assert table.sparsity == {"m1": 0.5, "m2": pytest.approx(1 / 3), "m3": 0.5}


def test_table_round_trips_through_json():
    table = iou_table({"a": _mask(w=[1, 0, 1]), "b": _mask(w=[1, 1, 0])})
    restored = IoUTable.from_dict(json.loads(table.to_json()))
    assert restored == table


def test_mismatched_masks_are_rejected():
    with pytest.raises(MaskError):
        random_iou(_mask(a=[1, 0]), _mask(b=[1, 0]))
    with pytest.raises(MaskError):
        iou_table({})


def test_global_random_baseline_matches_monte_carlo():
    # Layers of different sizes and densities; the baseline pools them like the real IoU does.
    generator = torch.Generator().manual_seed(1)
    shapes = {"l1": (16, 8, 3, 3), "l2": (32, 16, 3, 3), "l3": (64, 32, 1, 1)}
    densities_a = {"l1": 0.6, "l2": 0.3, "l3": 0.1}
    densities_b = {"l1": 0.4, "l2": 0.5, "l3": 0.2}

    def mask_with(densities):
        return Mask({n: torch.rand(s, generator=generator) < densities[n] for n, s in shapes.items()})

    a, b = mask_with(densities_a), mask_with(densities_b)
    ious = [random_like(a, seed=2 * i).iou(random_like(b, seed=2 * i + 1)) for i in range(200)]
    assert sum(ious) / len(ious) == pytest.approx(random_iou(a, b), abs=0.01)
    # and the closed form for one layer at equal density
    single = Mask({"w": torch.rand(64, 64, 3, 3, generator=generator) < 0.3})
    p = single.density
    ious = [random_like(single, seed=2 * i).iou(random_like(single, seed=2 * i + 1)) for i in range(50)]
    assert sum(ious) / len(ious) == pytest.approx(p / (2 - p), abs=0.005)


def test_per_layer_values_in_natural_order():
    names = ["layer3.10.conv1.weight", "layer3.2.conv1.weight", "layer3.1.conv1.weight"]
    a = Mask({n: torch.tensor([True, False, True, False]) for n in names})
    b = Mask({n: torch.tensor([True, True, False, False]) for n in names})
    natural = ["layer3.1.conv1.weight", "layer3.2.conv1.weight", "layer3.10.conv1.weight"]
    pair = pair_overlap(a, b)
    assert list(pair.layer_iou) == natural and list(pair.layer_random_iou) == natural
    assert list(random_iou(a, b, per_layer=True)) == natural
    assert pair.layer_iou["layer3.10.conv1.weight"] == pytest.approx(1 / 3)
