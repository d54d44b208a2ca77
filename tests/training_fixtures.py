"""A tiny ResNet-named model, tiny random data and one store-backed training run, for the engine tests.

Run as a script (``python tests/training_fixtures.py STORE [CHECKPOINT_EVERY]``) it executes the
standard tiny run in ``STORE``; with ``CVLTH_TEST_KILL_AT_STEP=N`` in the environment a test-only
callback SIGKILLs the process right after step N (and after that step's checkpoint, if any); with
``CVLTH_TEST_LOGGING=tensorboard,mlflow`` (either or both) it writes those scalar logs.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import torch
from torch import nn

from config_fixtures import TrainConfig
from cvlth.config import DataRef, MultiStepSchedule, SGDConfig, TrainingConfig
from cvlth.data.source import TensorBatchSource
from cvlth.masks import Mask
from cvlth.objectives.supervised import Normalize, SupervisedObjective
from cvlth.store import RunFolder, Store
from cvlth.training.loop import StepInfo, train
from cvlth.training.scalar_logs import RunLogging, scalar_logging

torch.set_num_threads(min(2, os.cpu_count() or 1))


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class TinyNet(nn.Module):
    """Stem + one basic block named like torchvision (``layer1.0.conv1``) + dropout + fc."""

    def __init__(self, width: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width))
        self.dropout = nn.Dropout(0.2)  # draws from the global torch RNG: resume must restore it
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(self.dropout(x.mean((2, 3))))


def flip_augment(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Random horizontal flip drawn from the step's generator, then normalisation."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
    return Normalize()(images, generator)


def make_sources(seed: int = 0, batch_size: int = 16) -> tuple[TensorBatchSource, ...]:
    generator = torch.Generator().manual_seed(1234)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 4, (n,), generator=generator)
        return images, labels

    train_source = TensorBatchSource(*split(64), batch_size=batch_size, shuffle=True, seed=seed)
    val_source = TensorBatchSource(*split(32), batch_size=32, shuffle=False)
    test_source = TensorBatchSource(*split(32), batch_size=32, shuffle=False)
    return train_source, val_source, test_source


def half_mask(model: nn.Module) -> Mask:
    """Deterministic 50% mask over the prunable convs (every other weight)."""
    dense = Mask.dense_for(model)
    return Mask({n: (torch.arange(t.numel()) % 2 == 0).view(t.shape) for n, t in dense.items()})


def tiny_config(epochs: int = 3, checkpoint_every: int | None = 2, lr: float = 0.05) -> TrainConfig:
    return TrainConfig(
        data=DataRef(name="tiny-random"),
        optim=SGDConfig(lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True),
        schedule=MultiStepSchedule(milestones=(2,), gamma=0.1, warmup_epochs=0.5),
        train=TrainingConfig(epochs=epochs, batch_size=16, seed=3, checkpoint_every_steps=checkpoint_every),
    )


def run_tiny(
    folder: RunFolder, cfg: TrainConfig, callbacks: tuple = (), masked: bool = True, **kwargs: Any
) -> tuple[dict[str, Any], TinyNet]:
    torch.manual_seed(cfg.train.seed)
    model = TinyNet()
    train_source, val_source, test_source = make_sources(cfg.train.seed, cfg.train.batch_size)
    result = train(
        model,
        SupervisedObjective(augment=flip_augment),
        train_source,
        training=cfg.train,
        optim=cfg.optim,
        schedule=cfg.schedule,
        run=folder,
        val_data=val_source,
        test_data=test_source,
        mask=half_mask(model) if masked else None,
        callbacks=callbacks,
        quiet=True,
        **kwargs,
    )
    return result, model


def _kill_after(step: int):  # test-only: the library never kills itself
    def callback(info: StepInfo) -> None:
        if info.step == step:
            os.kill(os.getpid(), signal.SIGKILL)

    return callback


def main(store_root: str, checkpoint_every: str = "2") -> None:
    cfg = tiny_config(checkpoint_every=int(checkpoint_every))
    kill_at = os.environ.get("CVLTH_TEST_KILL_AT_STEP")
    callbacks = (_kill_after(int(kill_at)),) if kill_at else ()
    store = Store(store_root)
    logs = os.environ.get("CVLTH_TEST_LOGGING", "").split(",")
    logging = RunLogging.for_study(
        tensorboard="tensorboard" in logs, mlflow="mlflow" in logs, store_root=store_root, study="tiny"
    )
    with scalar_logging(logging):
        store.execute(cfg, lambda folder: run_tiny(folder, cfg, callbacks)[0])
    print(store.run_dir(cfg).path)


if __name__ == "__main__":
    main(*sys.argv[1:])
