"""``cvlth demo``: the miniature study of ``configs/demo.yaml`` on the built-in world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvlth.cli.app import app
from cvlth.cli.study_cmd import study
from cvlth.study.config import builtin_study_path


@app.command()
def demo(
    store: Annotated[Path, typer.Option("--store", help="Run store root.")] = Path("runs"),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (see `cvlth study --help`).")] = 1,
) -> None:
    """Run the built-in miniature study (configs/demo.yaml): pre-training, tickets, transfer, matching."""
    study(
        builtin_study_path("demo"),
        store=store,
        plan=False,
        quiet=quiet,
        device="cpu",
        workers=workers,
        threads=None,
    )
