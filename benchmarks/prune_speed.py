"""Global pruning step on ResNet-50's prunable set: cvlth vs a numpy full sort vs torch.nn.utils.prune.

Run: .venv/bin/python benchmarks/prune_speed.py
Prints the median of several repetitions of each, measured side by side in one run, and the mask
file's bytes per weight. The timed step is an IMP step: prune 20% of the weights a 20%-sparse mask keeps.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune
import torchvision

from cvlth.pruning import global_magnitude, prunable_parameters

REPEATS = 5


def median_ms(fn: Callable[[], object], setup: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(REPEATS + 1):  # the first run warms up allocations
        setup()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times[1:])


def numpy_sort_step(weights: dict[str, torch.Tensor], mask: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """OpenLTH's way: sort all surviving magnitudes with numpy, take the threshold."""
    alive = np.concatenate([np.abs(w.numpy()[mask[n]]) for n, w in weights.items()])
    threshold = np.sort(alive)[round(0.2 * alive.size)]
    return {n: mask[n] & (np.abs(w.numpy()) >= threshold) for n, w in weights.items()}


def main() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    params = prunable_parameters(model)
    weights = {n: p.detach() for n, p in params.items()}
    total = sum(w.numel() for w in weights.values())
    print(
        f"ResNet-50 prunable set: {len(weights)} tensors, {total:,} weights, torch threads {torch.get_num_threads()}"
    )

    first = global_magnitude(weights, 0.2)
    ours = median_ms(lambda: global_magnitude(weights, 0.2, first))
    numpy_mask = {n: first[n].numpy() for n in weights}
    numpy_ms = median_ms(lambda: numpy_sort_step(weights, numpy_mask))

    modules = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and n != "conv1"]

    def reset_torch_prune() -> None:
        for module in modules:
            if hasattr(module, "weight_orig"):
                torch_prune.remove(module, "weight")

    torch_ms = median_ms(
        lambda: torch_prune.global_unstructured(
            [(m, "weight") for m in modules], pruning_method=torch_prune.L1Unstructured, amount=0.2
        ),
        setup=reset_torch_prune,
    )
    reset_torch_prune()

    with tempfile.TemporaryDirectory() as tmp:
        path = first.save(Path(tmp) / "mask.safetensors")
        bytes_per_weight = path.stat().st_size / total
    float_mask_bytes = 4.0  # torch.nn.utils.prune keeps a float32 weight_mask per weight

    print(f"cvlth global step     {ours:8.1f} ms")
    print(f"numpy full sort       {numpy_ms:8.1f} ms   ({numpy_ms / ours:.1f}x ours)")
    print(f"torch global_unstr.   {torch_ms:8.1f} ms   ({torch_ms / ours:.1f}x ours)")
    print(
        f"mask file             {bytes_per_weight:.4f} bytes/weight vs {float_mask_bytes:.0f} for a float32/int32 mask"
    )
    print(
        f"RESULT prune_ms={ours:.1f} numpy_sort_ms={numpy_ms:.1f} torch_prune_ms={torch_ms:.1f} "
        f"bytes_per_weight={bytes_per_weight:.4f}"
    )


if __name__ == "__main__":
    main()
