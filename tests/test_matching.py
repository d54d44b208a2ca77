import pytest

from cvlth.study.matching import SeedStats, matching, matching_markdown


def test_seed_stats_sample_std():
    stats = SeedStats.of([0.90, 0.92, 0.94])
    assert stats.mean == pytest.approx(0.92)
    assert stats.std == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    assert SeedStats.of([0.5]).std == 0.0


def test_matching_rule_and_extreme_sparsity_by_hand():
    # dense: mean 0.80, sample std 0.02 -> threshold 0.78
    result = matching(
        "imagenet",
        "cifar10",
        dense_values=[0.78, 0.80, 0.82],
        ticket_values={
            0.2: [0.81, 0.79],  # mean 0.80 -> matches
            0.36: [0.78, 0.78],  # mean 0.78 == threshold -> matches (>=)
            0.488: [0.70, 0.72],  # mean 0.71 -> no
            0.5904: [0.785, 0.779],  # mean 0.782 -> matches again
            0.6723: [0.60, 0.62],
        },
    )
    assert result.threshold == pytest.approx(0.78)
    assert [row.matching for row in result.rows] == [True, True, False, True, False]
    assert result.extreme_matching_sparsity == 0.5904
    none = matching("x", "y", [0.5, 0.5], {0.2: [0.1, 0.2]})
    assert none.extreme_matching_sparsity is None
    text = matching_markdown([result, none])
    assert "| imagenet | cifar10 | accuracy | 0.8000 ± 0.0200 | 59.04% |" in text
    assert "| x | y | accuracy | 0.5000 ± 0.0000 | none |" in text
    assert result.to_dict()["rows"][2]["matching"] is False
