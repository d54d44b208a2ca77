"""``cvlth zoo``: the built-in world's checkpoints (list them with their quality; build them)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app, stops_cleanly_on_interrupt
from cvlth.errors import ConfigError
from cvlth.models.checkpoints.reading import read_object
from cvlth.store import Store
from cvlth.zoo.build import build_zoo, load_zoo_recipe
from cvlth.zoo.files import SCHEME, zoo_checkpoint, zoo_dir

zoo_app = typer.Typer(
    help="The built-in world's pre-trained checkpoints (import them as world:NAME).",
    invoke_without_command=True,
)
app.add_typer(zoo_app, name="zoo")

QUALITY_COLUMNS = (
    ("top1_accuracy", "top-1"),
    ("knn_accuracy", "k-NN"),
    ("linear_probe_accuracy", "linear probe"),
    ("objective_retrieval_accuracy", "Eq. 2 retrieval"),
)


@zoo_app.callback()
def list_zoo(context: typer.Context) -> None:
    """Each world checkpoint: whether this cvlth has it, and its measured quality on the upstream test split."""
    if context.invoked_subcommand is not None:
        return
    recipe = load_zoo_recipe()
    table = Table("name", "file", *(label for _, label in QUALITY_COLUMNS), "test images", "built from")
    for name in recipe.checkpoints:
        path = zoo_checkpoint(name)
        if not path.is_file():
            table.add_row(SCHEME + name, "[red]not built[/]", *([""] * (len(QUALITY_COLUMNS) + 2)))
            continue
        header = zoo_header(path)
        quality = json.loads(header.get("quality", "{}"))
        cells = [f"{quality[key]:.4f}" if key in quality else "–" for key, _ in QUALITY_COLUMNS]
        table.add_row(
            SCHEME + name,
            escape(path.name),
            *cells,
            str(quality.get("test_images", "?")),
            escape(f"{header.get('run_hash', '?')} @ {header.get('cvlth_commit', '?')[:12]}"),
        )
    Console(width=160).print(table)


@zoo_app.command("build")
@stops_cleanly_on_interrupt
def build(
    names: list[str] = typer.Argument(None, help="checkpoints to build (default: all of the recipe)"),
    store: Path = typer.Option(Path("runs-zoo"), "--store", help="run store the pre-trainings run in"),
    out: Path = typer.Option(None, "--out", help="where the files go (default: the package's zoo folder)"),
    threads: int = typer.Option(None, "--threads", min=1, help="intra-op threads (default: torch's)"),
) -> None:
    """Train (or resume), measure and export the world checkpoints from the packaged recipe
    (src/cvlth/zoo/recipe.yaml). Done once: about an hour per checkpoint on two CPU cores."""
    recipe = load_zoo_recipe()
    chosen = names or list(recipe.checkpoints)
    unknown = [name for name in chosen if name not in recipe.checkpoints]
    if unknown:
        raise ConfigError(
            f"no world checkpoint {', '.join(map(repr, unknown))} in the recipe",
            hint=f"the recipe builds {', '.join(recipe.checkpoints)}",
        )
    console = Console(highlight=False)
    build_zoo(
        recipe,
        chosen,
        Store(store),
        out or zoo_dir(),
        threads=threads,
        log=lambda line: console.print(escape(line)),
    )


def zoo_header(path: Path) -> dict[str, str]:
    """The cvlth-checkpoint/1 header (safetensors metadata) of a world checkpoint."""
    _, metadata = read_object(path)
    return dict(metadata or {})
