"""``cvlth inspect``: what a checkpoint is, and what importing it keeps and drops."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app
from cvlth.cli.checks import input_file
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.importer import ImportedCheckpoint, import_checkpoint
from cvlth.models.checkpoints.loading import load_into
from cvlth.models.checkpoints.sources import NORMALIZATION, SOURCES
from cvlth.scope import prunable_state
from cvlth.zoo.files import checkpoint_file, is_zoo_path

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def parameter_counts(imported: ImportedCheckpoint) -> tuple[int, int]:
    """(all parameters, of which in ``fc``) of the imported backbone; BN buffers are not parameters."""
    params = {k: v for k, v in imported.state_dict.items() if not k.endswith(_BUFFERS)}
    total = sum(v.numel() for v in params.values())
    return total, sum(v.numel() for k, v in params.items() if k.startswith("fc."))


@app.command()
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="A ResNet checkpoint (.pt/.pth/.safetensors).")],
    source: Annotated[str, typer.Option(help=f"Checkpoint format: {' | '.join(SOURCES)}.")] = "auto",
    arch: Annotated[
        str | None,
        typer.Option(help="Also check that it loads strictly into this architecture (e.g. resnet50)."),
    ] = None,
    keys: Annotated[bool, typer.Option(help="List every dropped key, not only a count per reason.")] = False,
) -> None:
    """Print a checkpoint's format, architecture, parameter counts and import report."""
    if is_zoo_path(str(checkpoint)):  # world:NAME, a checkpoint cvlth ships
        checkpoint = checkpoint_file(str(checkpoint))
    imported = import_checkpoint(input_file(checkpoint, "a checkpoint file"), source)
    report = imported.report
    console = Console()
    total, in_fc = parameter_counts(imported)
    prunable = prunable_state(imported.state_dict)
    console.print(f"[bold]{escape(str(checkpoint))}[/]")
    summary = Table.grid(padding=(0, 2))
    summary.add_row("format", escape(report.format))
    summary.add_row("architecture", escape(report.architecture.description))
    summary.add_row("parameters", f"{total:,} ({in_fc:,} in fc)")
    summary.add_row(
        "prunable weights", f"{sum(t.numel() for t in prunable.values()):,} in {len(prunable)} convs"
    )
    summary.add_row(
        "input", escape(f"{report.normalization}: {NORMALIZATION.get(report.normalization, '?')}")
    )
    summary.add_row("head", escape(report.head))
    for label, text in zoo_provenance(report.metadata):
        summary.add_row(label, escape(text))
    console.print(summary)
    console.print(_report_table(imported, keys))
    for note in report.notes:
        console.print(f"note: {escape(note)}")
    if arch is not None:
        _check_fit(imported, arch, console)


def _report_table(imported: ImportedCheckpoint, list_keys: bool) -> Table:
    report = imported.report
    table = Table("import", "count", "keys", title="import report", title_justify="left")
    table.add_row("loaded", str(len(report.loaded)), _examples(report.loaded))
    for reason, names in sorted(report.dropped_by_reason().items()):
        shown = escape(", ".join(names)) if list_keys else _examples(names)
        table.add_row(escape(f"dropped: {reason}"), str(len(names)), shown)
    table.add_row("missing", str(len(report.missing)), _examples(report.missing))
    mis = [f"{k} {list(a)} vs {list(b)}" for k, (a, b) in report.mis_shaped.items()]
    table.add_row("mis-shaped", str(len(mis)), _examples(mis))
    table.add_row("filled (num_batches_tracked = 0)", str(len(report.filled)), _examples(report.filled))
    return table


def _examples(names: list[str], limit: int = 3) -> str:
    """The first ``limit`` names, escaped: key names come from the file and may hold rich markup."""
    more = f", … (+{len(names) - limit})" if len(names) > limit else ""
    return escape(", ".join(names[:limit]) + more)


def _check_fit(imported: ImportedCheckpoint, arch: str, console: Console) -> None:
    info = imported.report.architecture
    spec = BackboneSpec(arch, info.width, info.stem, info.in_channels)
    model = build_backbone(spec, info.fc_classes or 1000)
    result = load_into(model, imported, strict=True, skip=() if info.fc_classes else ("fc.",))
    console.print(f"fits {escape(spec.label)}: {len(result.loaded)} tensors load strictly")


def zoo_provenance(metadata: dict[str, str]) -> list[tuple[str, str]]:
    """A world checkpoint's measured quality and what built it (empty for other checkpoints)."""
    if "zoo_name" not in metadata:
        return []
    try:
        quality = json.loads(metadata.get("quality", "{}"))
    except json.JSONDecodeError:
        quality = {}
    names = {
        "top1_accuracy": "top-1",
        "knn_accuracy": "k-NN",
        "linear_probe_accuracy": "linear probe",
        "objective_retrieval_accuracy": "Eq. 2 retrieval",
    }
    measured = ", ".join(f"{label} {quality[key]:.4f}" for key, label in names.items() if key in quality)
    test = quality.get("test_images", "?")
    return [
        ("world checkpoint", f"world:{metadata['zoo_name']}"),
        ("quality", f"{measured} (upstream test split, {test} images)"),
        ("built by", f"{metadata.get('run_hash', '?')} at cvlth {metadata.get('cvlth_commit', '?')}"),
    ]
