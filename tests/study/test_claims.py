"""The rules of the paper's claims (cvlth.results.claims) on made-up tables: for every claim a case
that holds, one refuted and one undecided, and what a study without the needed parts gets."""

import pytest

from cvlth.results.claims import (
    HOLDS,
    NOT_TESTED,
    REFUTED,
    UNDECIDED,
    ClaimInputs,
    ClaimResult,
    MaskFacts,
    SourceInfo,
    check_claims,
    claim_c1,
    claim_c2,
    claim_c3,
    claim_c4,
    claim_c5,
    claim_c6,
    claim_c7,
    claim_c8,
    claim_c9,
    claim_c10,
    combine,
    equivalence_verdict,
)
from cvlth.results.matching import PRETRAINING_TASK, matching
from cvlth.results.outputs import PerturbationCurve, PerturbationPoint
from cvlth.results.uncertainty import Interval

DENSE = [0.80, 0.80, 0.80]  # threshold 0.80, no spread: a row's interval is its own t-interval
ABOVE = [0.90, 0.91, 0.89]  # decided matching
BELOW = [0.70, 0.71, 0.69]  # decided not matching
WIDE = [0.95, 0.65, 0.82]  # mean 0.8067 (matches), interval far across the threshold: undecided
S1, S2, S3 = 0.2, 0.36, 0.488

SOURCES = {
    "sup/up": SourceInfo("sup", "supervised", "up", "imp", "upstream", "pretrained"),
    "moco/up": SourceInfo("moco", "moco", "up", "imp", "upstream", "pretrained"),
    "sup/task": SourceInfo("sup", "supervised", "task", "imp", "downstream", "pretrained"),
    "sup/task-init": SourceInfo("sup", "supervised", "task-init", "imp", "downstream", "init"),
    "sup/task-early": SourceInfo("sup", "supervised", "task-early", "imp", "downstream", "early"),
    "sup/omp": SourceInfo("sup", "supervised", "omp", "omp", "upstream", "pretrained"),
}


def table(source, task, rows, dense=DENSE):
    return matching(source, task, dense, rows)


def inputs(*results, **kwargs):
    return ClaimInputs(matching=list(results), sources=SOURCES, **kwargs)


def test_combine():
    assert combine([]) == NOT_TESTED
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, UNDECIDED]) == UNDECIDED
    assert combine([HOLDS, UNDECIDED, REFUTED]) == REFUTED


def test_every_claim_is_not_tested_without_its_parts():
    results = check_claims(inputs())
    assert [r.claim for r in results] == [f"C{k}" for k in range(1, 11)]
    assert {r.verdict for r in results} == {NOT_TESTED}
    assert all(r.missing for r in results)  # each says what to add
    assert ClaimResult.from_json(results[0].to_json()) == results[0]
    with pytest.raises(ValueError, match="verdict"):
        ClaimResult.from_json({**results[0].to_json(), "verdict": "maybe"})


@pytest.mark.parametrize(
    ("rows", "verdict"),
    [
        ({S1: ABOVE, S2: BELOW}, HOLDS),  # a decided match
        ({S1: BELOW, S2: BELOW}, REFUTED),  # every level decided not matching
        ({S1: WIDE, S2: BELOW}, UNDECIDED),
    ],
)
def test_c1_upstream_tickets_on_the_pretraining_task(rows, verdict):
    result = claim_c1(inputs(table("sup/up", PRETRAINING_TASK, rows)))
    assert result.verdict == verdict
    assert "67.23% (supervised)" in result.evidence[0]  # the paper's Fig. 2 figure beside


@pytest.mark.parametrize(
    ("rows", "verdict"),
    [
        ({S1: ABOVE, S2: ABOVE, S3: BELOW}, HOLDS),  # two decided matching levels
        ({S1: ABOVE, S2: BELOW, S3: BELOW}, REFUTED),  # one level at most can match
        ({S1: ABOVE, S2: WIDE, S3: BELOW}, UNDECIDED),
    ],
)
def test_c2_transferred_tickets_match_over_several_rounds(rows, verdict):
    result = claim_c2(inputs(table("sup/up", "cifar10", rows), task_data={"cifar10": "cifar10"}))
    assert result.verdict == verdict
    assert "91.41% (supervised)" in result.evidence[0]


