import itertools
import json
import math

import numpy as np
import pytest
import torch

from cvlth.analysis.kernels import (
    KernelReport,
    expected_random_zero_kernels,
    kernel_map,
    kernel_maps,
    kernel_report,
    prob_kernel_fully_pruned,
)
from cvlth.errors import MaskError
from cvlth.masks import Mask
from cvlth.pruning.strategies import random_like

ZERO = [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
ONE_KEPT = [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
FULL = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
# out=2, in=2: kernels (0,0) and (1,1) fully pruned, (0,1) keeps 1 entry, (1,0) keeps 9.
HAND = [[ZERO, ONE_KEPT], [FULL, ZERO]]


def _numpy_zero_kernels(array: np.ndarray) -> np.ndarray:
    """Independent count with plain loops: True where a kernel has no kept entry."""
    out_ch, in_ch = array.shape[:2]
    result = np.zeros((out_ch, in_ch), dtype=bool)
    for o in range(out_ch):
        for i in range(in_ch):
            result[o, i] = not any(array[o, i].flatten())
    return result


def test_kernel_map_of_a_hand_written_mask():
    tensor = torch.tensor(HAND, dtype=torch.bool)
    assert kernel_map(tensor).tolist() == [[True, False], [False, True]]
    with pytest.raises(MaskError):
        kernel_map(torch.ones(3, 3, dtype=torch.bool))


def test_report_of_a_hand_written_mask():
    mask = Mask(
        {
            "layer1.0.conv2.weight": torch.tensor(HAND, dtype=torch.bool),
            "layer1.0.conv1.weight": torch.tensor([[[[1]], [[0]]], [[[0]], [[0]]]], dtype=torch.bool),
        }
    )
    report = kernel_report(mask)
    spatial, pointwise = report.layers[1], report.layers[0]  # sorted by name
    assert (spatial.name, spatial.pointwise, spatial.kernels, spatial.zero_kernels) == (
        "layer1.0.conv2.weight",
        False,
        4,
        2,
    )
    assert spatial.sparsity == pytest.approx(1 - 10 / 36)
    # 10 of 36 kept at random: P(9 given entries all pruned) = C(27, 10) / C(36, 10)
    assert spatial.expected_random_zero_kernels == pytest.approx(4 * math.comb(27, 10) / math.comb(36, 10))
    assert (pointwise.pointwise, pointwise.kernels, pointwise.zero_kernels) == (True, 4, 3)
    assert (report.kernels, report.zero_kernels) == (4, 2)  # totals: spatial layers only
    assert (report.pointwise_kernels, report.zero_pointwise) == (4, 3)
    assert report.zero_kernel_counts() == {"layer1.0.conv2.weight": 2}
    assert report.zero_kernel_counts(include_pointwise=True)["layer1.0.conv1.weight"] == 3
    assert report.layer_sparsity()["layer1.0.conv1.weight"] == 0.75
    assert list(kernel_maps(mask)) == ["layer1.0.conv2.weight"]
    assert kernel_maps(mask, include_pointwise=True)["layer1.0.conv1.weight"].tolist() == [
        [False, True],
        [True, True],
    ]
    assert KernelReport.from_dict(json.loads(report.to_json())) == report


def test_zero_kernels_match_an_independent_numpy_count():
    generator = torch.Generator().manual_seed(3)
    # per-kernel keep probabilities make some kernels empty, like magnitude pruning does
    keep_prob = torch.rand(8, 6, 1, 1, generator=generator) ** 3
    tensor = torch.rand(8, 6, 3, 3, generator=generator) < keep_prob
    mask = Mask({"w": tensor, "dense": torch.ones(4, 4, 5, 5, dtype=torch.bool)})
    report = kernel_report(mask)
    expected = _numpy_zero_kernels(tensor.numpy())
    assert np.array_equal(kernel_maps(mask)["w"], expected)
    assert report.zero_kernel_counts() == {"dense": 0, "w": int(expected.sum())}
    assert report.zero_kernels == int(expected.sum())
    assert report.expected_random_counts()["dense"] == 0.0


def test_hypergeometric_probability_against_brute_force_and_approximation():
    # brute force: enumerate all kept subsets of a 6-entry layer, kernel = first 2 entries
    n, kept, size = 6, 3, 2
    subsets = list(itertools.combinations(range(n), kept))
    brute = sum(1 for s in subsets if not set(s) & {0, 1}) / len(subsets)
    assert prob_kernel_fully_pruned(n, kept, size) == pytest.approx(brute)
    assert prob_kernel_fully_pruned(10, 9, 3) == 0.0  # only one pruned entry
    assert prob_kernel_fully_pruned(10, 0, 3) == 1.0
    # large layer: close to (1 - p)**9
    n, kept = 64 * 64 * 9, 20000
    approx = (1 - kept / n) ** 9
    assert prob_kernel_fully_pruned(n, kept, 9) == pytest.approx(approx, rel=1e-2)
    with pytest.raises(MaskError):
        prob_kernel_fully_pruned(5, 6, 1)


def test_expected_random_zero_kernels_matches_random_masks():
    generator = torch.Generator().manual_seed(4)
    mask = Mask({"w": torch.rand(32, 32, 3, 3, generator=generator) < 0.25})
    expected = expected_random_zero_kernels((32, 32, 3, 3), mask.kept)
    observed = [kernel_report(random_like(mask, seed=s)).zero_kernels for s in range(100)]
    mean = sum(observed) / len(observed)
    # std of one count is < sqrt(1024 * p) ~ 12; the mean of 100 is within ~1.2 at 1 sigma
    assert mean == pytest.approx(expected, abs=4.0)


RESNET101_LIKE = [
    "layer3.10.conv2.weight",
    "layer3.2.conv2.weight",
    "layer3.22.conv2.weight",
    "layer3.0.downsample.0.weight",
    "layer3.1.conv2.weight",
    "layer4.0.conv2.weight",
    "layer3.0.conv2.weight",
]
NATURAL = [
    "layer3.0.conv2.weight",
    "layer3.0.downsample.0.weight",
    "layer3.1.conv2.weight",
    "layer3.2.conv2.weight",
    "layer3.10.conv2.weight",
    "layer3.22.conv2.weight",
    "layer4.0.conv2.weight",
]


def test_layers_in_natural_order_for_resnet101_names():
    from cvlth.analysis.plots.bars import _layer_order
    from cvlth.scope import natural_sorted

    assert natural_sorted(RESNET101_LIKE) == NATURAL
    assert sorted(RESNET101_LIKE) != NATURAL  # plain string order puts layer3.10 before layer3.2
    mask = Mask(
        {
            name: torch.ones(2, 2, 1 if "downsample" in name else 3, 3, dtype=torch.bool)
            for name in RESNET101_LIKE
        }
    )
    assert [layer.name for layer in kernel_report(mask).layers] == NATURAL
    assert list(kernel_report(mask).layer_sparsity()) == NATURAL
    assert list(kernel_maps(mask, include_pointwise=True)) == NATURAL
    assert (
        _layer_order(
            {"a": dict.fromkeys(RESNET101_LIKE[:4], 0.5), "b": dict.fromkeys(RESNET101_LIKE[3:], 0.5)}
        )
        == NATURAL
    )


def test_zero_kernel_ratio_by_hand():
    mask = Mask(
        {
            "layer1.0.conv2.weight": torch.tensor(HAND, dtype=torch.bool),  # 2 of 4 kernels fully pruned
            "layer1.0.conv3.weight": torch.zeros(2, 3, 3, 3, dtype=torch.bool),  # 6 of 6
            "layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1, dtype=torch.bool),  # 1x1: not counted
        }
    )
    report = kernel_report(mask)
    assert report.zero_kernel_ratio == pytest.approx(8 / 10)
    # random: HAND layer as in test_report_of_a_hand_written_mask, the empty layer certainly all pruned
    expected = 4 * math.comb(27, 10) / math.comb(36, 10) + 6
    assert report.expected_random_zero_kernel_ratio == pytest.approx(expected / 10)
