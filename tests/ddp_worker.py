"""One rank of the 2-process DDP test; launched by torchrun from tests/training/test_distributed.py.

Each rank draws a *different* random mask on purpose, then takes rank 0's by broadcast, trains the
tiny model in one shared run folder (only rank 0 writes), and saves its final state to OUT/rank<r>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cvlth.errors import TrainingError
from cvlth.masks import Mask
from cvlth.objectives.supervised import SupervisedObjective
from cvlth.training import distributed
from cvlth.training.loop import train
from training_fixtures import TinyNet, flip_augment, make_sources, tiny_config


def main(out: str) -> None:
    env = distributed.init_from_env(backend="gloo")
    cfg = tiny_config(epochs=2)
    torch.manual_seed(100 + env.rank)  # different initial weights: DDP must broadcast rank 0's
    model = TinyNet()
    local = {
        n: torch.rand(t.shape, generator=torch.Generator().manual_seed(env.rank)) < 0.5
        for n, t in Mask.dense_for(model).items()
    }
    try:
        distributed.check_identical("mask", local, env)
        caught = ""
    except TrainingError as error:
        caught = str(error)
    mask = Mask(distributed.broadcast_tensors(local, env))
    train_source, val_source, test_source = make_sources(cfg.train.seed, cfg.train.batch_size)
    result = train(
        model,
        SupervisedObjective(augment=flip_augment),
        train_source,
        training=cfg.train,
        optim=cfg.optim,
        schedule=cfg.schedule,
        run=Path(out) / "run",
        val_data=val_source,
        test_data=test_source,
        mask=mask,
        quiet=True,
        env=env,
    )
    torch.save(
        {"model": model.state_dict(), "mask": dict(mask), "caught": caught, "result": result},
        Path(out) / f"rank{env.rank}.pt",
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
