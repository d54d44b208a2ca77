"""The study report: every result of a study in one offline HTML page and one Markdown file.

:func:`write_report` reads what ``cvlth study`` leaves in ``<store>/studies/<name>/``
(``study.yaml`` and the result files typed in :mod:`cvlth.results.outputs`: ``matching.json``,
``tickets.json`` and, if present, ``perturbation.json``), loads the ticket masks it needs from the
store and writes, into that same folder:

* ``figures/*.png`` -- accuracy vs remaining weights per task and on each pre-training task
  (Fig. 2), IoU between tickets and the share of fully pruned kernels at every level (curves
  against sparsity, beside their random-mask baselines), per-layer sparsity and pruned kernels at
  the level nearest 79.03%, a kernel heatmap, perturbation curves at the measured sparsity;
* ``report.md`` -- the paper's claims checked (``claims.json``), tables and links to the figures;
* ``report.html`` -- the same, self-contained: figures embedded as ``data:`` URIs, inline CSS, no
  external reference of any kind, so it opens offline and can be mailed as one file.

Everything shown is computed from those files; the "what this shows" section only restates numbers.

Layout: :mod:`~cvlth.report.inputs` reads the folder; :mod:`~cvlth.report.claims`, :mod:`~cvlth.report.results`,
:mod:`~cvlth.report.structure` and :mod:`~cvlth.report.perturbation` compute the sections as plain
data (:mod:`~cvlth.report.document`: paragraphs, tables, figure paths; figures styled by
:mod:`~cvlth.report.styles`); :mod:`~cvlth.report.to_markdown` and :mod:`~cvlth.report.to_html`
render them; :mod:`~cvlth.report.build` puts it together.
"""

from cvlth.report.build import build_report, write_report
from cvlth.report.inputs import ReportError, StudyFiles, read_study_files
from cvlth.report.structure import LevelScan, scan_levels

__all__ = [
    "LevelScan",
    "ReportError",
    "StudyFiles",
    "build_report",
    "read_study_files",
    "scan_levels",
    "write_report",
]
