"""Tiny studies on a slice of the built-in world, shared by the study and report tests."""

from pathlib import Path

import pytest

NEEDS_FASHION_MNIST = pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="needs Debian's dataset-fashion-mnist (make test installs it)",
)

TINY_BACKBONE = {"arch": "resnet18", "width": 4, "stem": "cifar", "in_channels": 1}


def upstream_slice(max_train: int = 256, max_eval: int = 64) -> dict:
    """A 16x16 slice of world_upstream (Fashion-MNIST)."""
    options = {"image_size": 16, "max_train": max_train, "max_val": max_eval, "max_test": max_eval}
    return {"name": "world_upstream", "options": options}


SUPERVISED_PRETRAINING = {
    "recipe": {
        "data": upstream_slice(),
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "train": {"epochs": 1, "batch_size": 64},
    }
}

DIGITS_TASK = {
    "data": {
        "name": "world_digits",
        "options": {"image_size": 16, "max_train": 128, "max_val": 64, "max_test": 64},
    },
    "objective": {"name": "supervised", "options": {"flip": False}},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"epochs": 1, "batch_size": 64},
}

#: Every finder kind on one pre-training and one task: a full study in seconds.
TINY = {
    "name": "tiny",
    "backbone": TINY_BACKBONE,
    "pretrainings": {"supervised": SUPERVISED_PRETRAINING},
    "tasks": {"digits": DIGITS_TASK},
    "finders": [
        {"name": "imp-up", "method": "imp", "stage": "upstream"},
        {"name": "imp-task", "method": "imp", "stage": "downstream"},
        {"name": "imp-init", "method": "imp", "stage": "downstream", "rewind": "init"},
        {"name": "omp", "method": "omp"},
        {"name": "random", "method": "random"},
    ],
    "rounds": 3,
    "transfer_levels": [3],
    "seeds": [0, 1],
    "adapt": {"small_images": False},
}
