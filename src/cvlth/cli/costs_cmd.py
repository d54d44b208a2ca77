"""``cvlth costs measure``: time a study's work kinds on this machine, for ``cvlth study --plan``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cvlth.cli.app import app, stops_cleanly_on_interrupt
from cvlth.cli.checks import check_device

costs_app = typer.Typer(
    help="Per-image compute costs, from which `cvlth study --plan` estimates the time left."
)
app.add_typer(costs_app, name="costs")


@costs_app.command("measure")
@stops_cleanly_on_interrupt
def measure(
    config: Annotated[str, typer.Argument(help="study YAML or packaged study name (demo, cpu-study, ...)")],
    device: Annotated[str, typer.Option(help="cpu or cuda (cuda:N)")] = "cpu",
    threads: Annotated[int | None, typer.Option(help="intra-op threads (default: torch's)")] = None,
    steps: Annotated[int, typer.Option(min=1, help="timed steps (and eval batches) per kind")] = 3,
    max_seconds: Annotated[float, typer.Option(min=0.1, help="timing budget per kind and phase")] = 20.0,
    max_batch: Annotated[int | None, typer.Option(min=1, help="time at most this batch size")] = None,
    only: Annotated[str | None, typer.Option(help="only kinds whose label or key contains this")] = None,
    output: Annotated[
        Path | None, typer.Option(help="the file to merge into (default: this device's stored measurement)")
    ] = None,
    missing: Annotated[
        bool, typer.Option(help="only kinds the file to merge into does not hold yet")
    ] = False,
    note: Annotated[str | None, typer.Option(help="the file's note (default: keep the existing one)")] = None,
) -> None:
    """Time one training and one evaluation step of every work kind of a study on this device and
    merge the seconds per image into a cvlth-costs/1 file (a kind takes about 2-3 x --max-seconds)."""
    from cvlth.study.cost_measure import MeasureSettings, measure_study  # torch-heavy: imported on use

    check_device(device)
    measure_study(
        MeasureSettings(
            config=config,
            device=device,
            threads=threads,
            steps=steps,
            max_seconds=max_seconds,
            max_batch=max_batch,
            only=only,
            output=output,
            missing=missing,
            note=note,
        )
    )
