"""Intervals of means and differences (cvlth.results.uncertainty) against scipy and by hand, and the
decided / undecided verdicts of the matching table built on them."""

import math

import pytest
from scipy import stats as sps

from cvlth.results.matching import MatchingResult, SeedStats, decision_text, matching
from cvlth.results.uncertainty import (
    Interval,
    difference,
    mean_interval,
    paired_interval,
    proportions_interval,
    runs_to_decide,
    t_quantile,
    welch_interval,
)

A = [0.81, 0.79, 0.84, 0.80]
B = [0.78, 0.80, 0.80, 0.76]


def test_t_quantile_by_table():
    # printed Student-t tables: t(0.975, 2) = 4.303, t(0.975, 9) = 2.262
    assert t_quantile(2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(9) == pytest.approx(2.262157, abs=1e-6)


def test_mean_interval_by_hand_and_scipy():
    interval = mean_interval(SeedStats.of([0.90, 0.92, 0.94]))
    half = 4.302653 * 0.02 / math.sqrt(3)  # t(.975, 2) * s / sqrt(n)
    assert (interval.low, interval.high) == pytest.approx((0.92 - half, 0.92 + half), abs=1e-6)
    low, high = sps.t.interval(0.95, df=3, loc=sps.tmean(A), scale=sps.sem(A))
    assert SeedStats.of(A).ci95 == pytest.approx((low, high))
    assert SeedStats.of([0.5]).ci95 is None  # one run: no spread, no interval


def test_paired_interval_matches_scipy_ttest_rel():
    interval = paired_interval(A, B)
    ci = sps.ttest_rel(A, B).confidence_interval(0.95)
    assert interval.estimate == pytest.approx(sps.tmean(A) - sps.tmean(B))
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high))
    assert interval.df == 3 and interval.method == "paired"
    single = paired_interval([0.5], [0.4])
    assert single.low is None and not single.decided
    with pytest.raises(ValueError, match="equal"):
        paired_interval([0.1, 0.2], [0.1])


def test_welch_interval_matches_scipy_ttest_ind():
    c = [0.70, 0.75, 0.71]
    interval = difference(SeedStats.of(A), SeedStats.of(c))
    ci = sps.ttest_ind(A, c, equal_var=False).confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((ci.low, ci.high))
    assert interval.decided  # A is clearly above c


def test_welch_interval_of_a_difference_of_differences_by_hand():
    # (a - b) - (c - d), four groups of 3 runs, stds 0.01, 0.02, 0.01, 0.02
    groups = [
        SeedStats(0.9, 0.01, 3),
        SeedStats(0.7, 0.02, 3),
        SeedStats(0.8, 0.01, 3),
        SeedStats(0.75, 0.02, 3),
    ]
    interval = welch_interval(list(zip([1, -1, -1, 1], groups, strict=True)))
    parts = [0.01**2 / 3, 0.02**2 / 3, 0.01**2 / 3, 0.02**2 / 3]
    variance = sum(parts)
    df = variance**2 / sum(p**2 / 2 for p in parts)  # Welch–Satterthwaite
    half = sps.t.ppf(0.975, df) * math.sqrt(variance)
    assert interval.estimate == pytest.approx(0.15)
    assert (interval.low, interval.high, interval.df) == pytest.approx((0.15 - half, 0.15 + half, df))


def test_welch_interval_edge_cases():
    one = SeedStats(0.8, 0.0, 1)
    assert welch_interval([(1, one), (-1, SeedStats(0.7, 0.1, 3))]).low is None  # one run: unknown spread
    flat = welch_interval([(1, SeedStats(0.8, 0.0, 3)), (-1, SeedStats(0.7, 0.0, 3))])
    assert (flat.low, flat.high) == pytest.approx((0.1, 0.1)) and flat.decided  # runs agree exactly
    zero = welch_interval([(1, SeedStats(0.8, 0.0, 3)), (-1, SeedStats(0.8, 0.0, 3))])
    assert not zero.decided  # [0, 0] does not exclude zero


