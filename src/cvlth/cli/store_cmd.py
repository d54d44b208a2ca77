"""``cvlth runs``: list the runs in a store and whether each is done."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cvlth.cli import app
from cvlth.store import DEFAULT_STORE_ROOT, Store

#: The ``--store`` option every command that reads or writes runs shares.
STORE_OPTION = typer.Option(Path(DEFAULT_STORE_ROOT), "--store", help="Root folder of the run store.")


@app.command("runs")
def runs(
    store: Path = STORE_OPTION,
    kind: str | None = typer.Option(None, help="Only runs of this kind (train, pretrain, imp, ...)."),
) -> None:
    """List the runs in the store: kind, hash, status (done / resumable / started)."""
    folders = Store(store).runs(kind)
    table = Table("kind", "hash", "status")
    for folder in folders:
        table.add_row(folder.path.parent.name, folder.path.name, folder.status)
    console = Console()
    console.print(table if folders else f"no runs under {store}")