def test_c2_extensions_are_labelled_and_never_decide():
    result = claim_c2(
        inputs(table("sup/up", "t", {S1: ABOVE, S2: ABOVE}), table("sup/omp", "t", {S1: BELOW}))
    )
    assert result.verdict == HOLDS
    assert result.extensions == (
        "OMP (extension, not in the paper): sup/omp → t: extreme matching sparsity none",
    )


@pytest.mark.parametrize(
    ("theta_0", "verdict"),
    [
        ({S1: BELOW, S2: BELOW}, HOLDS),  # θ_p decided above at every level
        ({S1: BELOW, S2: [0.95, 0.96, 0.94]}, REFUTED),  # θ_p decided below at 36%
        ({S1: BELOW, S2: WIDE}, UNDECIDED),
    ],
)
def test_c3_theta_p_beats_theta_0(theta_0, verdict):
    theta_p = table("sup/task", "t", {S1: ABOVE, S2: ABOVE})
    result = claim_c3(inputs(theta_p, table("sup/task-init", "t", theta_0)))
    assert result.verdict == verdict
    assert result.evidence[0].startswith("t: sup/task − sup/task-init (θ_0): 20.00% +0.2000")


def test_c3_early_against_init_is_shown_not_decided():
    result = claim_c3(
        inputs(
            table("sup/task", "t", {S1: ABOVE}),
            table("sup/task-init", "t", {S1: BELOW}),
            table("sup/task-early", "t", {S1: [0.99, 0.98, 0.97]}),  # θ_5% far above θ_0: not a refutation
        )
    )
    assert result.verdict == REFUTED  # but θ_p is below θ_5%, which is
    assert any("θ_5% − θ_0" in line and "not decisive" in line for line in result.evidence)


def point(level, values):
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return PerturbationPoint(sparsity=0.2 * level, mean=mean, std=std, n=len(values), level=level)


def curve(source, variant, by_level):
    return PerturbationCurve(source, "t", variant, tuple(point(k, v) for k, v in by_level.items()))


@pytest.mark.parametrize(
    ("random", "init_random", "verdict"),
    [
        (BELOW, [0.79, 0.80, 0.81], HOLDS),  # θ_p gap 0.2, θ_0 gap ~0: both decided
        ([0.95, 0.96, 0.94], [0.79, 0.80, 0.81], REFUTED),  # the random mask beats the ticket
        (BELOW, [0.60, 0.61, 0.59], UNDECIDED),  # θ_0 gap 0.2 too: difference of gaps around 0
    ],
)
def test_c4_perturbation_gaps(random, init_random, verdict):
    curves = [
        curve("sup/task", "ticket", {1: ABOVE}),
        curve("sup/task", "random", {1: random}),
        curve("sup/task-init", "ticket", {1: DENSE[:2] + [0.81]}),
        curve("sup/task-init", "random", {1: init_random}),
    ]
    result = claim_c4(inputs(perturbation=curves))
    assert result.verdict == verdict
    # `random` is the paper's m_r (global, equal sparsity): no extension label
    assert "layer-matched" not in result.evidence[0] and "θ_p gap − θ_0 gap" in result.evidence[0]


def test_c4_labels_the_layer_matched_random_mask_an_extension():
    curves = [
        curve("sup/task", "ticket", {1: ABOVE}),
        curve("sup/task", "random_layerwise", {1: BELOW}),
        curve("sup/task-init", "ticket", {1: DENSE[:2] + [0.81]}),
        curve("sup/task-init", "random_layerwise", {1: [0.79, 0.80, 0.81]}),
    ]
    result = claim_c4(inputs(perturbation=curves))
    assert any("layer-matched" in line for line in [*result.evidence, *result.extensions])


def test_c4_needs_a_theta_p_finder_in_the_perturbation_analysis():
    curves = [curve("sup/task-init", "ticket", {1: ABOVE}), curve("sup/task-init", "random", {1: BELOW})]
    assert claim_c4(inputs(perturbation=curves)).verdict == NOT_TESTED


