"""What a ticket's sparsity buys at inference on this CPU: ResNet-50 at 224 px, dense vs global-magnitude
tickets at 90% and 95%, on every engine present (PyTorch eager, ONNX Runtime, DeepSparse when the user
installed it, cvlth's own sparse path), interleaved medians, in one run.

    PYTHONPATH=src python benchmarks/sparse_inference.py [--batch 16] [--rounds 7] [--threads 2]

Ends with ``RESULT speedup_90=… speedup_95=…``: the ticket on cvlth's fastest path (the direct kernel
or the CSR path) against the fastest dense engine, at the largest batch. Weights are a seeded random init (latency does not depend on
their values, only on which are zero); the masks are global magnitude masks of those weights.
"""

from __future__ import annotations

import argparse

import torch

from cvlth.deploy.speed import CVLTH_ENGINES, measure_speed, speedups
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.pruning import global_magnitude, prunable_state

SPEC = BackboneSpec("resnet50", width=64, stem="imagenet", in_channels=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default: 1 and 16)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = tuple(args.batch or [1, 16])
    torch.manual_seed(0)
    dense = build_backbone(SPEC, 1000).eval()
    shape = (3, args.image_size, args.image_size)
    ratios = {}
    for sparsity in (0.9, 0.95):
        mask = global_magnitude(prunable_state(dense.state_dict()), sparsity)
        ticket = build_backbone(SPEC, 1000).eval()
        ticket.load_state_dict(dense.state_dict())
        with torch.no_grad():
            mask.apply(ticket)
        print(f"--- ticket at {mask.sparsity:.2%} sparsity, {torch.get_num_threads()} threads", flush=True)
        timings = measure_speed(
            dense, ticket, shape, batches, args.rounds, log=lambda line: print(line, flush=True)
        )
        print(f"{'engine':<14} {'batch':>5} {'model':<7} {'ms':>9} {'img/s':>8}")
        for t in sorted(timings, key=lambda t: (t.batch, t.engine, t.model)):
            print(
                f"{t.engine:<14} {t.batch:>5} {t.model:<7} {t.seconds * 1e3:>9.1f} {t.images_per_second:>8.1f}"
            )
        for batch in batches:
            ratio, ticket_engine, dense_engine = speedups(timings, batch, CVLTH_ENGINES)
            print(f"batch {batch}: ticket on {ticket_engine} / fastest dense ({dense_engine}): {ratio:.2f}x")
        ratios[round(sparsity * 100)] = speedups(timings, max(batches), CVLTH_ENGINES)[0]
    print(f"RESULT speedup_90={ratios[90]:.2f} speedup_95={ratios[95]:.2f}")


if __name__ == "__main__":
    main()
