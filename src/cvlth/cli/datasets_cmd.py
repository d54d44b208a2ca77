"""``cvlth datasets`` (list the registry and what is on this machine) and ``cvlth datasets show NAME``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app
from cvlth.data.registry import DATASETS, get_spec, load_dataset, resolve_root
from cvlth.data.samples import SampleSplits
from cvlth.errors import DatasetError


def _where(name: str, root: Path) -> str:
    """World datasets other than world_upstream read Python packages, not a folder."""
    return "(built in)" if get_spec(name).world and name != "world_upstream" else str(root)


datasets_app = typer.Typer(help="List the datasets cvlth knows and inspect one.", invoke_without_command=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback()
def list_datasets(context: typer.Context) -> None:
    """List every registered dataset, where it is looked for, and whether its files are there."""
    if context.invoked_subcommand is not None:
        return
    table = Table("name", "available", "root", "description")
    for name, spec in DATASETS.items():
        root = resolve_root(name)
        missing = spec.missing(root)
        available = "yes" if not missing else "[red]no[/]"
        table.add_row(escape(name), available, escape(_where(name, root)), escape(spec.description))
    Console(width=160).print(table)


@datasets_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A registered dataset name (see `cvlth datasets`).")],
    root: Annotated[Path | None, typer.Option("--root", help="Folder holding the dataset's files.")] = None,
) -> None:
    """Load a dataset and print its split sizes, image shape, classes and normalisation."""
    spec = get_spec(name)
    folder = resolve_root(name, root)
    missing = spec.missing(folder)
    if missing:
        expected = "\n".join(f"    {folder / f}" for f in spec.expected_files)
        raise DatasetError(
            f"{name}: not found in {folder}; expected:\n{expected}",
            hint="pass --root DIR or set $CVLTH_DATA to the folder holding <name>/",
        )
    splits = load_dataset(name, folder)
    console = Console(width=160)
    # Roots and class names (folder names) are the user's and may hold rich markup.
    console.print(f"[bold]{escape(name)}[/]  {escape(spec.description)}")
    console.print(f"root: {escape(_where(name, folder))}")
    val = len(splits.val) if splits.val is not None else 0
    console.print(f"train {len(splits.train):,}  val {val:,}  test {len(splits.test):,}")
    if isinstance(splits, SampleSplits):
        console.print(
            f"per-image samples for {escape(', '.join(splits.tasks))}; "
            f"largest image (C, H, W): {splits.image_shape}"
        )
    else:
        console.print(f"image shape (C, H, W): {splits.image_shape}  dtype uint8")
    console.print(
        f"mean {tuple(round(m, 4) for m in splits.mean)}  std {tuple(round(s, 4) for s in splits.std)}"
    )
    console.print(f"{splits.num_classes} classes: {escape(', '.join(splits.classes))}")
