"""How much does cvlth's training loop cost over a bare PyTorch loop, and what does a mask cost?

Measured side by side in one process on a width-16 ResNet-18 (CIFAR stem: 3x3 conv, no max-pool)
at 32x32, batch 128, random data. Variants, interleaved over several rounds to even out noise:

* bare:        a hand-written loop (normalise, forward, cross-entropy, backward, SGD step)
* dense:       ``cvlth.training.loop.train`` without a mask
* masked:      the same with an 80% global-magnitude mask (enforced after every step)
* torch_prune: the bare loop on a model pruned by ``torch.nn.utils.prune.global_unstructured``
               (L1, 80%), i.e. weight_orig * weight_mask recomputed by a hook in every forward

Prints images/s and step times, then ``RESULT masked_over_dense=<r1> loop_over_bare=<r2>
torch_prune_over_dense=<r3>`` (r1, r3: step-time ratios, lower is better; r2: throughput ratio).

The model is ``cvlth.models.backbones.build_backbone`` (torchvision's ResNet at width 16).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from cvlth.config import ConstantSchedule, SGDConfig, TrainingConfig
from cvlth.data.source import TensorBatchSource
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.objectives.supervised import Normalize, SupervisedObjective
from cvlth.pruning import iter_prunable, magnitude
from cvlth.training.loop import train

SGD = SGDConfig(lr=0.01, momentum=0.9, weight_decay=5e-4)


def random_source(steps: int, batch: int) -> TensorBatchSource:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (steps * batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (steps * batch,), generator=generator)
    return TensorBatchSource(images, labels, batch_size=batch, shuffle=True, seed=0)


def bare_runner(model: nn.Module, source: TensorBatchSource) -> Callable[[], None]:
    optimizer = torch.optim.SGD(
        model.parameters(), lr=SGD.lr, momentum=SGD.momentum, weight_decay=SGD.weight_decay
    )
    normalize = Normalize()
    epoch = [0]

    def run() -> None:
        model.train()
        for images, labels in source.epoch_batches(epoch[0]):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(normalize(images)), labels).backward()
            optimizer.step()
        epoch[0] += 1

    return run


def loop_runner(model: nn.Module, source: TensorBatchSource, mask=None) -> Callable[[], None]:
    training = TrainingConfig(epochs=1, batch_size=source.batch_size)
    objective = SupervisedObjective()

    def run() -> None:
        train(
            model,
            objective,
            source,
            training=training,
            optim=SGD,
            schedule=ConstantSchedule(),
            mask=mask,
            quiet=True,
        )

    return run


def torch_pruned(model: nn.Module, amount: float) -> nn.Module:
    targets = [(module, "weight") for module in model.modules() if module in _prunable_convs(model)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    return model


def _prunable_convs(model: nn.Module) -> set[nn.Module]:
    by_param = {id(item.parameter) for item in iter_prunable(model)}
    return {m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m.weight) in by_param}


def measure(runners: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each runner, interleaved round by round after one warm-up call each."""
    for run in runners.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    source = random_source(args.steps, args.batch)

    def fresh() -> nn.Module:
        torch.manual_seed(0)
        return build_backbone(BackboneSpec("resnet18", args.width, "cifar", 3), num_classes=10)

    masked_model = fresh()
    mask = magnitude(masked_model, fraction=0.8)
    runners = {
        "bare": bare_runner(fresh(), source),
        "dense": loop_runner(fresh(), source),
        "masked": loop_runner(masked_model, source, mask),
        "torch_prune": bare_runner(torch_pruned(fresh(), 0.8), source),
    }
    times = measure(runners, args.rounds)
    # The fastest round: interference from other processes only ever adds time.
    step = {name: min(ts) / args.steps for name, ts in times.items()}

    print(f"width-{args.width} ResNet-18, CIFAR stem, 32x32, batch {args.batch}, {args.threads} threads, "
          f"{args.steps} steps x {args.rounds} interleaved rounds; mask sparsity {mask.sparsity:.2%}")  # fmt: skip
    for name, seconds in step.items():
        runs = ", ".join(f"{t / args.steps * 1000:.1f}" for t in times[name])
        print(
            f"  {name:12s} {args.batch / seconds:8.1f} images/s   {seconds * 1000:7.1f} ms/step  (rounds: {runs})"
        )
    r1 = step["masked"] / step["dense"]
    r2 = step["bare"] / step["dense"]  # throughput ratio = inverse step-time ratio
    r3 = step["torch_prune"] / step["dense"]
    print(f"RESULT masked_over_dense={r1:.3f} loop_over_bare={r2:.3f} torch_prune_over_dense={r3:.3f}")


if __name__ == "__main__":
    main()
