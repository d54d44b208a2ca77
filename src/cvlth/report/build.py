"""The report's sections, computed from a study folder, and the files written from them."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cvlth.atomic import atomic_write_text
from cvlth.report.claims import claims_section
from cvlth.report.document import Report, Section
from cvlth.report.inputs import ReportError, StudyFiles, read_study_files
from cvlth.report.perturbation import perturbation_section
from cvlth.report.results import (
    accuracy_section,
    beside_section,
    matching_facts,
    matching_section,
    setup_section,
)
from cvlth.report.speed import speed_section
from cvlth.report.structure import (
    MAX_IOU_TICKETS,
    iou_section,
    kernel_tickets,
    ranked,
    scan_levels,
    structure_section,
)
from cvlth.report.to_html import render_html
from cvlth.report.to_markdown import render_markdown


def build_report(files: StudyFiles, figures: Path, now: datetime) -> Report:
    """Every section, its figures drawn into ``figures``; the claims open the report, the summary
    (second) restates the sections' facts."""
    claims = claims_section(files)
    sections = [setup_section(files, now), accuracy_section(files, figures), matching_section(files)]
    if files.beside:
        sections.append(beside_section(files))
    shown_kernels = kernel_tickets(files)[0] if files.tickets else []
    scan = scan_levels(files, ranked(files.tickets, MAX_IOU_TICKETS)[0], shown_kernels)
    sections += [iou_section(files, scan, figures), structure_section(files, scan, figures)]
    if files.perturbation is not None:
        sections.append(perturbation_section(files, figures))
    if files.speed is not None:
        sections.append(speed_section(files, figures))
    facts = matching_facts(files) + [fact for section in sections for fact in section.facts]
    summary = Section("What this shows", "summary", [facts] if facts else ["No results to summarise."])
    sections[:0] = [claims, summary]
    return Report(f"Study {files.study.name}: lottery tickets report", sections)


def write_report(study_dir: Path, store_root: Path | None = None) -> Path:
    """Write ``figures/*.png``, ``report.md`` and a self-contained ``report.html`` into the study folder.

    ``store_root`` (default: two folders up, ``<store>/studies/<name>``) is where the mask paths of
    ``tickets.json`` are resolved. Returns the path of ``report.html``; ``report.md`` lies beside it.
    Raises :class:`~cvlth.results.outputs.StudyOutputError` (a :class:`CvlthError`; ``ReportError``
    for a missing study folder or mask) when an input is missing or malformed.
    """
    files = read_study_files(Path(study_dir), store_root)
    figures = figures_folder(files.folder)
    report = build_report(files, figures, datetime.now())
    written = report.figures()
    for stale in figures.glob("*.png"):  # figures of an earlier report that this one no longer has
        if stale not in written and not stale.is_symlink() and stale.is_file():
            stale.unlink()
    atomic_write_text(files.folder / "report.md", render_markdown(report, files.folder))
    html_path = files.folder / "report.html"
    atomic_write_text(html_path, render_html(report))
    return html_path


def figures_folder(study_folder: Path) -> Path:
    """``<study>/figures``, created if missing; refused (ReportError) when it is a symbolic link or
    not a folder: the report deletes its stale PNGs there, and must never do so elsewhere."""
    figures = study_folder / "figures"
    if figures.is_symlink() or (figures.exists() and not figures.is_dir()):
        what = "a symbolic link" if figures.is_symlink() else "not a folder"
        raise ReportError(
            f"{figures} is {what}; the report writes its figures there and deletes stale ones",
            hint=f"remove or rename {figures} (the report creates the folder itself)",
        )
    figures.mkdir(exist_ok=True)
    return figures
