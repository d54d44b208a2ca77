"""cvlth's direct sparse convolution per layer type against dense ``F.conv2d`` (PyTorch's oneDNN):
one ResNet-50 layer of each kind at batch 16, random masks at 90% and 95%, medians of 5 calls; the
kernel on NCHW images and channel-major (``[C, N, H, W]``, the batch stacked in each plane: what a
block with small planes runs).

    PYTHONPATH=src python benchmarks/sparse_layers.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from cvlth.deploy.sparse_conv import DirectSparseConv2d

LAYERS = [  # name, in, out, kernel, stride, input size (ResNet-50 at 224 px)
    ("layer1 1x1 64->256", 64, 256, 1, 1, 56),
    ("layer1 3x3 64->64", 64, 64, 3, 1, 56),
    ("layer2 3x3 stride 2", 128, 128, 3, 2, 56),
    ("layer3 3x3 256->256", 256, 256, 3, 1, 14),
    ("layer4 1x1 2048->512", 2048, 512, 1, 1, 7),
    ("downsample 1x1 stride 2", 256, 512, 1, 2, 56),
]


def median_seconds(call: Callable[[], object], calls: int = 5) -> float:
    call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads, batch 16")
    with torch.inference_mode():
        for name, cin, cout, kernel, stride, size in LAYERS:
            x = torch.randn(16, cin, size, size, generator=generator)
            for sparsity in (0.9, 0.95):
                conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
                conv.weight.mul_(torch.rand(conv.weight.shape, generator=generator) >= sparsity)
                direct = DirectSparseConv2d(conv)
                expected = conv(x)
                error = float((direct(x) - expected).abs().max())
                x_cm = x.transpose(0, 1).contiguous()
                error_cm = float((direct(x_cm, stacked=True).transpose(0, 1) - expected).abs().max())
                dense = median_seconds(lambda c=conv, x=x: c(x))
                sparse = median_seconds(lambda d=direct, x=x: d(x))
                stacked = median_seconds(lambda d=direct, x=x_cm: d(x, stacked=True))
                print(
                    f"{name:<24} {sparsity:.0%}: dense {dense * 1e3:7.1f} ms, direct {sparse * 1e3:7.1f} ms "
                    f"({dense / sparse:4.2f}x), channel-major {stacked * 1e3:7.1f} ms ({dense / stacked:4.2f}x), "
                    f"max |diff| {max(error, error_cm):.1e}"
                )


if __name__ == "__main__":
    main()
