"""``cvlth runs``: list the runs in a store and whether each is done; forget damaged ones."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app
from cvlth.errors import CvlthError
from cvlth.runs.kinds import RUN_KINDS, load_config
from cvlth.store import DEFAULT_STORE_ROOT, RunFolder, Store, check_kind
from cvlth.study.config import StudyConfig, load_study
from cvlth.study.plan import expand

#: The ``--store`` option every command that reads or writes runs shares.
STORE_OPTION = typer.Option(Path(DEFAULT_STORE_ROOT), "--store", help="Root folder of the run store.")


@app.command("runs")
def runs(
    store: Path = STORE_OPTION,
    kind: str | None = typer.Option(
        None, help="Only runs of this kind (pretrain, import, imp, baseline, transfer)."
    ),
    forget: list[str] = typer.Option(
        [],
        "--forget",
        metavar="KIND/HASH",
        help="Delete this run's folder (e.g. a damaged run) so that the next study computes it again.",
    ),
    study: str | None = typer.Option(
        None,
        "--study",
        help="Only the runs this study plans (a YAML path or a packaged study), named as in it.",
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
    if study is not None:
        described = study_runs(load_study(study), run_store)
        if kind is not None:
            check_kind(kind, RUN_KINDS)
            described = [(folder, what) for folder, what in described if folder.path.parent.name == kind]
    else:
        described = [(folder, describe_config(folder)) for folder in run_store.runs(kind, RUN_KINDS)]
    table = Table(box=box.SIMPLE, pad_edge=False)  # no vertical rules: fits 80 columns
    table.add_column("run", no_wrap=True)  # KIND/HASH, what --forget takes: never shortened
    table.add_column("status", no_wrap=True)
    for column in ("pre-training", "finder", "task", "level", "seed"):
        table.add_column(column, overflow="fold")  # wrapped, never cut into an ambiguous "…"
    damaged = []
    for folder, what in described:
        why = folder.damage() if folder.is_done() else None
        status = "damaged" if why else (folder.status if folder.config_path.is_file() else "to do")
        cells = [escape(str(what.get(key, ""))) for key in ("pretraining", "finder", "task", "level", "seed")]
        table.add_row(folder.name, status, *cells)
        if why:
            damaged.append((folder, why))
    console.print(table if described else f"no runs under {escape(str(store))}")
    for _, why in damaged:
        console.print(f"damaged: {escape(why)}", soft_wrap=True)
    if damaged:
        names = " ".join(f"--forget {folder.name}" for folder, _ in damaged)
        console.print(
            f"recompute: `cvlth runs --store {escape(str(store))} {names}`, then run the study again",
            soft_wrap=True,
        )


def study_runs(study: StudyConfig, store: Store) -> list[tuple[RunFolder, dict[str, object]]]:
    """Each run ``study`` plans (once, in plan order), described with the study's own names."""
    seen: dict[str, tuple[RunFolder, dict[str, object]]] = {}
    for item in expand(study):
        folder = store.run_dir(item.run)
        if folder.name in seen:
            continue
        what: dict[str, object] = {"pretraining": item.pretraining, "finder": item.finder or ""}
        if item.run.finds_masks:
            what["level"] = f"1..{item.run.rounds}"
            what["seed"] = item.finder_seed if item.finder_seed is not None else ""
        if item.seed is not None:  # a transfer: fine-tuned with one of the study's seeds
            variant = "" if item.variant == "ticket" else f" ({item.variant})"
            what.update(task=item.task, level=f"{item.level}{variant}", seed=item.seed)
        elif item.task is not None:
            what["task"] = item.task
        seen[folder.name] = (folder, what)
    return list(seen.values())


def describe_config(folder: RunFolder) -> dict[str, object]:
    """What a run is, from its config.yaml alone (no study at hand): data set names, finder kind."""
    try:
        run = load_config(folder.config_path)
    except CvlthError:
        return {"finder": "(unreadable config.yaml)"}
    return run.summary()
