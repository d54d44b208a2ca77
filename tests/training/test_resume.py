"""A run SIGKILLed mid-training and started again ends bit-identical to an uninterrupted run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvlth.store import Store
from training_fixtures import run_tiny, tiny_config

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared fixtures
SCRIPT = HERE / "training_fixtures.py"


def run_script(store_root: Path, kill_at: int | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    env.pop("CVLTH_TEST_KILL_AT_STEP", None)
    if kill_at is not None:
        env["CVLTH_TEST_KILL_AT_STEP"] = str(kill_at)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(store_root)], env=env, capture_output=True, timeout=120
    )
    return done.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process (same thread count as the script)."""
    store, cfg = Store(tmp_path_factory.mktemp("reference")), tiny_config()
    store.execute(cfg, lambda folder: run_tiny(folder, cfg)[0])
    return store.run_dir(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 7, 8])  # before any checkpoint, mid-epoch, last batch before eval
def test_killed_run_resumes_bit_identical(tmp_path, reference, kill_at) -> None:
    assert run_script(tmp_path, kill_at) == -9
    folder = Store(tmp_path).run_dir(tiny_config())
    assert not folder.is_done()
    assert run_script(tmp_path) == 0

    assert folder.metrics_path.read_bytes() == reference.metrics_path.read_bytes()
    assert folder.read_result() == reference.read_result()
    resumed = torch.load(folder.train_state_path, weights_only=True)
    expected = torch.load(reference.train_state_path, weights_only=True)
    assert resumed["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    for key, state in expected["optimizer"]["state"].items():
        assert torch.equal(resumed["optimizer"]["state"][key]["momentum_buffer"], state["momentum_buffer"])


@pytest.mark.slow
def test_a_folder_an_older_cvlth_started_resumes_from_its_checkpoint_pt(tmp_path, reference) -> None:
    # Before the training state was renamed it lived in checkpoint.pt, tagged cvlth-checkpoint/1.
    assert run_script(tmp_path, kill_at=7) == -9
    folder = Store(tmp_path).run_dir(tiny_config())
    state = torch.load(folder.path / "train-state.pt", weights_only=True)
    assert state["format"] == "cvlth-train-state/1" and state["step"] > 0
    torch.save({**state, "format": "cvlth-checkpoint/1"}, folder.path / "checkpoint.pt")
    (folder.path / "train-state.pt").unlink()
    assert folder.status == "resumable"
    assert run_script(tmp_path) == 0
    assert folder.metrics_path.read_bytes() == reference.metrics_path.read_bytes()
    assert folder.read_result() == reference.read_result()