def test_interval_round_trip_and_shift():
    interval = Interval(0.1, -0.05, 0.25, "welch", 3.5)
    assert Interval.from_dict(interval.to_dict()) == interval
    shifted = interval.shifted(0.1)
    assert (shifted.estimate, shifted.low, shifted.high) == pytest.approx(
        (0.2, 0.05, 0.35)
    ) and shifted.decided


def test_matching_margin_is_paired_over_shared_seeds():
    dense = [0.80, 0.84, 0.76]  # mean 0.80, std 0.04 -> threshold 0.76
    ticket = [0.77, 0.81, 0.73]  # each seed 0.03 below its dense run: differences agree exactly
    result = matching("s", "t", dense, {0.2: ticket}, dense_keys=[0, 1, 2], ticket_keys={0.2: [0, 1, 2]})
    (row,) = result.rows
    assert row.matching and row.margin.method == "paired"
    # mean - threshold = 0.77 - 0.76 = 0.01, with a zero-width interval: the seeds all agree
    assert (row.margin.estimate, row.margin.low, row.margin.high) == pytest.approx((0.01, 0.01, 0.01))
    assert row.decided
    # the same numbers, unpaired: Welch sees two spreads of 0.04 and cannot decide
    welch = matching("s", "t", dense, {0.2: ticket}).rows[0]
    assert welch.margin.method == "welch" and not welch.decided
    ci = sps.ttest_ind(ticket, dense, equal_var=False).confidence_interval(0.95)
    assert (welch.margin.low, welch.margin.high) == pytest.approx((ci.low + 0.04, ci.high + 0.04))


def test_matching_margin_falls_back_to_welch_when_seeds_differ():
    dense, keys = [0.80, 0.84, 0.76], [0, 1, 2]
    for ticket_keys in ([0, 1, 3], [0, 1], [(1, 0), (1, 1), (1, 2)], [0, 0, 1]):
        values = [0.8] * len(ticket_keys)
        row = matching("s", "t", dense, {0.2: values}, dense_keys=keys, ticket_keys={0.2: ticket_keys}).rows[
            0
        ]
        assert row.margin.method == "welch", ticket_keys


def test_decided_rows_agree_with_the_headline_and_are_counted():
    dense = [0.78, 0.80, 0.82]  # threshold 0.78
    values = {0.2: [0.90, 0.91, 0.89], 0.36: [0.79, 0.77, 0.80], 0.488: [0.50, 0.52, 0.51]}
    result = matching(
        "s", "t", dense, values, dense_keys=[0, 1, 2], ticket_keys={s: [0, 1, 2] for s in values}
    )
    assert [(r.matching, r.decided) for r in result.rows] == [(True, True), (True, False), (False, True)]
    assert result.undecided == 1
    for row in result.rows:
        assert row.margin.estimate == pytest.approx(row.stats.mean - result.threshold)
        if row.decided:
            assert (row.margin.low > 0) == row.matching


def test_matching_json_round_trip_and_older_rows():
    result = matching("s", "t", [0.78, 0.80, 0.82], {0.2: [0.79, 0.81, 0.80]}, dense_keys=[0, 1, 2],
                      ticket_keys={0.2: [0, 1, 2]}, test_size=500)  # fmt: skip
    data = result.to_dict()
    assert data["test_size"] == 500 and data["rows"][0]["margin"]["method"] == "paired"
    assert data["dense"]["ci95"] == pytest.approx(list(SeedStats.of([0.78, 0.80, 0.82]).ci95))
    assert MatchingResult.from_dict(data) == result
    # a row written before margins: Welch from the summaries; no test size: None
    older = {**data, "rows": [{k: data["rows"][0][k] for k in ("sparsity", "mean", "std", "n", "matching")}]}
    del older["test_size"]
    read = MatchingResult.from_dict(older)
    assert read.test_size is None and read.rows[0].margin.method == "welch"
    expected = difference(SeedStats.of([0.79, 0.81, 0.80]), SeedStats.of([0.78, 0.80, 0.82]))
    assert read.rows[0].margin.low == pytest.approx(expected.low + 0.02)


