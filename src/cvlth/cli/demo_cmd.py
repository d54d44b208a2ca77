"""``cvlth demo``: the best end-to-end run that exists (becomes the miniature study)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
import typer
from rich.console import Console
from rich.table import Table

from cvlth.cli import app
from cvlth.masks import Mask
from cvlth.pruning import global_magnitude, imp_sparsity, prunable_parameters


@app.command()
def demo(
    store: Path = typer.Option(Path("runs"), "--store", help="Where results are written."),
    levels: int = typer.Option(5, help="Number of 20% magnitude-pruning levels."),
) -> None:
    """Prune a ResNet-50 (random init; no weights can be downloaded) level by level and save the masks."""
    console = Console()
    out = store / "demo"
    torch.manual_seed(0)
    weights = {n: p.detach() for n, p in prunable_parameters(torchvision.models.resnet50()).items()}
    table = Table("level", "expected sparsity", "mask sparsity", "file")
    mask: Mask | None = None
    for level in range(1, levels + 1):
        mask = global_magnitude(weights, 0.2, mask)
        path = mask.save(out / f"level-{level:02d}.safetensors", method="magnitude", round=level)
        table.add_row(str(level), f"{imp_sparsity(level):.4%}", f"{mask.sparsity:.4%}", str(path))
    console.print(table)
    console.print(f"masks written to {out}/ (inspect one with: cvlth mask show {out}/level-01.safetensors)")
