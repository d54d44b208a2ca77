"""One rank of a study's pre-training and upstream IMP under torchrun (gloo), the reference for the
Ray executor's data-parallel runs (tests/study/test_ray_executor.py).

Every rank computes in its own store, OUT/rank<r>, calling the run kinds' executors directly (no
Store.execute, no Ray): the training loop writes metrics there on rank 0 only; θ_p and masks on both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from cvlth.runs.execute import RUN_EXECUTORS, Context
from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from cvlth.training import distributed


def main(study_path: str, out: str) -> None:
    torch.set_num_threads(1)
    env = distributed.init_from_env(backend="gloo")
    store = Store(Path(out) / f"rank{env.rank}")
    ctx = Context(store=store, quiet=True, log=lambda _: None, threads=1)
    for item in expand(load_study(study_path)):
        if item.run.kind in ("pretrain", "imp"):  # in plan order: the pre-training first
            folder = store.run_dir(item.run)
            folder.path.mkdir(parents=True)
            RUN_EXECUTORS[item.run.kind](item.run, folder, ctx)
    distributed.close(env)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
