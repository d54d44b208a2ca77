"""The report's opening section: the paper's claims (SPEC §8) checked in this study.

The verdicts come from ``claims.json`` (written by the study, :mod:`cvlth.results.claims`); for a
study folder written before claims existed they are checked here, from the same files."""

from __future__ import annotations

from cvlth.report.document import Section, Table
from cvlth.report.inputs import StudyFiles
from cvlth.results.claims import NOT_TESTED, UNDECIDED, ClaimResult, check_claims
from cvlth.results.matching import DECISION_TEXT


def study_claims(files: StudyFiles) -> list[ClaimResult]:
    """claims.json's entries, or the claims checked now on the folder's files and masks."""
    if files.claims is not None:
        return files.claims
    from cvlth.study.claim_inputs import claim_inputs, mask_facts

    masks = mask_facts(files.study, files.tickets, files.mask, files.release_masks)
    return check_claims(claim_inputs(files.study, files.matching, files.perturbation, masks))


def verdict_cell(claim: ClaimResult) -> str:
    """The verdict as shown: ✓ holds, ✗ refuted, undecided (greyed) or not tested."""
    return {"holds": "✓ holds", "refuted": "✗ refuted"}.get(claim.verdict, claim.verdict)


def claims_section(files: StudyFiles) -> Section:
    claims = study_claims(files)
    section = Section("The paper's claims, checked", "claims")
    section.blocks.append(
        "Each claim of the paper (SPEC §8) that this study's finders, tasks and analyses cover, decided "
        "case by case from 95% intervals: refuted when a case is decided against it, holds when every "
        "case is decided for it, undecided otherwise (more seeds could settle it). The rules are those "
        "of cvlth.results.claims; the paper's figures are for ResNet-50 on ImageNet-scale data. "
        + DECISION_TEXT
    )
    tested = [c for c in claims if c.verdict != NOT_TESTED]
    counts = {v: sum(c.verdict == v for c in claims) for v in ("holds", "refuted", UNDECIDED, NOT_TESTED)}
    section.blocks.append(
        f"{counts['holds']} hold, {counts['refuted']} refuted, {counts[UNDECIDED]} undecided, "
        f"{counts[NOT_TESTED]} not tested."
    )
    if tested:
        section.blocks.append(
            Table(
                ["claim", "verdict", "what decides it (this study)", "the paper"],
                [[c.claim, verdict_cell(c), "; ".join(c.evidence) or "–", c.paper] for c in tested],
                "Claims tested in this study",
            )
        )
    untested = [c for c in claims if c.verdict == NOT_TESTED]
    if untested:
        section.blocks.append(
            Table(
                ["claim", "statement", "to test it, add"],
                [[c.claim, c.statement, c.missing] for c in untested],
                "Claims not tested in this study",
            )
        )
    extensions = [line for c in claims for line in c.extensions]
    if extensions:
        section.blocks.append("Beyond the paper (never decisive): " + "; ".join(extensions) + ".")
    section.facts.extend(f"{c.claim} {c.verdict}: {c.statement}" for c in tested)
    return section
