"""What a report is computed from: a study folder's files (typed by :mod:`cvlth.results.outputs`)
and the ticket masks they point to in the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cvlth.results.claims import ClaimResult, SourceInfo
from cvlth.results.matching import MatchingResult
from cvlth.results.outputs import (
    BESIDE_FILE,
    CLAIMS_FILE,
    MATCHING_FILE,
    PERTURBATION_FILE,
    SPEED_FILE,
    TICKETS_FILE,
    MatchingEntry,
    PerturbationCurve,
    SpeedPoint,
    StudyOutputError,
    TicketEntry,
    read_entries,
)
from cvlth.store import Store


class ReportError(StudyOutputError):
    """The study folder lacks a file the report needs, or a file is malformed."""


@dataclass
class StudyFiles:
    folder: Path
    store: Path
    study: Any  # StudyConfig
    matching: list[MatchingResult]
    tickets: list[TicketEntry]
    perturbation: list[PerturbationCurve] | None  # None: the study has no perturbation analysis
    results_time: datetime
    claims: list[ClaimResult] | None = None  # None: claims.json predates claims; the report checks them
    beside: list[MatchingResult] = field(default_factory=list)  # matching-beside.json (may be absent)
    speed: list[SpeedPoint] | None = None  # speed.json; None: the study's tickets were not timed
    _masks: dict[str, Any] = field(default_factory=dict)  # mask path -> Mask, the current level's
    _sources: dict[str, SourceInfo] = field(default_factory=dict)  # source label -> what it is

    def rerun_hint(self) -> str:
        return rerun_hint(self.folder, self.store)

    def source(self, label: str) -> SourceInfo:
        """What the ticket source ``label`` of the study's files is: its pre-training and finder, as
        the study config names them."""
        from cvlth.study.claim_inputs import source_infos

        if not self._sources:
            self._sources.update(source_infos(self.study))
        if label not in self._sources:
            raise ReportError(
                f"ticket source {label!r} in {self.folder} is not a (pre-training, finder) pair of its "
                f"study.yaml ({', '.join(self._sources) or 'none'})",
                hint=f"the study's files are from another config: {self.rerun_hint()}",
            )
        return self._sources[label]

    def mask(self, ticket: TicketEntry, level: int):  # noqa: ANN201 - Mask (torch is imported lazily)
        """The ticket's mask at ``level``, kept until :meth:`release_masks`."""
        from cvlth.masks import Mask

        relative = ticket.levels[level].mask
        if relative not in self._masks:
            path = Store(self.store).artefact_path(relative, f"mask path in {self.folder / TICKETS_FILE}")
            if not path.is_file():
                raise ReportError(
                    f"mask file {path} (ticket {ticket.label}, level {level}, listed in "
                    f"{self.folder / TICKETS_FILE}) is missing",
                    hint=f"pass the store the study ran in with --store, or {self.rerun_hint()}",
                )
            self._masks[relative] = Mask.load(path)
        return self._masks[relative]

    def release_masks(self) -> None:
        """Forget the loaded masks (a ResNet-50 mask is ~25 MB: one level at a time fits)."""
        self._masks.clear()


def rerun_hint(folder: Path, store: Path) -> str:
    return f"run `cvlth study {folder / 'study.yaml'} --store {store}` (finished runs are reused)"


def read_study_files(study_dir: Path, store_root: Path | None = None) -> StudyFiles:
    """Load and check the files of a study folder (raises a :class:`StudyOutputError` naming the fix)."""
    from cvlth.study.config import load_study

    folder = Path(study_dir)
    store = Path(store_root) if store_root is not None else folder.parent.parent
    generic = "run `cvlth study CONFIG --store STORE` first; it writes STORE/studies/<name>/"
    if not folder.is_dir():
        raise ReportError(f"study folder {folder} does not exist", hint=generic)
    config_path = folder / "study.yaml"
    if not config_path.is_file():
        raise ReportError(f"{config_path} not found: {folder} is not a study folder", hint=generic)
    study = load_study(config_path)
    hint = rerun_hint(folder, store)
    matching_path = folder / MATCHING_FILE
    matching = [entry.result for entry in read_entries(matching_path, MatchingEntry, hint)]
    tickets = read_entries(folder / TICKETS_FILE, TicketEntry, hint)
    perturbation_path = folder / PERTURBATION_FILE
    perturbation = None
    if perturbation_path.exists():
        perturbation = read_entries(perturbation_path, PerturbationCurve, hint)
    claims_path = folder / CLAIMS_FILE
    claims = read_entries(claims_path, ClaimResult, hint) if claims_path.exists() else None
    beside_path = folder / BESIDE_FILE
    beside = read_entries(beside_path, MatchingEntry, hint) if beside_path.exists() else []
    speed_path = folder / SPEED_FILE
    speed = read_entries(speed_path, SpeedPoint, hint) if speed_path.exists() else None
    return StudyFiles(
        folder=folder,
        store=store,
        study=study,
        matching=matching,
        tickets=tickets,
        perturbation=perturbation,
        results_time=datetime.fromtimestamp(matching_path.stat().st_mtime),
        claims=claims,
        beside=[entry.result for entry in beside],
        speed=speed,
    )
