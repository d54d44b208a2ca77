"""Images per second: cvlth's streaming image folder vs torchvision's ImageFolder + DataLoader.

Both read the same JPEG tree (generated: ``--images`` photos of 500x375 / 375x500 px, or ``--root``
with ``train/<class>/*.jpg``) with the same number of DataLoader worker processes and batch size,
side by side in one run. torchvision gets its standard ImageNet training transforms
(RandomResizedCrop(224), RandomHorizontalFlip, ToTensor, Normalize); cvlth's streaming source does
the same crop and flip and hands uint8 batches on (normalisation happens on the training device).
Each side runs one warm-up epoch (worker start-up, page cache) and is timed on the second. The
last line is ``RESULT streaming_img_s=<x> torchvision_img_s=<y> ratio=<x/y>``.

    PYTHONPATH=src python benchmarks/streaming.py [--images 512] [--workers 2] [--batch 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as tv

from cvlth.data.registry import IMAGENET_STATS, load_dataset


def write_jpegs(root: Path, count: int, classes: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for number in range(count):
        width, height = (500, 375) if number % 2 else (375, 500)
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        folder = root / "train" / f"class{number % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC).save(
            folder / f"{number}.jpg"
        )
    (root / "val").mkdir(exist_ok=True)
    for number in range(classes):  # the listing wants val/<class>/ too
        (root / "val" / f"class{number}").mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / "val" / f"class{number}" / "0.jpg")
    return root


def second_epoch_rate(epochs: Iterable[Iterable]) -> float:
    """Images per second over the second epoch of ``epochs`` (the first warms up)."""
    rate = 0.0
    for epoch, batches in enumerate(epochs):
        start, count = time.perf_counter(), 0
        for batch in batches:
            count += len(batch[1])
        rate = count / (time.perf_counter() - start)
        if epoch == 1:
            return rate
    return rate


def torchvision_rate(root: Path, workers: int, batch: int) -> float:
    transform = tv.Compose(
        [tv.RandomResizedCrop(224), tv.RandomHorizontalFlip(), tv.ToTensor(), tv.Normalize(*IMAGENET_STATS)]
    )
    loader = DataLoader(
        datasets.ImageFolder(str(root / "train"), transform=transform),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    return second_epoch_rate(loader for _ in range(2))


def streaming_rate(root: Path, workers: int, batch: int) -> float:
    train = load_dataset("imagefolder", root, streaming=True, val_size=0).train
    source = replace(train, workers=workers).batches(batch, shuffle=True, seed=0)
    return second_epoch_rate(source.epoch_batches(epoch) for epoch in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="an existing tree (default: generate one)")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or write_jpegs(Path(scratch), args.images)
        count = len(list((root / "train").rglob("*.jpg")))
        print(f"{count} JPEGs under {root / 'train'}, {args.workers} workers, batch {args.batch}")
        tv_rate = torchvision_rate(root, args.workers, args.batch)
        print(f"torchvision ImageFolder + DataLoader: {tv_rate:.1f} img/s")
        ours = streaming_rate(root, args.workers, args.batch)
        print(f"cvlth streaming imagefolder:         {ours:.1f} img/s")
    print(f"RESULT streaming_img_s={ours:.1f} torchvision_img_s={tv_rate:.1f} ratio={ours / tv_rate:.3f}")


if __name__ == "__main__":
    main()
