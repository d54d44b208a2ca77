"""Two CPU processes under torchrun (gloo): identical masks, identical final weights, mask held."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cvlth.training.distributed import DistEnv, shard_batch

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared fixtures


def test_shard_batch_gives_disjoint_contiguous_slices() -> None:
    batch = (torch.arange(10), {"labels": torch.arange(10) * 2})
    shards = [shard_batch(batch, DistEnv(rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat([s[0] for s in shards]), torch.arange(10))
    assert torch.equal(shards[1][1]["labels"], torch.arange(5, 10) * 2)
    assert shard_batch(batch, DistEnv()) is batch


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(HERE / "ddp_worker.py"), str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert "the mask differs between rank 0 and ranks [1]" in ranks[0]["caught"]
    masks = [r["mask"] for r in ranks]
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    for name, tensor in ranks[0]["model"].items():
        assert torch.equal(ranks[1]["model"][name], tensor), name
    for name, keep in masks[0].items():
        assert torch.all(ranks[0]["model"][name][~keep] == 0), name
    assert ranks[0]["result"] == ranks[1]["result"]

    # Only rank 0 wrote: one metrics line per global step (4 per epoch) plus one per evaluation.
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 * 4 + 2
    saved = torch.load(tmp_path / "run" / "train-state.pt", weights_only=True)
    assert all(torch.equal(saved["model"][n], t) for n, t in ranks[0]["model"].items())


def test_shard_batch_slices_per_sample_lists() -> None:
    images = [torch.full((1, 2, 2), i) for i in range(5)]
    targets = [{"labels": torch.tensor([i, i])} for i in range(5)]
    shards = [shard_batch((images, targets), DistEnv(rank=r, world_size=2)) for r in range(2)]
    assert [int(i[0, 0, 0]) for i in shards[0][0]] == [0, 1, 2]
    assert [int(t["labels"][0]) for t in shards[1][1]] == [3, 4]  # samples stay whole
