"""The resume harness shared by the streamed-training tests: a tiny masked training on a JPEG tree,
run in a subprocess, SIGKILLed mid-epoch, resumed, and compared byte for byte with an
uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent  # tests/: the shared fixtures
KILL_AT = "CVLTH_TEST_KILL_AT_STEP"


def resume_config(data_name: str) -> Any:
    """2 epochs, a checkpoint every 3 steps; ``data_name`` only names the run (its hash)."""
    from training_fixtures import tiny_config

    cfg = tiny_config(epochs=2, checkpoint_every=3)
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"name": data_name})})


def run_script(script: str, *args: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """``python script args...`` on one thread; with ``kill_at`` the training SIGKILLs itself after
    that step."""
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent / 'src'}{os.pathsep}{HERE}", "OMP_NUM_THREADS": "1"}
    env.pop(KILL_AT, None)
    if kill_at is not None:
        env[KILL_AT] = str(kill_at)
    return subprocess.run(
        [sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=600
    )


def train_in_store(config: Any, store_root: str, objective: Any, train_batches: Any, data: Any) -> None:
    """The subprocess's side: a masked TinyNet trained on ``train_batches`` as run ``config``."""
    from cvlth.store import Store
    from cvlth.training.loop import train
    from training_fixtures import TinyNet, _kill_after, half_mask

    kill_at = os.environ.get(KILL_AT)

    def run(folder):
        torch.manual_seed(config.train.seed)
        model = TinyNet()
        return train(
            model,
            objective,
            train_batches,
            training=config.train,
            optim=config.optim,
            schedule=config.schedule,
            run=folder,
            val_data=data.val.batches(20, shuffle=False),
            test_data=data.test.batches(20, shuffle=False),
            mask=half_mask(model),
            callbacks=(_kill_after(int(kill_at)),) if kill_at else (),
            quiet=True,
        )

    Store(store_root).execute(config, run)


def assert_resumes_bit_identical(script: str, tree: Path, tmp_path: Path, config: Any) -> None:
    """Killed after step 11 (checkpoints after steps 3, 6, 8 = epoch end, 9: it resumes at epoch 1,
    batch 1), the resumed run's metrics, result and weights equal an uninterrupted run's."""
    from cvlth.store import Store

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    done = run_script(script, str(tree), str(reference))
    assert done.returncode == 0, done.stderr
    assert run_script(script, str(tree), str(killed), kill_at=11).returncode == -9
    folder = Store(killed).run_dir(config)
    assert not folder.is_done() and torch.load(folder.train_state_path, weights_only=True)["batch"] == 1
    assert run_script(script, str(tree), str(killed)).returncode == 0

    expected = Store(reference).run_dir(config)
    assert folder.metrics_path.read_bytes() == expected.metrics_path.read_bytes()
    assert folder.read_result() == expected.read_result()
    resumed, uninterrupted = (torch.load(f.train_state_path, weights_only=True) for f in (folder, expected))
    for name, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
