"""The paper's claims (SPEC §8), checked one by one on a study's results.

Each claim has one rule, :func:`claim_c1` ... :func:`claim_c10`, on plain inputs (:class:`ClaimInputs`:
the matching table, the perturbation curves, mask facts and what each ticket source is). A rule
splits its claim into *cases* (a source, a task, a level, a pair of pre-trainings), decides each one
from a 95% interval (:mod:`cvlth.results.uncertainty`) and combines them with :func:`combine`: the
claim is *refuted* when a case is decided against it, *undecided* when no case is against it but one
is not decided, and *holds* when every case is decided for it. A claim whose finders, tasks or
analyses the study lacks is *not tested*, with what to add to test it.

The rules, case by case (every interval 95%, Welch's two-sample one between different tickets):

* C1 -- per upstream IMP source on its pre-training task (Fig. 2): for when a level is decided
  matching, against when every level is decided not matching.
* C2 -- per upstream IMP source and downstream task: for when two or more levels are decided
  matching ("several IMP rounds"), against when fewer than two levels can still match.
* C3 -- per task-specific IMP source rewound to θ_p, each θ_0 / θ_5% source of the same pre-training
  and task, and each common level: for when θ_p's mean is decided above, against when decided below.
* C4 -- per θ_p-rewound perturbation finder, task, mask variant and level: for when the IMP ticket
  is decided above the variant; where a θ_0-rewound finder of the same pre-training and task has the
  same variant and level, also for when the θ_p gap is decided larger than the θ_0 gap.
* C5 -- per pre-training and task with both task-specific (θ_p) and upstream IMP tickets: against
  when task-specific is decided below at some common level, for when it is not and it is decided
  above at the sparsest common level.
* C6 -- per pair of pre-trainings with the same upstream IMP finder: for when the IoU of their
  masks falls from the first to the last level (several finder seeds: the fall's t-interval
  excludes zero; one: the measured fall is positive).
* C7 -- per upstream IMP ticket at the level nearest 79.03%: for when the share of fully pruned
  k×k kernels is larger in the first half of the layers than in the second; and, with a MoCo
  pre-training, for when its masks have the largest share of fully pruned kernels.
* C8 -- per upstream IMP source with two or more downstream tasks: for when some common level is
  decided matching on every task, against when every common level is decided not matching on one.
* C9 -- per task in ``domain_shift_tasks``, supervised vs each self-supervised upstream IMP source,
  at every common level up to 67.23%: for when the supervised mean is decided above.
* C10 -- per upstream IMP finder, downstream task and level, over SimCLR pre-trainings at several
  temperatures: for every pair inside [0.1, 0.5], for when the interval of their difference lies
  within ±0.01 (one point: "matters little"), against when it lies wholly outside; for every
  temperature outside the range, for when it is decided below the best one inside, against when
  decided above.

OMP and random masks are not in the paper: they enter no rule and are listed as extensions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cvlth.results.matching import MatchingResult, MatchingRow, SeedStats
from cvlth.results.outputs import PerturbationCurve, PerturbationPoint
from cvlth.results.uncertainty import Interval, difference, mean_interval, welch_interval

HOLDS, REFUTED, UNDECIDED, NOT_TESTED = "holds", "refuted", "undecided", "not tested"
MID_SPARSITY = 0.6723  # C4 / C9: "low and mid sparsity", the paper's ~67%
FIGURE_KINDS = ("supervised", "simclr", "moco")  # the paper's three θ_p, in its column order

# The paper's figures (SPEC §5 and §8), by θ_p kind.
PAPER_UPSTREAM = {"supervised": 0.6723, "simclr": 0.5904, "moco": 0.9560}  # C1, Fig. 2
PAPER_TRANSFER = {  # C2: extreme matching sparsity of (m_P, θ_p) per downstream dataset
    "cifar10": {"supervised": 0.9141, "simclr": 0.9141, "moco": 0.9141},
    "cifar100": {"supervised": 0.8658, "simclr": 0.8658, "moco": 0.8926},
    "svhn": {"supervised": 0.9141, "simclr": 0.9648, "moco": 0.9313},
    "fashion_mnist": {"supervised": 0.8926, "simclr": 0.8926, "moco": 0.9141},
    "visda2017": {"supervised": 0.6723, "simclr": 0.5904, "moco": 0.5904},
    "voc_detection": {"supervised": 0.7379, "simclr": 0.4880, "moco": 0.7379},
    "voc_segmentation": {"supervised": 0.4880, "simclr": 0.3600, "moco": 0.8322},
}
PAPER_TASK_SPECIFIC = {  # C5: extreme matching sparsity of (m_T, θ_p) on dense prediction
    "voc_detection": {"supervised": 0.9560, "simclr": 0.9313, "moco": 0.9775},
    "voc_segmentation": {"supervised": 0.7379, "simclr": 0.6723, "moco": 0.8658},
}
# C4: mask variants that are not the paper's (its random mask m_r is global: cvlth's ``random``).
VARIANT_NOTES = {
    "random_layerwise": "random_layerwise (layer-matched to the ticket: an extension of the paper's random mask)",
    "complement_matched": "complement_matched (an extension: the complement subsampled to the ticket's counts)",
}
PAPER_UNIVERSAL = "natural images 86.58 / 86.58 / 89.26%; all classification 67.23 / 59.04 / 59.04% (supervised / SimCLR / MoCo)"


@dataclass(frozen=True)
class SourceInfo:
    """What a ticket source of the matching table is (from the study config)."""

    pretraining: str
    kind: str | None  # the θ_p's objective: supervised, simclr, moco (None: not known)
    finder: str
    method: str  # imp, omp, random
    stage: str  # upstream, downstream
    rewind: str  # pretrained (θ_p), init (θ_0), early (θ_5%)

    @property
    def upstream_imp(self) -> bool:
        return self.method == "imp" and self.stage == "upstream"

    def task_specific(self, rewind: str) -> bool:
        return self.method == "imp" and self.stage == "downstream" and self.rewind == rewind


@dataclass(frozen=True)
class MaskFacts:
    """Mask measures the structure claims need, one value per finder seed (or seed pair).

    ``iou``: (pre-training a, pre-training b, finder) -> [(first sparsity, last sparsity,
    [(IoU first, IoU last, random IoU last), ...])]; ``kernels``: pre-training -> (sparsity,
    [(zero-kernel share, share in the first half of the layers, share in the second half), ...]).
    """

    iou: dict[tuple[str, str, str], tuple[float, float, list[tuple[float, float, float]]]] = field(
        default_factory=dict
    )
    kernels: dict[str, tuple[float, list[tuple[float, float, float]]]] = field(default_factory=dict)


@dataclass
class ClaimInputs:
    matching: Sequence[MatchingResult]
    sources: Mapping[str, SourceInfo]  # matching table source label -> what it is
    task_data: Mapping[str, str] = field(default_factory=dict)  # task -> dataset name
    dense_prediction: frozenset[str] = frozenset()  # detection / segmentation tasks
    domain_shift: Sequence[str] = ()
    task_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)  # the study's, by name
    perturbation: Sequence[PerturbationCurve] | None = None
    masks: MaskFacts | None = None
    simclr_temperatures: Mapping[str, float] = field(default_factory=dict)  # pre-training -> temperature

    def results(
        self, test: Callable[[SourceInfo], bool], on_pretraining_task: bool = False
    ) -> list[MatchingResult]:
        return [
            r
            for r in self.matching
            if r.source in self.sources
            and test(self.sources[r.source])
            and r.on_pretraining_task == on_pretraining_task
        ]

    def kind(self, source: str) -> str | None:
        return self.sources[source].kind if source in self.sources else None


@dataclass(frozen=True)
class ClaimResult:
    """One claim checked in one study: one entry of claims.json."""

    LISTS: ClassVar[str] = "claims"

    claim: str  # C1 ... C10
    statement: str
    verdict: str  # holds, refuted, undecided, not tested
    evidence: tuple[str, ...]  # the numbers that decide it, one line per case
    paper: str  # the paper's figure
    missing: str = ""  # not tested: what the study would need
    extensions: tuple[str, ...] = ()  # beyond the paper (OMP, random masks): shown, never decisive

    def to_json(self) -> dict[str, Any]:
        return {
            "claim": self.claim,
            "statement": self.statement,
            "verdict": self.verdict,
            "evidence": list(self.evidence),
            "paper": self.paper,
            "missing": self.missing,
            "extensions": list(self.extensions),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClaimResult:
        verdict = str(data["verdict"])
        if verdict not in (HOLDS, REFUTED, UNDECIDED, NOT_TESTED):
            raise ValueError(f"unknown verdict {verdict!r}")
        return cls(
            claim=str(data["claim"]),
            statement=str(data["statement"]),
            verdict=verdict,
            evidence=tuple(str(e) for e in data["evidence"]),
            paper=str(data["paper"]),
            missing=str(data.get("missing", "")),
            extensions=tuple(str(e) for e in data.get("extensions", [])),
        )


STATEMENTS = {
    "C1": "Upstream tickets exist on the pre-training task itself (IMP on the pre-training objective keeps matching θ_p).",
    "C2": "Transferred upstream tickets (m_P, θ_p) stay matching downstream over several IMP rounds.",
    "C3": "Rewinding to θ_p beats θ_0 and θ_5% at every sparsity: (m_T, θ_p) > (m_T, θ_5%) ≈ (m_T, θ_0).",
    "C4": "With θ_p the IMP mask beats its complement, a random mask and the perturbed mask by a large "
    "margin; with θ_0 the gaps are marginal.",
    "C5": "Task-specific IMP (m_T, θ_p) is at least as good as transferred tickets (m_P, θ_p), most "
    "clearly at extreme sparsity and on dense prediction.",
    "C6": "Masks from different pre-training objectives differ: their kept-weight IoU is low and falls as sparsity grows.",
    "C7": "Fully pruned kernels concentrate in early layers; MoCo masks have the most zero kernels.",
    "C8": "A universal subnetwork exists: one upstream ticket matches on a whole group of tasks at once.",
    "C9": "Under a domain gap (synthetic → real), supervised tickets transfer better than self-supervised "
    "ones at low and mid sparsity, and fewer levels match.",
    "C10": "SimCLR's temperature matters little in [0.1, 0.5] and hurts at extremes.",
}


# --- deciding cases -------------------------------------------------------------------------------


def sign_verdict(interval: Interval) -> str:
    """A case: holds when the interval lies above zero, refuted below, undecided across it."""
    if not interval.decided:
        return UNDECIDED
    return HOLDS if interval.estimate > 0 else REFUTED


def combine(verdicts: Sequence[str]) -> str:
    """A claim from its cases: refuted by any case against it, holds when every case is for it."""
    if not verdicts:
        return NOT_TESTED
    if REFUTED in verdicts:
        return REFUTED
    return UNDECIDED if UNDECIDED in verdicts else HOLDS


def measured(values: Sequence[float]) -> Interval:
    """The interval of a mean of per-run measurements; one run: the measurement itself, exact."""
    stats = SeedStats.of(values)
    if stats.n == 1:
        return Interval(stats.mean, stats.mean, stats.mean, "measured")
    return mean_interval(stats)


def pct(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"


def interval_text(interval: Interval) -> str:
    if interval.low is None or interval.high is None:
        return f"{interval.estimate:+.4f} [–]"
    if interval.method == "measured":
        return f"{interval.estimate:+.4f} (one run)"
    return f"{interval.estimate:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]"


def _paper_kind(kind: str | None, table: Mapping[str, float]) -> str:
    return f"{pct(table[kind])} ({kind})" if kind in table else "–"


def _rows(result: MatchingResult) -> dict[float, MatchingRow]:
    return {row.sparsity: row for row in result.rows}


def _extensions(inputs: ClaimInputs) -> tuple[str, ...]:
    """The sources beyond the paper, with their extreme matching sparsities (never decisive)."""
    lines = []
    for r in inputs.results(lambda s: s.method in ("omp", "random")):
        method = inputs.sources[r.source].method
        label = (
            "OMP (extension, not in the paper)" if method == "omp" else "random masks (the paper's control)"
        )
        lines.append(
            f"{label}: {r.source} → {r.task}: extreme matching sparsity {pct(r.extreme_matching_sparsity)}"
        )
    return tuple(lines)


def _result(
    claim: str,
    verdicts: Sequence[str],
    evidence: Sequence[str],
    paper: str,
    missing: str,
    extensions: Sequence[str] = (),
) -> ClaimResult:
    verdict = combine(verdicts)
    missing = missing if verdict == NOT_TESTED else ""
    return ClaimResult(claim, STATEMENTS[claim], verdict, tuple(evidence), paper, missing, tuple(extensions))


# --- the claims -----------------------------------------------------------------------------------


def claim_c1(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    for r in inputs.results(lambda s: s.upstream_imp, on_pretraining_task=True):
        matched = [row.sparsity for row in r.rows if row.decided and row.matching]
        if matched:
            verdicts.append(HOLDS)
        elif all(row.decided for row in r.rows):
            verdicts.append(REFUTED)
        else:
            verdicts.append(UNDECIDED)
        evidence.append(
            f"{r.source}: extreme matching sparsity {pct(r.extreme_matching_sparsity)} (monotone "
            f"{pct(r.monotone_matching_sparsity)}), highest decided match {pct(max(matched, default=None))}, "
            f"{r.undecided} of {len(r.rows)} levels undecided; paper {_paper_kind(inputs.kind(r.source), PAPER_UPSTREAM)}"
        )
    return _result(
        "C1",
        verdicts,
        evidence,
        "Fig. 2: 67.23 / 59.04 / 95.60% (supervised / SimCLR / MoCo)",
        "an upstream IMP finder (method: imp, stage: upstream) on a pre-training with an upstream recipe",
    )


def claim_c2(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    for r in inputs.results(lambda s: s.upstream_imp):
        if len(r.rows) < 2:
            evidence.append(f"{r.source} → {r.task}: one level transferred, not enough for 'several rounds'")
            continue
        decided = sum(row.decided and row.matching for row in r.rows)
        possible = sum(not (row.decided and not row.matching) for row in r.rows)
        verdicts.append(HOLDS if decided >= 2 else REFUTED if possible < 2 else UNDECIDED)
        paper = PAPER_TRANSFER.get(inputs.task_data.get(r.task, ""), {})
        evidence.append(
            f"{r.source} → {r.task}: {decided} of {len(r.rows)} levels decided matching, {possible} "
            f"possibly matching; extreme {pct(r.extreme_matching_sparsity)} (monotone "
            f"{pct(r.monotone_matching_sparsity)}); paper {_paper_kind(inputs.kind(r.source), paper)}"
        )
    return _result(
        "C2",
        verdicts,
        evidence,
        "§5 table: 59–96% on classification (e.g. CIFAR-10 91.41% for all three θ_p)",
        "an upstream IMP finder transferred to a downstream task at two or more levels",
        _extensions(inputs),
    )


def _level_comparisons(
    name: str, a: Mapping[float, Any], b: Mapping[float, Any], limit: float | None = None
) -> tuple[list[str], str]:
    """Welch intervals of a - b at every common level (up to ``limit``): case verdicts and a line."""
    verdicts, parts = [], []
    for sparsity in sorted(set(a) & set(b)):
        if limit is not None and sparsity > limit + 1e-9:
            continue
        interval = difference(_stats(a[sparsity]), _stats(b[sparsity]))
        verdicts.append(sign_verdict(interval))
        parts.append(f"{pct(sparsity)} {interval_text(interval)} {_mark(verdicts[-1])}")
    return verdicts, f"{name}: " + ("; ".join(parts) if parts else "no common level")


def _stats(value: MatchingRow | PerturbationPoint) -> SeedStats:
    return value.stats if isinstance(value, MatchingRow) else SeedStats(value.mean, value.std, value.n)


def _mark(verdict: str) -> str:
    return {HOLDS: "✓", REFUTED: "✗", UNDECIDED: "(undecided)"}.get(verdict, "")


def claim_c3(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    theta_p = inputs.results(lambda s: s.task_specific("pretrained"))
    for other_rewind, label in (("init", "θ_0"), ("early", "θ_5%")):
        for r in theta_p:
            info = inputs.sources[r.source]
            for o in inputs.results(
                lambda s, i=info, w=other_rewind: s.task_specific(w) and s.pretraining == i.pretraining
            ):
                if o.task != r.task:
                    continue
                cases, line = _level_comparisons(
                    f"{r.task}: {r.source} − {o.source} ({label})", _rows(r), _rows(o)
                )
                verdicts += cases
                evidence.append(line)
    for early in inputs.results(lambda s: s.task_specific("early")):  # θ_5% ≈ θ_0: shown, not decided
        info = inputs.sources[early.source]
        for init in inputs.results(
            lambda s, i=info: s.task_specific("init") and s.pretraining == i.pretraining
        ):
            if init.task == early.task:
                _, line = _level_comparisons(
                    f"{early.task}: θ_5% − θ_0, {early.source} − {init.source} (the paper: ≈ 0; not decisive)",
                    _rows(early),
                    _rows(init),
                )
                evidence.append(line)
    return _result(
        "C3",
        verdicts,
        evidence,
        "Figs. 3–4: (m_T, θ_p) above (m_T, θ_5%) ≈ (m_T, θ_0) at every sparsity",
        "task-specific IMP finders on the same task rewound to θ_p (rewind: pretrained) and to θ_0 "
        "(rewind: init) or θ_5% (rewind: early)",
    )


def _curves(inputs: ClaimInputs) -> dict[tuple[str, str], dict[str, dict[int, PerturbationPoint]]]:
    """(source, task) -> variant -> level -> point (points without a level are left out)."""
    groups: dict[tuple[str, str], dict[str, dict[int, PerturbationPoint]]] = {}
    for curve in inputs.perturbation or []:
        points = {p.level: p for p in curve.points if p.level is not None}
        groups.setdefault((curve.source, curve.task), {})[curve.variant] = points
    return groups


def claim_c4(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    groups = _curves(inputs)
    for (source, task), variants in groups.items():
        info = inputs.sources.get(source)
        if info is None or info.rewind != "pretrained" or "ticket" not in variants:
            continue
        ticket = variants["ticket"]
        init_key = next(
            (
                key
                for key in groups
                if key[1] == task
                and key[0] in inputs.sources
                and inputs.sources[key[0]].rewind == "init"
                and inputs.sources[key[0]].pretraining == info.pretraining
            ),
            None,
        )
        for variant, points in variants.items():
            if variant == "ticket":
                continue
            rows = {level: p for level, p in points.items() if level in ticket}
            parts = []
            for level in sorted(rows):
                interval = difference(_stats(ticket[level]), _stats(rows[level]))
                verdicts.append(sign_verdict(interval))
                part = f"level {level} ({pct(ticket[level].sparsity)}) {interval_text(interval)} {_mark(verdicts[-1])}"
                init = groups[init_key] if init_key else {}
                if level in init.get("ticket", {}) and level in init.get(variant, {}):
                    gap = welch_interval(
                        [
                            (1.0, _stats(ticket[level])),
                            (-1.0, _stats(rows[level])),
                            (-1.0, _stats(init["ticket"][level])),
                            (1.0, _stats(init[variant][level])),
                        ]
                    )
                    verdicts.append(sign_verdict(gap))
                    part += f", θ_p gap − θ_0 gap {interval_text(gap)} {_mark(verdicts[-1])}"
                parts.append(part)
            if parts:
                label = VARIANT_NOTES.get(variant, variant)
                evidence.append(f"{source} → {task}: ticket − {label}: " + "; ".join(parts))
    if verdicts:
        evidence.append("not checked: the random mask's benefit from θ_p fading beyond ~67% sparsity")
    return _result(
        "C4",
        verdicts,
        evidence,
        "Fig. 8: large gaps with θ_p, marginal with θ_0",
        "a perturbation analysis (`perturbation: {finders: [...]}`) of a task-specific IMP finder rewound to "
        "θ_p (and one rewound to θ_0 for the gap comparison)",
    )


def claim_c5(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    for t in inputs.results(lambda s: s.task_specific("pretrained")):
        info = inputs.sources[t.source]
        for u in inputs.results(lambda s, i=info: s.upstream_imp and s.pretraining == i.pretraining):
            if u.task != t.task:
                continue
            a, b = _rows(t), _rows(u)
            common = sorted(set(a) & set(b))
            if not common:
                continue
            cases = [sign_verdict(difference(a[s].stats, b[s].stats)) for s in common]
            if REFUTED in cases:
                verdicts.append(REFUTED)
            else:
                verdicts.append(HOLDS if cases[-1] == HOLDS else UNDECIDED)
            last = difference(a[common[-1]].stats, b[common[-1]].stats)
            kind = inputs.kind(t.source)
            paper = PAPER_TASK_SPECIFIC.get(inputs.task_data.get(t.task, ""), {})
            paper_up = PAPER_TRANSFER.get(inputs.task_data.get(t.task, ""), {})
            dense = " (dense prediction)" if t.task in inputs.dense_prediction else ""
            evidence.append(
                f"{t.task}{dense}: {t.source} − {u.source}: decided below at "
                f"{sum(c == REFUTED for c in cases)} of {len(cases)} levels; at {pct(common[-1])} "
                f"{interval_text(last)}; extreme {pct(t.extreme_matching_sparsity)} vs "
                f"{pct(u.extreme_matching_sparsity)}; paper {_paper_kind(kind, paper)} vs {_paper_kind(kind, paper_up)}"
            )
    return _result(
        "C5",
        verdicts,
        evidence,
        "§5 table: detection 95.60 / 93.13 / 97.75% task-specific vs 73.79 / 48.80 / 73.79% transferred",
        "an upstream IMP finder and a task-specific IMP finder rewound to θ_p, transferred to the same task",
    )


def claim_c6(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    for (a, b, finder), (first, last, values) in (inputs.masks.iou if inputs.masks else {}).items():
        interval = measured([iou_first - iou_last for iou_first, iou_last, _ in values])
        verdicts.append(sign_verdict(interval))
        mean_first = sum(v[0] for v in values) / len(values)
        mean_last = sum(v[1] for v in values) / len(values)
        random_last = sum(v[2] for v in values) / len(values)
        evidence.append(
            f"{a} vs {b} ({finder}, {len(values)} mask pair(s)): IoU {mean_first:.3f} at {pct(first)} → "
            f"{mean_last:.3f} at {pct(last)} (random masks of those densities {random_last:.3f}); fall "
            f"{interval_text(interval)} {_mark(verdicts[-1])}"
        )
    if verdicts:
        evidence.append("'low' is shown beside the random-mask IoU, not decided")
    return _result(
        "C6",
        verdicts,
        evidence,
        "Fig. 6: IoU between ImageNet, SimCLR and MoCo masks low and falling with sparsity",
        "two or more pre-trainings with the same upstream IMP finder, at two or more levels",
    )


def claim_c7(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    kernels = inputs.masks.kernels if inputs.masks else {}
    for pretraining, (sparsity, values) in kernels.items():
        interval = measured([early - late for _, early, late in values])
        verdicts.append(sign_verdict(interval))
        share = sum(v[0] for v in values) / len(values)
        evidence.append(
            f"{pretraining} at {pct(sparsity)}: {share:.2%} of k×k kernels fully pruned; first half of the "
            f"layers − second half {interval_text(interval)} {_mark(verdicts[-1])}"
        )
    kinds = {p: k for p, k in ((s.pretraining, s.kind) for s in inputs.sources.values())}
    moco = [p for p in kernels if kinds.get(p) == "moco"]
    for m in moco:
        for other in kernels:
            if other == m:
                continue
            mine, theirs = [v[0] for v in kernels[m][1]], [v[0] for v in kernels[other][1]]
            if len(mine) == len(theirs) == 1:
                interval = Interval(mine[0] - theirs[0], mine[0] - theirs[0], mine[0] - theirs[0], "measured")
            else:
                interval = difference(SeedStats.of(mine), SeedStats.of(theirs))
            verdicts.append(sign_verdict(interval))
            evidence.append(
                f"zero-kernel share {m} (MoCo) − {other}: {interval_text(interval)} {_mark(verdicts[-1])}"
            )
    if kernels and not moco:
        evidence.append("no MoCo pre-training: 'MoCo masks have the most zero kernels' not checked")
    return _result(
        "C7",
        verdicts,
        evidence,
        "Fig. 7 and the kernel heatmaps at 79.03%: zero kernels mostly in early layers, most for MoCo",
        "an upstream IMP finder (its masks at a level near 79.03%)",
    )


def claim_c8(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    by_source: dict[str, list[MatchingResult]] = {}
    for r in inputs.results(lambda s: s.upstream_imp):
        by_source.setdefault(r.source, []).append(r)
    for source, all_results in by_source.items():
        by_task = {r.task: r for r in all_results}
        # the study's task groups that the source covers (the paper's claim is per group), or, when
        # the study names none, every downstream task of the source
        groups = {g: list(t) for g, t in inputs.task_groups.items() if set(t) <= set(by_task)}
        if not inputs.task_groups:
            groups = {"all": list(by_task)}
        for group, tasks in groups.items():
            if len(tasks) < 2:
                continue
            results = [by_task[t] for t in tasks]
            rows = [_rows(r) for r in results]
            common = sorted(set.intersection(*(set(r) for r in rows)))
            all_matching = [s for s in common if all(r[s].decided and r[s].matching for r in rows)]
            against = [s for s in common if any(r[s].decided and not r[s].matching for r in rows)]
            verdicts.append(HOLDS if all_matching else REFUTED if len(against) == len(common) else UNDECIDED)
            headline = [s for s in common if all(r[s].matching for r in rows)]
            name = "" if group == "all" else f" (group {group})"
            evidence.append(
                f"{source}{name} on {', '.join(tasks)}: universal {pct(max(headline, default=None))}, "
                f"decided on every task up to {pct(max(all_matching, default=None))}; "
                f"{len(against)} of {len(common)} common levels decided not matching on some task"
            )
    return _result(
        "C8",
        verdicts,
        evidence,
        PAPER_UNIVERSAL,
        "an upstream IMP finder transferred to two or more downstream tasks at common levels",
    )


def claim_c9(inputs: ClaimInputs) -> ClaimResult:
    verdicts, evidence = [], []
    for task in inputs.domain_shift:
        upstream = inputs.results(lambda s: s.upstream_imp)
        supervised = [r for r in upstream if r.task == task and inputs.kind(r.source) == "supervised"]
        ssl = [r for r in upstream if r.task == task and inputs.kind(r.source) in ("simclr", "moco")]
        for sup in supervised:
            for other in ssl:
                if inputs.sources[other.source].finder != inputs.sources[sup.source].finder:
                    continue
                cases, line = _level_comparisons(
                    f"{task}: {sup.source} − {other.source}", _rows(sup), _rows(other), limit=MID_SPARSITY
                )
                verdicts += cases
                evidence.append(line)
        for r in (r for r in inputs.results(lambda s: s.upstream_imp) if r.task == task):
            others = [
                o for o in inputs.results(lambda s: s.upstream_imp) if o.source == r.source and o.task != task
            ]
            elsewhere = ", ".join(f"{o.task} {sum(row.matching for row in o.rows)}" for o in others)
            evidence.append(
                f"{r.source}: {sum(row.matching for row in r.rows)} of {len(r.rows)} levels match on {task}"
                + (f" (elsewhere: {elsewhere}; not decisive)" if elsewhere else "")
            )
    return _result(
        "C9",
        verdicts,
        evidence,
        "VisDA-2017: 67.23 / 59.04 / 59.04% (supervised / SimCLR / MoCo), supervised above at low and mid sparsity",
        "a synthetic-to-real task marked in the study's `domain_shift_tasks` (e.g. visda2017), with a "
        "supervised and a self-supervised pre-training and an upstream IMP finder transferred to it",
    )


#: C10: the temperatures the paper calls harmless, and how far apart two of them may be to "matter
#: little" (one point of the metric, e.g. 0.01 accuracy).
TEMPERATURE_RANGE = (0.1, 0.5)
EQUIVALENCE_MARGIN = 0.01


def equivalence_verdict(interval: Interval, margin: float = EQUIVALENCE_MARGIN) -> str:
    """Two means "differ little": holds when the 95% interval of their difference lies inside
    ``[-margin, margin]``, refuted when it lies wholly outside it, undecided otherwise (or unbounded)."""
    if interval.low is None or interval.high is None:
        return UNDECIDED
    if -margin <= interval.low and interval.high <= margin:
        return HOLDS
    if interval.low > margin or interval.high < -margin:
        return REFUTED
    return UNDECIDED


def claim_c10(inputs: ClaimInputs) -> ClaimResult:
    """Per upstream IMP finder, downstream task and level over the SimCLR θ_p at several temperatures:
    every pair of temperatures in [0.1, 0.5] differs little (:func:`equivalence_verdict`), and every
    temperature outside it is decided below the best one inside (Welch)."""
    temperatures = dict(inputs.simclr_temperatures)
    verdicts: list[str] = []
    evidence: list[str] = []
    if len(set(temperatures.values())) >= 2:
        tickets: dict[tuple[str, str], dict[float, dict[float, MatchingRow]]] = {}
        for r in inputs.results(lambda s: s.upstream_imp and s.pretraining in temperatures):
            info = inputs.sources[r.source]
            by_temperature = tickets.setdefault((info.finder, r.task), {})
            by_temperature[temperatures[info.pretraining]] = _rows(r)
        for (finder, task), by_temperature in sorted(tickets.items()):
            if len(by_temperature) < 2:
                continue
            case_verdicts, parts = _temperature_cases(by_temperature)
            verdicts += case_verdicts
            evidence.append(
                f"{finder} → {task}: " + ("; ".join(parts) or "no level common to two temperatures")
            )
    return _result(
        "C10",
        verdicts,
        evidence,
        "Table 2: temperature in [0.1, 0.5] changes little; extremes hurt",
        "SimCLR pre-trainings (or imports) at several temperatures, e.g. 0.05, 0.1, 0.2, 0.5 and 1.0, "
        "with the same upstream IMP finder and tasks",
    )


def _temperature_cases(
    by_temperature: Mapping[float, Mapping[float, MatchingRow]],
) -> tuple[list[str], list[str]]:
    low, high = TEMPERATURE_RANGE
    verdicts, parts = [], []
    levels = sorted(set().union(*(set(rows) for rows in by_temperature.values())))
    for sparsity in levels:
        present = {t: rows[sparsity] for t, rows in by_temperature.items() if sparsity in rows}
        inside = {t: row for t, row in present.items() if low - 1e-9 <= t <= high + 1e-9}
        outside = {t: row for t, row in present.items() if t not in inside}
        texts = []
        names = sorted(inside)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                interval = difference(inside[a].stats, inside[b].stats)
                verdicts.append(equivalence_verdict(interval))
                texts.append(f"τ {a:g} − τ {b:g} {interval_text(interval)} {_mark(verdicts[-1])}")
        if inside:
            best = max(inside, key=lambda t: inside[t].stats.mean)
            for t in sorted(outside):
                interval = difference(inside[best].stats, outside[t].stats)
                verdicts.append(sign_verdict(interval))
                texts.append(
                    f"τ {best:g} − τ {t:g} (outside) {interval_text(interval)} {_mark(verdicts[-1])}"
                )
        if texts:
            parts.append(f"{pct(sparsity)}: " + ", ".join(texts))
    return verdicts, parts


CLAIMS: tuple[Callable[[ClaimInputs], ClaimResult], ...] = (
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
)


def check_claims(inputs: ClaimInputs) -> list[ClaimResult]:
    """Every claim of SPEC §8, in order."""
    return [rule(inputs) for rule in CLAIMS]