@pytest.mark.parametrize(
    ("task_specific", "verdict"),
    [
        ({S1: ABOVE, S2: ABOVE}, HOLDS),  # never below, decided above at the sparsest level
        ({S1: BELOW, S2: ABOVE}, REFUTED),  # decided below at 20%
        ({S1: ABOVE, S2: WIDE}, UNDECIDED),
    ],
)
def test_c5_task_specific_at_least_as_good(task_specific, verdict):
    transferred = table("sup/up", "voc", {S1: ABOVE, S2: BELOW})
    result = claim_c5(
        inputs(
            transferred,
            table("sup/task", "voc", task_specific),
            task_data={"voc": "voc_detection"},
            dense_prediction=frozenset({"voc"}),
        )
    )
    assert result.verdict == verdict
    assert (
        "(dense prediction)" in result.evidence[0] and "95.60% (supervised) vs 73.79%" in result.evidence[0]
    )


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ([(0.6, 0.3, 0.05)], HOLDS),  # one mask pair: the measured fall decides
        ([(0.3, 0.4, 0.05)], REFUTED),
        ([(0.6, 0.3, 0.05), (0.3, 0.5, 0.05)], UNDECIDED),  # two finder seeds disagree
    ],
)
def test_c6_iou_falls_with_sparsity(values, verdict):
    facts = MaskFacts(iou={("sup", "moco", "up"): (0.2, 0.8, values)})
    result = claim_c6(inputs(masks=facts))
    assert result.verdict == verdict
    assert result.evidence[0].startswith("sup vs moco (up,")


@pytest.mark.parametrize(
    ("kernels", "verdict"),
    [
        ({"sup": (0.79, [(0.1, 0.15, 0.05)]), "moco": (0.79, [(0.2, 0.3, 0.1)])}, HOLDS),
        ({"sup": (0.79, [(0.1, 0.15, 0.05)]), "moco": (0.79, [(0.05, 0.06, 0.04)])}, REFUTED),  # MoCo fewer
        ({"sup": (0.79, [(0.1, 0.15, 0.05), (0.1, 0.02, 0.2)])}, UNDECIDED),  # seeds disagree
    ],
)
def test_c7_zero_kernels_early_and_most_for_moco(kernels, verdict):
    result = claim_c7(inputs(masks=MaskFacts(kernels=kernels)))
    assert result.verdict == verdict


@pytest.mark.parametrize(
    ("second", "verdict"),
    [
        ({S1: ABOVE, S2: BELOW}, HOLDS),  # 20% decided on both tasks
        ({S1: BELOW, S2: BELOW}, REFUTED),  # every common level decided not matching on one task
        ({S1: WIDE, S2: BELOW}, UNDECIDED),
    ],
)
def test_c8_universal_ticket(second, verdict):
    result = claim_c8(inputs(table("sup/up", "a", {S1: ABOVE, S2: ABOVE}), table("sup/up", "b", second)))
    assert result.verdict == verdict
    assert result.evidence[0].startswith("sup/up on a, b:")


def test_c8_is_also_checked_per_task_group():
    tables = [
        table("sup/up", "a", {S1: ABOVE, S2: ABOVE}),
        table("sup/up", "b", {S1: ABOVE, S2: BELOW}),
        table("sup/up", "c", {S1: BELOW, S2: BELOW}),
    ]
    result = claim_c8(inputs(*tables, task_groups={"ab": ("a", "b"), "bc": ("b", "c"), "ax": ("a", "x")}))
    # named groups are the claim's cases (all three tasks together are not one): ab holds at S1,
    # bc is refuted (c never matches), ax is not a group this source covers (no x)
    assert [e.split(":")[0] for e in result.evidence] == [
        "sup/up (group ab) on a, b",
        "sup/up (group bc) on b, c",
    ]
    assert result.verdict == combine([HOLDS, REFUTED]) == REFUTED
    only_ab = claim_c8(inputs(*tables, task_groups={"ab": ("a", "b")}))
    assert only_ab.verdict == HOLDS


