"""Images per second: cvlth's batch augmentation vs torchvision's per-image PIL pipeline.

Both run SimCLR's view on RGB images of ``--size`` px (RandomResizedCrop, flip, ColorJitter
p=0.8, Grayscale p=0.2, GaussianBlur p=0.5 with SimCLR's kernel of 10% of the side, to tensor,
Normalize), side by side in one run, with 1 and with 2 threads (the PIL pipeline gets 2
DataLoader worker processes for "2 threads"); the batch blur alone (every image blurred) is timed
too. The last line is ``RESULT batch_img_s=<x> pil_img_s=<y> speedup=<z> blur_img_s=<b>`` with
each side's best configuration.

    PYTHONPATH=src python benchmarks/augment_speed.py [--images 4096] [--batch 256] [--size 32]
"""

from __future__ import annotations

import argparse
import os
import time

# On a shared 2-core machine, OpenMP's default spin-waiting makes 2-thread runs collapse (we saw
# 40x slow-downs under load); passive waiting measures the ops, not the spinning. Set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as tv

from cvlth.data import transforms as T
from cvlth.data.augment_pipelines import contrastive_augment
from cvlth.data.photometric_transforms import random_gaussian_blur, simclr_kernel_size

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class _PilImages(Dataset):
    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        size = images.shape[1]
        self.transform = tv.Compose(
            [
                tv.RandomResizedCrop(size),
                tv.RandomHorizontalFlip(),
                tv.RandomApply([tv.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
                tv.RandomGrayscale(p=0.2),
                tv.RandomApply([tv.GaussianBlur(simclr_kernel_size(size), (0.1, 2.0))], p=0.5),
                tv.ToTensor(),
                tv.Normalize(MEAN, STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform(Image.fromarray(self.images[index]))


def pil_images_per_second(images: np.ndarray, batch: int, workers: int) -> float:
    torch.set_num_threads(1)
    loader = DataLoader(_PilImages(images), batch_size=batch, num_workers=workers)
    start = time.perf_counter()
    count = sum(len(b) for b in loader)
    return count / (time.perf_counter() - start)


def batch_images_per_second(
    images: torch.Tensor, batch: int, threads: int, pipeline: T.Transform | None = None
) -> float:
    torch.set_num_threads(threads)
    pipeline = pipeline or contrastive_augment((MEAN, STD))
    generator = torch.Generator().manual_seed(0)
    pipeline(images[:batch], generator)  # warm-up
    start = time.perf_counter()
    for first in range(0, len(images), batch):
        pipeline(images[first : first + batch], generator)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    nchw = torch.from_numpy(hwc).permute(0, 3, 1, 2).contiguous()
    results: dict[str, float] = {}
    for threads in (1, 2):
        results[f"batch_{threads}"] = batch_images_per_second(nchw, args.batch, threads)
        results[f"pil_{threads}"] = pil_images_per_second(hwc, args.batch, workers=0 if threads == 1 else 2)
        print(
            f"{threads} thread(s): batch {results[f'batch_{threads}']:,.0f} img/s, "
            f"PIL {results[f'pil_{threads}']:,.0f} img/s"
        )
    kernel = simclr_kernel_size(args.size)
    blur = T.compose(lambda x, g: T.to_float(x), lambda x, g: random_gaussian_blur(x, g, p=1.0))
    for threads in (1, 2):
        results[f"blur_{threads}"] = batch_images_per_second(nchw, args.batch, threads, blur)
        print(
            f"{threads} thread(s): batch blur alone (kernel {kernel}) {results[f'blur_{threads}']:,.0f} img/s"
        )
    best_batch = max(results["batch_1"], results["batch_2"])
    best_pil = max(results["pil_1"], results["pil_2"])
    best_blur = max(results["blur_1"], results["blur_2"])
    print(
        f"RESULT batch_img_s={best_batch:.0f} pil_img_s={best_pil:.0f} "
        f"speedup={best_batch / best_pil:.2f} blur_img_s={best_blur:.0f}"
    )


if __name__ == "__main__":
    main()
