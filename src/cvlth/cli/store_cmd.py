"""``cvlth runs``: list the runs in a store and whether each is done; forget damaged ones."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app
from cvlth.store import DEFAULT_STORE_ROOT, Store
from cvlth.study.run_kinds import RUN_KINDS

#: The ``--store`` option every command that reads or writes runs shares.
STORE_OPTION = typer.Option(Path(DEFAULT_STORE_ROOT), "--store", help="Root folder of the run store.")


@app.command("runs")
def runs(
    store: Path = STORE_OPTION,
    kind: str | None = typer.Option(None, help="Only runs of this kind (train, pretrain, imp, ...)."),
    forget: list[str] = typer.Option(
        [],
        "--forget",
        metavar="KIND/HASH",
        help="Delete this run's folder (e.g. a damaged run) so that the next study computes it again.",
    ),
) -> None:
    """List the runs in the store: kind, hash, status (done / damaged / resumable / started).

    A run is ``done`` only when its result.json and every file it wrote match the sha256 recorded
    when it finished; otherwise it is ``damaged`` and the reason is printed below the table.
    """
    run_store = Store(store)
    console = Console(highlight=False)
    if forget:
        for name in forget:
            path = run_store.forget(name, RUN_KINDS)
            console.print(
                f"forgot {escape(name)}: deleted {escape(str(path))}; the next study computes it again",
                soft_wrap=True,
            )
        return
    folders = run_store.runs(kind, RUN_KINDS)
    table = Table("kind", "hash", "status")
    damaged = []
    for folder in folders:
        why = folder.damage() if folder.is_done() else None
        table.add_row(folder.path.parent.name, folder.path.name, "damaged" if why else folder.status)
        if why:
            damaged.append((folder, why))
    console.print(table if folders else f"no runs under {escape(str(store))}")
    for _, why in damaged:
        console.print(f"damaged: {escape(why)}", soft_wrap=True)
    if damaged:
        names = " ".join(f"--forget {folder.name}" for folder, _ in damaged)
        console.print(
            f"recompute: `cvlth runs --store {escape(str(store))} {names}`, then run the study again",
            soft_wrap=True,
        )
