"""``cvlth report STUDY_DIR [--store STORE]``: figures, report.md and a self-contained report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvlth.cli.app import app
from cvlth.report import write_report


@app.command()
def report(
    study_dir: Annotated[Path, typer.Argument(help="The study folder: STORE/studies/<name>.")],
    store: Annotated[
        Path | None,
        typer.Option("--store", help="Run store the study ran in (default: two folders above STUDY_DIR)."),
    ] = None,
) -> None:
    """Write the study's report (figures/, report.md, report.html) into its folder and print the paths."""
    html_path = write_report(study_dir, store)
    typer.echo(f"report: {html_path}")
    typer.echo(f"markdown: {html_path.with_name('report.md')}")
