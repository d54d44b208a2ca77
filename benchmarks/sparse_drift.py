"""How steady the ticket's speed-up is from one round to the next: ONNX Runtime's dense ResNet-50 and
cvlth's direct kernel on its global-magnitude ticket, run in alternation for a while at batch 16, each
pair's ratio printed, then the share of pairs below a goal.

    PYTHONPATH=src python benchmarks/sparse_drift.py [--sparsity 0.95] [--seconds 240] [--goal 3]

``sparse_inference.py`` reports medians over a few interleaved rounds; on a shared VM whose speed drifts
within minutes, this shows how often a single pair falls short and whether the two engines slow down
together (same weights, masks and input as ``sparse_inference.py``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cvlth.deploy.speed import engines
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.pruning import global_magnitude, prunable_state

SPEC = BackboneSpec("resnet50", width=64, stem="imagenet", in_channels=3)
PAIR = (("onnxruntime", "dense"), ("cvlth-direct", "ticket"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--goal", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    dense = build_backbone(SPEC, 1000).eval()
    mask = global_magnitude(prunable_state(dense.state_dict()), args.sparsity)
    ticket = build_backbone(SPEC, 1000).eval()
    ticket.load_state_dict(dense.state_dict())
    with torch.no_grad():
        mask.apply(ticket)
    images = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(args.batch))
    with tempfile.TemporaryDirectory(prefix="cvlth-drift-") as tmp:
        runners = engines(dense, ticket, (3, 224, 224), torch.get_num_threads(), Path(tmp))
        missing = [key for key in PAIR if key not in runners]
        if missing:
            raise SystemExit(f"needs ONNX Runtime and the direct kernel; missing here: {missing}")
        dense_run, ticket_run = (runners[key] for key in PAIR)
        for run in (dense_run, ticket_run):  # warm-up
            run(images)
        seconds: dict[str, list[float]] = {"dense": [], "ticket": []}
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for name, run in (("dense", dense_run), ("ticket", ticket_run)):
                start = time.perf_counter()
                run(images)
                seconds[name].append(time.perf_counter() - start)
            ratio = seconds["dense"][-1] / seconds["ticket"][-1]
            print(
                f"{time.strftime('%H:%M:%S')} onnxruntime dense {seconds['dense'][-1] * 1e3:7.1f} ms  "
                f"ticket {seconds['ticket'][-1] * 1e3:7.1f} ms  ratio {ratio:.2f}",
                flush=True,
            )
    ratios = [d / t for d, t in zip(seconds["dense"], seconds["ticket"], strict=True)]
    for name, values in seconds.items():
        ms = sorted(v * 1e3 for v in values)
        print(f"{name}: median {statistics.median(ms):.1f} ms, range {ms[0]:.1f}-{ms[-1]:.1f} ms")
    below = sum(r < args.goal for r in ratios)
    print(
        f"RESULT pairs={len(ratios)} ratio_median={statistics.median(ratios):.2f} ratio_min={min(ratios):.2f} "
        f"below_{args.goal:g}x={below} ({below / len(ratios):.0%})"
    )


if __name__ == "__main__":
    main()
