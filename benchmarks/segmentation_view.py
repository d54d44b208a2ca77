"""Milliseconds per VOC-sized sample: reading it (JPEG + palette PNG) and its segmentation training
view (random scale 0.5-2.0, pad, 513 crop: cvlth's uint8 tensor ops vs the reference's PIL ops).

VOC images are at most 500x500 (typically 500x375). The samples are synthetic (smooth noise, JPEG
quality 90) and written to a temporary folder. The last line is ``RESULT read_ms=<r> view_ms=<v>
pil_view_ms=<p>`` (medians per sample; one thread).

    PYTHONPATH=src python benchmarks/segmentation_view.py [--samples 40] [--crop 513]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cvlth.data.segmentation_transforms import random_scale_crop  # noqa: E402
from cvlth.data.voc import read_label_png, read_rgb  # noqa: E402


def _write_samples(folder: Path, count: int) -> list[tuple[Path, Path]]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        coarse = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((500, 375), Image.Resampling.BICUBIC)
        jpeg = folder / f"{index}.jpg"
        image.save(jpeg, quality=90)
        labels = np.kron(rng.integers(0, 21, (15, 20)), np.ones((25, 25))).astype(np.uint8)
        png = Image.fromarray(labels, mode="P")
        png.putpalette([v for i in range(256) for v in (i, i, i)])
        png.save(folder / f"{index}.png")
        paths.append((jpeg, folder / f"{index}.png"))
    return paths


def _pil_view(image: Image.Image, label: Image.Image, crop: int) -> tuple[Image.Image, Image.Image]:
    """The reference's ExtRandomScale + ExtRandomCrop(pad_if_needed) in PIL (bottom/right pad)."""
    scale = random.uniform(0.5, 2.0)
    size = (int(image.width * scale), int(image.height * scale))
    image, label = image.resize(size, Image.Resampling.BILINEAR), label.resize(size, Image.Resampling.NEAREST)
    width, height = max(crop, size[0]), max(crop, size[1])
    canvas, label_canvas = Image.new("RGB", (width, height)), Image.new("L", (width, height), 255)
    canvas.paste(image)
    label_canvas.paste(label)
    top, left = random.randint(0, height - crop), random.randint(0, width - crop)
    box = (left, top, left + crop, top + crop)
    return canvas.crop(box), label_canvas.crop(box)


def _median_ms(action, items) -> float:
    times = []
    for item in items:
        start = time.perf_counter()
        action(item)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--crop", type=int, default=513)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_samples(Path(folder), args.samples)
        read_ms = _median_ms(lambda p: (read_rgb(p[0], 512), read_label_png(p[1], 512)), paths)
        samples = [(read_rgb(p[0], 512)[0], read_label_png(p[1], 512)) for p in paths]
        generator = torch.Generator().manual_seed(0)
        view_ms = _median_ms(
            lambda s: random_scale_crop(s[0], s[1], args.crop, generator, (0.5, 2.0)), samples
        )
        pil = [(Image.open(p[0]).convert("RGB"), Image.open(p[1]).convert("L")) for p in paths]
        random.seed(0)
        pil_ms = _median_ms(lambda s: _pil_view(s[0], s[1], args.crop), pil)
    print(
        f"per sample (median of {args.samples}): read {read_ms:.1f} ms, view {view_ms:.1f} ms, PIL view {pil_ms:.1f} ms"
    )
    print(f"RESULT read_ms={read_ms:.2f} view_ms={view_ms:.2f} pil_view_ms={pil_ms:.2f}")


if __name__ == "__main__":
    main()
