"""How long does one epoch of detection / segmentation fine-tuning take on the world scenes?

Trains the Faster R-CNN and the DeepLabV3+ of ``cvlth.models`` (ResNet-18, CIFAR stem, 1 channel,
``--width`` 8 by default) on ``world_scenes`` 64x64 scenes for ``--scenes`` images (default 2000,
one epoch) at ``--batch-size`` 32, with a 50% magnitude mask enforced after every SGD step, then
evaluates on 200 val scenes. Each model is measured twice in the same run, with the builders'
defaults and with the ``model:`` options of ``configs/cpu-study.yaml``, and the speed-up printed.

    PYTHONPATH=src python benchmarks/dense_epoch.py --scenes 2000
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from cvlth.data.registry import load_dataset
from cvlth.models.backbones import BackboneSpec
from cvlth.models.task_models import build_task_model
from cvlth.objectives.detection import DetectionObjective
from cvlth.objectives.segmentation import SegmentationObjective
from cvlth.pruning import MaskEnforcer, magnitude
from cvlth.study.config import load_study


def measure(name: str, model: torch.nn.Module, objective, splits, scenes: int, batch_size: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    MaskEnforcer(model, magnitude(model, 0.5)).attach(optimizer)
    generator = torch.Generator().manual_seed(0)
    batches = splits.batches("train", batch_size)
    model.train()
    seen, start = 0, time.perf_counter()
    for batch in batches.epoch_batches(0):
        loss, _ = objective.train_step(model, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch[0])
        if seen >= scenes:
            break
    train_s = time.perf_counter() - start
    model.eval()
    start = time.perf_counter()
    metrics = objective.evaluate(model, splits.batches("val", 50))
    eval_s = time.perf_counter() - start
    rate = seen / train_s
    print(
        f"{name}: train {rate:.1f} img/s ({seen} scenes in {train_s:.1f} s; 2000-scene epoch "
        f"{2000 / rate:.0f} s), eval {len(splits.val) / eval_s:.1f} img/s, val {metrics}",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--only", choices=("detection", "segmentation"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = load_dataset("world_scenes")
    spec = BackboneSpec("resnet18", width=args.width, stem="cifar", in_channels=1)
    print(f"{spec.label}, batch {args.batch_size}, {args.threads} threads, load {os.getloadavg()[0]:.1f}")
    study = load_study("cpu-study")
    objectives = {
        "detection": DetectionObjective(),
        "segmentation": SegmentationObjective(splits.num_classes, splits.mean, splits.std),
    }
    for task in ("detection", "segmentation"):
        if args.only not in (None, task):
            continue
        rates = []
        for label, options in (("defaults", {}), ("cpu-study", study.tasks[task].model)):
            model = build_task_model(task, None, spec, splits, seed=0, options=options)
            rates.append(
                measure(
                    f"{task} ({label} {options})",
                    model,
                    objectives[task],
                    splits,
                    args.scenes,
                    args.batch_size,
                )
            )
        print(f"RESULT {task}_speedup={rates[1] / rates[0]:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