def test_proportions_interval_is_walds_difference_of_two_proportions():
    interval = proportions_interval(0.90, 0.85, 2000)
    half = sps.norm.ppf(0.975) * math.sqrt((0.90 * 0.10 + 0.85 * 0.15) / 2000)  # 0.0204
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.05, 0.05 - half, 0.05 + half))
    assert interval.method == "binomial" and interval.decided
    assert not proportions_interval(0.90, 0.89, 2000).decided
    with pytest.raises(ValueError):
        proportions_interval(1.2, 0.5, 100)


def test_rows_measured_once_are_decided_by_the_test_sample_alone():
    # Fig. 2 with one finder seed: θ_p and each ticket evaluated once on 2,000 test images
    values = {0.2: [0.944], 0.8: [0.905], 0.9: [0.80]}
    result = matching("s", "pre-training task", [0.945], values, test_size=2000)
    near, below, far = result.rows
    assert all(row.margin.method == "binomial" for row in result.rows)
    assert not near.decided and near.matching is False  # 0.001 below: the test sample cannot tell
    assert below.decided and not below.matching  # 0.04 below, > 1.96 * 0.0070
    assert far.decided and (far.margin.high < 0)
    # without a test size, or in a metric that is not a fraction, the spread stays unknown
    assert all(not r.decided for r in matching("s", "t", [0.945], values).rows)
    assert all(not r.decided for r in matching("s", "t", [0.945], values, "loss", test_size=2000).rows)


def _smallest_deciding_n(mean: float, sd: float, start: int, limit: int) -> int | None:
    """By brute force with scipy: the first n whose paired t-interval, mean ± t(n-1) sd / sqrt(n),
    excludes zero."""
    for n in range(start, limit + 1):
        if sps.t.ppf(0.975, n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
    return None


def test_runs_to_decide_projects_a_paired_interval_to_more_seeds():
    ticket, dense = [0.801, 0.786, 0.795], [0.790, 0.790, 0.780]
    interval = paired_interval(ticket, dense)
    assert not interval.decided
    diffs = [a - b for a, b in zip(ticket, dense, strict=True)]
    sd = sps.tstd(diffs)
    expected = _smallest_deciding_n(sps.tmean(diffs), sd, 4, 100)
    assert expected is not None and expected > 3
    assert runs_to_decide(interval, 3) == expected
    # shifted by a margin (mean - threshold): only the estimate moves
    shifted = interval.shifted(-0.002)
    assert runs_to_decide(shifted, 3) == _smallest_deciding_n(sps.tmean(diffs) - 0.002, sd, 4, 100)


def test_runs_to_decide_says_nothing_it_cannot_project():
    decided = paired_interval([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])
    assert decided.decided and runs_to_decide(decided, 3) is None
    assert runs_to_decide(paired_interval([0.5], [0.4]), 1) is None  # one run: no spread
    assert runs_to_decide(proportions_interval(0.81, 0.80, 1000), 1) is None  # the test sample alone
    on_zero = paired_interval([0.80, 0.82, 0.78], [0.79, 0.80, 0.81])  # mean difference 0
    assert runs_to_decide(on_zero, 3) is None
    tiny = paired_interval([0.8001, 0.82, 0.78], [0.80, 0.80, 0.80])  # would take far more than 100
    assert runs_to_decide(tiny, 3, limit=100) is None


def test_undecided_rows_say_how_many_runs_would_decide_them():
    dense = [0.78, 0.80, 0.82]  # threshold 0.78
    values = {0.2: [0.79, 0.795, 0.78], 0.5: [0.50, 0.52, 0.51]}
    result = matching(
        "s", "t", dense, values, dense_keys=[0, 1, 2], ticket_keys={s: [0, 1, 2] for s in values}
    )
    undecided, decided = result.rows
    needed = runs_to_decide(undecided.margin, 3)
    assert decision_text(undecided) == f"undecided (paired; ≈ {needed} runs)"
    assert decision_text(decided) == "decided (paired)"
