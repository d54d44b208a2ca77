"""``cvlth prune`` and ``cvlth mask show``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app
from cvlth.cli.checks import input_file, output_file
from cvlth.errors import CvlthError
from cvlth.masks import load_mask
from cvlth.models.checkpoints.importer import ImportReport, import_checkpoint
from cvlth.models.checkpoints.sources import SOURCES
from cvlth.pruning import get_strategy, prunable_state
from cvlth.seeds import MAX_SEED

mask_app = typer.Typer(help="Inspect cvlth-mask/1 files.", no_args_is_help=True)
app.add_typer(mask_app, name="mask")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@app.command()
def prune(
    checkpoint: Path = typer.Argument(
        ..., help="ResNet checkpoint (torchvision/MoCo/SimCLR/timm/cvlth; .pt/.pth/.safetensors)."
    ),
    sparsity: float = typer.Option(
        ..., "--sparsity", "-s", help="Fraction of prunable weights to remove, in [0, 1)."
    ),
    method: str = typer.Option("magnitude", "--method", "-m", help="magnitude | layerwise | random"),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the cvlth-mask/1 file."),
    seed: int = typer.Option(0, help="Seed for the random method."),
    source: str = typer.Option("auto", help=f"Checkpoint format: {' | '.join(SOURCES)}."),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists (never an input)."),
) -> None:
    """Compute a one-shot mask for a ResNet checkpoint and write it as a cvlth-mask/1 file."""
    if not 0.0 <= sparsity < 1.0:
        raise CvlthError(f"--sparsity must be in [0, 1), got {sparsity}")
    if not 0 <= seed <= MAX_SEED:
        raise CvlthError(f"--seed must be in 0..{MAX_SEED} (63 bits), got {seed}", hint="use a smaller seed")
    input_file(checkpoint, "a checkpoint file")
    output_file(out, [checkpoint], force)
    strategy = get_strategy(method)
    # Any supported format (torchvision, MoCo, SimCLR, timm, cvlth) -> canonical keys; non-ResNets fail here.
    imported = import_checkpoint(checkpoint, source)
    _require_complete(checkpoint, imported.report)
    weights = prunable_state(imported.state_dict)
    mask = strategy(weights, sparsity, None, seed)
    mask.save(
        out,
        method=method,
        source_sha256=_sha256(checkpoint),
        source=checkpoint.name,
        source_format=imported.report.format,
        round="oneshot",
    )
    Console().print(
        f"wrote {escape(str(out))}: {mask.kept:,}/{mask.total:,} weights kept, sparsity {mask.sparsity:.2%}"
    )


def _require_complete(checkpoint: Path, report: ImportReport) -> None:
    """A mask of a checkpoint that lacks tensors of its architecture (or has them mis-shaped) would not
    fit the model it is meant for: the missing layers would be absent from the mask."""
    incomplete = report.incomplete()
    if incomplete is not None:
        raise CvlthError(
            f"{checkpoint} is an incomplete {report.architecture.description}: {incomplete}",
            hint=f"`cvlth inspect {checkpoint}` lists them; prune a complete checkpoint",
        )


@mask_app.command("show")
def show(
    path: Path = typer.Argument(..., help="A cvlth-mask/1 file."),
    layers: bool = typer.Option(True, help="Print the per-layer table."),
) -> None:
    """Print the global and per-layer sparsity of a mask file."""
    mask, provenance = load_mask(input_file(path, "a mask file"))
    console = Console()
    # Every name and value comes from the file (or the command line) and may hold rich markup.
    # soft_wrap: a long path stays one line that can be copied, whatever the terminal's width
    console.print(f"[bold]{escape(str(path))}[/]  {escape(str(provenance.get('format')))}", soft_wrap=True)
    for key, value in sorted(provenance.items()):
        if key != "format":
            console.print(f"  {escape(key)}: {escape(value)}")
    console.print(
        f"global sparsity {mask.sparsity:.4%}  kept {mask.kept:,} / {mask.total:,} in {len(mask)} tensors"
    )
    if layers:
        table = Table("layer", "shape", "kept", "total", "sparsity")
        for name, (kept, total) in mask.layer_counts().items():
            table.add_row(
                escape(name),
                "x".join(map(str, mask[name].shape)),
                f"{kept:,}",
                f"{total:,}",
                f"{1 - kept / total:.2%}",
            )
        console.print(table)
