"""``cvlth export`` and ``cvlth speed``: a ticket as an ONNX file, and what its sparsity buys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app
from cvlth.cli.checks import input_file, output_file
from cvlth.errors import CvlthError


def _image_shape(model_in_channels: int, image_size: int) -> tuple[int, int, int]:
    if image_size < 1:
        raise CvlthError(f"--image-size must be a positive number of pixels, got {image_size}")
    return (model_in_channels, image_size, image_size)


@app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="ResNet checkpoint (any format cvlth imports)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the .onnx file to write")],
    mask: Annotated[
        Path | None, typer.Option(help="cvlth-mask/1 file: its pruned weights become exactly 0")
    ] = None,
    image_size: Annotated[
        int, typer.Option(help="input height and width (the batch size stays dynamic)")
    ] = 224,
    source: Annotated[
        str, typer.Option(help="checkpoint format (auto, torchvision, moco, simclr, timm, cvlth)")
    ] = "auto",
    force: Annotated[bool, typer.Option("--force", help="overwrite --out if it exists")] = False,
) -> None:
    """Export a ticket (a checkpoint's classifier with a mask applied) to ONNX and check it against PyTorch."""
    from cvlth.deploy.export import export_onnx
    from cvlth.deploy.tickets import ticket_model

    input_file(checkpoint, "a checkpoint file")
    if mask is not None:
        input_file(mask, "a mask file")
    output_file(out, [checkpoint, *([mask] if mask else [])], force)
    model = ticket_model(checkpoint, mask, source)
    check = export_onnx(model, out, _image_shape(model.conv1.in_channels, image_size))
    console = Console()
    console.print(f"wrote {escape(str(check.path))}: {check.zero_weights:,} weights exactly zero")
    if check.max_abs_difference is None:
        console.print("not compared with PyTorch: ONNX Runtime is not installed (pip install onnxruntime)")
    else:
        console.print(f"max |ONNX Runtime - PyTorch| on random inputs: {check.max_abs_difference:.2e}")


@app.command("speed")
def speed(
    checkpoint: Annotated[Path, typer.Argument(help="ResNet checkpoint (any format cvlth imports)")],
    mask: Annotated[Path, typer.Option(help="the ticket's cvlth-mask/1 file")],
    batch: Annotated[list[int] | None, typer.Option(help="batch sizes to time (repeat the option)")] = None,
    image_size: Annotated[int, typer.Option(help="input height and width")] = 224,
    rounds: Annotated[
        int, typer.Option(min=1, help="interleaved timed rounds (the median is reported)")
    ] = 10,
    threads: Annotated[int | None, typer.Option(min=1, help="intra-op threads of every engine")] = None,
    source: Annotated[str, typer.Option(help="checkpoint format")] = "auto",
) -> None:
    """Latency and throughput of the dense model and of its ticket on every engine present."""
    import torch

    from cvlth.deploy.speed import CVLTH_ENGINES, measure_speed, speedups
    from cvlth.deploy.tickets import ticket_model

    input_file(checkpoint, "a checkpoint file")
    input_file(mask, "a mask file")
    if threads is not None:
        torch.set_num_threads(threads)
    dense = ticket_model(checkpoint, None, source)
    ticket = ticket_model(checkpoint, mask, source)
    shape = _image_shape(dense.conv1.in_channels, image_size)
    sizes = tuple(batch or [1, 16])
    console = Console()
    timings = measure_speed(
        dense, ticket, shape, sizes, rounds, log=lambda line: console.print(line, markup=False)
    )
    table = Table("engine", "batch", "dense ms", "ticket ms", "ticket img/s", "speed-up (same engine)",
                  title=f"{checkpoint.name} + {mask.name}, {torch.get_num_threads()} threads, medians of {rounds}")  # fmt: skip
    by_key = {(t.engine, t.model, t.batch): t for t in timings}
    for size in sizes:
        for engine in dict.fromkeys(t.engine for t in timings):
            d, t = by_key.get((engine, "dense", size)), by_key.get((engine, "ticket", size))
            table.add_row(
                engine,
                str(size),
                f"{d.seconds * 1e3:.1f}" if d else "–",
                f"{t.seconds * 1e3:.1f}" if t else "–",
                f"{t.images_per_second:.1f}" if t else "–",
                f"{d.seconds / t.seconds:.2f}x" if d and t else "–",
            )
    console.print(table)
    for size in sizes:
        ratio, ticket_engine, dense_engine = speedups(timings, size)
        console.print(
            f"batch {size}: ticket on {ticket_engine} is {ratio:.2f}x the fastest dense engine ({dense_engine})"
        )
        ratio, ticket_engine, _ = speedups(timings, size, CVLTH_ENGINES)
        console.print(f"batch {size}: on cvlth's fastest path ({ticket_engine}): {ratio:.2f}x")