@pytest.mark.parametrize(
    ("moco", "verdict"),
    [
        ({S1: BELOW, S2: BELOW, 0.8: ABOVE}, HOLDS),  # 80% is beyond "low and mid": not a case
        ({S1: BELOW, S2: [0.95, 0.96, 0.94]}, REFUTED),
        ({S1: BELOW, S2: WIDE}, UNDECIDED),
    ],
)
def test_c9_domain_gap(moco, verdict):
    sup = table("sup/up", "visda", {S1: ABOVE, S2: ABOVE, 0.8: BELOW})
    result = claim_c9(inputs(sup, table("moco/up", "visda", moco), domain_shift=("visda",)))
    assert result.verdict == verdict
    assert claim_c9(inputs(sup, table("moco/up", "visda", moco))).verdict == NOT_TESTED  # no task marked


TEMPERATURE_SOURCES = {
    f"{name}/up": SourceInfo(name, "simclr", "up", "imp", "upstream", "pretrained")
    for name in ("t01", "t05", "t10")
}
TEMPERATURES = {"t01": 0.1, "t05": 0.5, "t10": 1.0}
TIGHT = [0.900, 0.901, 0.899]  # std 0.001: a difference's interval is about ±0.003 wide
CLOSE = [0.901, 0.902, 0.900]  # 0.001 above TIGHT


def temperature_inputs(t01, t05, t10=None):
    results = [table("t01/up", "cifar", {S1: t01}), table("t05/up", "cifar", {S1: t05})]
    if t10 is not None:
        results.append(table("t10/up", "cifar", {S1: t10}))
    return ClaimInputs(matching=results, sources=TEMPERATURE_SOURCES, simclr_temperatures=TEMPERATURES)


def test_equivalence_verdict_against_the_margin():
    assert equivalence_verdict(Interval(0.0, -0.005, 0.005, "welch")) == HOLDS
    assert equivalence_verdict(Interval(0.0, -0.01, 0.01, "welch")) == HOLDS  # the margin itself
    assert equivalence_verdict(Interval(0.02, 0.015, 0.025, "welch")) == REFUTED
    assert equivalence_verdict(Interval(-0.02, -0.025, -0.015, "welch")) == REFUTED
    assert equivalence_verdict(Interval(0.0, -0.02, 0.02, "welch")) == UNDECIDED
    assert equivalence_verdict(Interval(0.0, -0.02, 0.02, "welch"), margin=0.03) == HOLDS
    assert equivalence_verdict(Interval(0.0, None, None, "welch")) == UNDECIDED


@pytest.mark.parametrize(
    ("t01", "t05", "t10", "verdict"),
    [
        (TIGHT, CLOSE, BELOW, HOLDS),  # 0.1 ≈ 0.5 within a point, 1.0 decided below them
        (TIGHT, CLOSE, None, HOLDS),  # no extreme temperature: only the range is checked
        (TIGHT, BELOW, None, REFUTED),  # 0.1 and 0.5 twenty points apart
        (TIGHT, CLOSE, [0.99, 0.991, 0.989], REFUTED),  # the extreme is decided better
        (ABOVE, CLOSE, None, UNDECIDED),  # spread 0.01: too noisy to say they differ by under a point
        (TIGHT, CLOSE, WIDE, UNDECIDED),  # the extreme is not decided below
    ],
)
def test_c10_temperature(t01, t05, t10, verdict):
    result = claim_c10(temperature_inputs(t01, t05, t10))
    assert result.verdict == verdict
    assert result.evidence[0].startswith("up → cifar: 20.00%: τ 0.1 − τ 0.5")


def test_c10_needs_several_simclr_temperatures():
    assert claim_c10(inputs(simclr_temperatures={"simclr": 0.5})).verdict == NOT_TESTED
    one = ClaimInputs(
        matching=[table("t01/up", "cifar", {S1: ABOVE})],
        sources=TEMPERATURE_SOURCES,
        simclr_temperatures=TEMPERATURES,
    )
    assert claim_c10(one).verdict == NOT_TESTED  # only one temperature has tickets
