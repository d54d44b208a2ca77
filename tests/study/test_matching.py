import pytest

from cvlth.results.matching import SeedStats, matching, matching_markdown


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
    # dense CI: 0.80 ± t(.975, 2) * 0.02 / sqrt(3) = 0.80 ± 4.302653 * 0.011547 = [0.7503, 0.8497]
    assert (
        "| imagenet | cifar10 | accuracy | ? | 0.8000 ± 0.0200 [0.7503, 0.8497] | 59.04% | 36.00% |" in text
    )
    assert "| x | y | accuracy | ? | 0.5000 ± 0.0000 [0.5000, 0.5000] | none | none |" in text
    assert result.to_dict()["rows"][2]["matching"] is False
    assert result.monotone_matching_sparsity == 0.36  # 48.8% fails: 59.04% does not count


def _table(source, task, dense, by_sparsity):
    return matching(source, task, dense, {s: [v] for s, v in by_sparsity.items()})


def test_universal_matching_per_task_group_and_never_for_task_specific_tickets():
    from cvlth.results.matching import ALL_TASKS, universal_matching

    dense = [0.80, 0.80]
    results = [
        _table("a", "t1", dense, {0.2: 0.9, 0.36: 0.9, 0.488: 0.9}),
        _table("a", "t2", dense, {0.2: 0.9, 0.36: 0.9, 0.488: 0.7}),
        _table("a", "t3", dense, {0.2: 0.9, 0.36: 0.7, 0.488: 0.9}),
        # a downstream IMP source: one mask per task, so no universal figure at all
        matching("d", "t1", dense, {0.2: [0.9]}, task_specific=True),
        matching("d", "t2", dense, {0.2: [0.9]}, task_specific=True),
    ]
    groups = {"pair": ["t1", "t2"], "odd": ["t1", "t3"], "missing": ["t1", "t4"]}
    universal = {(u.source, u.group): u for u in universal_matching(results, groups)}
    assert set(universal) == {("a", ALL_TASKS), ("a", "pair"), ("a", "odd")}  # t4: a never ran there
    assert universal[("a", ALL_TASKS)].universal_matching_sparsity == 0.2  # 0.36 fails t3, 0.488 t2
    assert universal[("a", "pair")].universal_matching_sparsity == 0.36  # t1 and t2 both match at 0.36
    assert universal[("a", "odd")].universal_matching_sparsity == 0.488  # t1, t3: 0.36 fails, 0.488 not
    assert universal[("a", "odd")].monotone_universal_sparsity == 0.2
    text = matching_markdown(results, groups)
    universal_section = text.split("**Universal matching sparsity**")[1].split("\n**")[0]
    assert "| a | pair | t1, t2 | 3 | 36.00% | 36.00% |" in universal_section
    assert "| d |" not in universal_section
    assert matching_entries_universal(results, groups) == {
        ("a", "t1"): {"pair": 0.36, "odd": 0.488},
        ("a", "t2"): {"pair": 0.36},
        ("a", "t3"): {"odd": 0.488},
        ("d", "t1"): None,
        ("d", "t2"): None,
    }


def matching_entries_universal(results, groups):
    """What matching.json says of each entry's universal sparsities per group (None: no universal)."""
    from cvlth.results.outputs import matching_entries

    found = {}
    for entry in matching_entries(results, groups):
        data = entry.to_json()
        if "universal_matching_sparsity" not in data:
            found[(data["source"], data["task"])] = None
            continue
        found[(data["source"], data["task"])] = {
            g: v["universal_matching_sparsity"] for g, v in data.get("universal_groups", {}).items()
        }
    return found


def test_universal_matching_sparsity_by_hand():
    from cvlth.results.matching import PRETRAINING_TASK, universal_matching

    # dense 0.80 ± 0 on every task: a ticket matches where its value is >= 0.80.
    dense = [0.80, 0.80]
    results = [
        #   sparsity:                0.2    0.36   0.488  0.5904 0.6723
        _table("a", "t1", dense, {0.2: 0.9, 0.36: 0.9, 0.488: 0.9, 0.5904: 0.9, 0.6723: 0.7}),
        _table("a", "t2", dense, {0.2: 0.9, 0.36: 0.7, 0.488: 0.9, 0.5904: 0.7}),  # no 0.6723
        _table("a", "t3", dense, {0.2: 0.9, 0.36: 0.9, 0.488: 0.85, 0.5904: 0.9, 0.6723: 0.9}),
        # on the pre-training task it would match up to 0.6723: left out of universality
        _table("a", PRETRAINING_TASK, [0.5], {0.2: 0.9, 0.6723: 0.9}),
        _table("b", "t1", dense, {0.2: 0.7, 0.36: 0.9}),
        _table("b", "t2", dense, {0.2: 0.9, 0.36: 0.7}),
        _table("c", "t1", dense, {0.36: 0.9}),
    ]
    universal = {u.source: u for u in universal_matching(results)}
    a = universal["a"]
    assert a.tasks == ("t1", "t2", "t3")
    assert a.sparsities == (0.2, 0.36, 0.488, 0.5904)  # 0.6723 was not evaluated on t2
    assert a.matching_all == (0.2, 0.488)  # 0.36 fails on t2, 0.5904 on t2
    assert a.universal_matching_sparsity == 0.488
    assert [r.extreme_matching_sparsity for r in results[:3]] == [0.5904, 0.488, 0.6723]
    assert universal["b"].universal_matching_sparsity is None  # each level fails on one task
    assert universal["c"].universal_matching_sparsity == 0.36
    assert universal["a"].to_dict()["universal_matching_sparsity"] == 0.488
    text = matching_markdown(results)
    # monotone: 20% on all tasks, 36% fails on t2
    assert (a.monotone_universal_sparsity, universal["c"].monotone_universal_sparsity) == (0.2, 0.36)
    assert universal["b"].monotone_universal_sparsity is None
    assert "| a | all | t1, t2, t3 | 4 | 48.80% | 20.00% |" in text
    assert "| b | all | t1, t2 | 2 | none | none |" in text
    assert f"| a | {PRETRAINING_TASK} | accuracy | ? | 0.5000 ± 0.0000 [–] | 67.23% | 67.23% |" in text
