"""``cvlth study --executor ray``: the same numbers as a serial study, retries, data-parallel runs
that train as under torchrun, and no Ray in ``import cvlth``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cvlth.cli import run_cli
from cvlth.errors import ConfigError, TrainingError
from cvlth.masks import Mask
from cvlth.run_files import mask_path
from cvlth.runs.kinds import PretrainRun
from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from cvlth.study.ray_executor import rank_environments, run_on_ray
from cvlth.study.resources import Placement, RunResources
from cvlth.training.scalar_logs import RunLogging
from study_fixtures import NEEDS_FASHION_MNIST, TINY

TESTS = Path(__file__).resolve().parents[1]

#: TINY cut to a DAG with every dependency kind: pre-training -> upstream IMP / OMP -> transfers.
SMALL = {
    **TINY,
    "finders": [{"name": "imp-up", "method": "imp", "stage": "upstream"}, {"name": "omp", "method": "omp"}],
    "rounds": 2,
    "transfer_levels": [2],
    "seeds": [0],
}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


def _tensorboard_steps(directory: Path) -> list[int]:
    """The steps of train/loss in ``directory``'s event files (TensorBoard's own reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), purge_orphaned_data=False)
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars("train/loss")]


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_import_cvlth_does_not_import_ray() -> None:
    code = (
        "import sys, cvlth, cvlth.cli, cvlth.study.runner, cvlth.study.parallel; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_executor_resources_change_no_run_and_name_real_tasks(tmp_path) -> None:
    from cvlth.run_identity import config_hash

    executor = {
        "resources": {"cpus": 4, "gpus": 1},
        "tasks": {"digits": {"cpus": 8, "gpus": 0.5}},
        "pretrainings": {"supervised": {"cpus": 2, "workers": 2}},
    }
    plain, placed = (
        load_study(_write(tmp_path, config)) for config in (SMALL, {**SMALL, "executor": executor})
    )
    assert [config_hash(i.run) for i in expand(placed)] == [config_hash(i.run) for i in expand(plain)]
    settings = placed.executor
    assert (settings.for_run("digits", "supervised").cpus, settings.for_run("digits", "supervised").gpus) == (
        8,
        0.5,
    )
    assert settings.for_run(None, "supervised") == RunResources(cpus=2, workers=2)  # its pre-training's
    assert settings.for_run("other", "moco") == RunResources(cpus=4, gpus=1)  # else the default
    with pytest.raises(ConfigError, match="executor.tasks.cifar"):
        load_study(_write(tmp_path, {**SMALL, "executor": {"tasks": {"cifar": {"gpus": 1}}}}))


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_ray_gives_the_serial_results(local_ray, tmp_path) -> None:
    from cvlth.study.runner import run_study

    study = load_study(_write(tmp_path, {**SMALL, "logging": {"tensorboard": True}}))  # changes no number
    quiet = {"quiet": True, "log": lambda _: None}
    on_ray = run_study(study, Store(tmp_path / "ray"), executor="ray", **quiet)
    assert on_ray.computed == on_ray.runs == len(expand(study))
    for metrics in (tmp_path / "ray").rglob("metrics.jsonl"):  # every training on Ray logged its steps
        steps = [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "step" in r]
        assert _tensorboard_steps(metrics.parent / "tensorboard") == steps, metrics
    serial = run_study(study, Store(tmp_path / "serial"), **quiet)
    assert (on_ray.folder / "matching.json").read_bytes() == (serial.folder / "matching.json").read_bytes()
    threads = {Store(tmp_path / "ray").result(item.run).get("threads") for item in expand(study)}
    assert threads - {None} == {torch.get_num_threads()}  # every run computed with the serial count
    again = run_study(study, Store(tmp_path / "ray"), executor="ray", **quiet)
    assert again.computed == 0  # a rerun (e.g. after a killed driver) reuses the store


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_a_failing_run_is_retried_then_stops_the_study(local_ray, tmp_path, capsys) -> None:
    config = {**SMALL, "finders": [{"name": "omp", "method": "omp"}]}
    config["tasks"] = {"digits": {**SMALL["tasks"]["digits"], "optim": {"name": "sgd", "lr": 1.0e30}}}
    path = _write(tmp_path, config)  # the downstream loss overflows: every transfer fails
    store = tmp_path / "store"
    args = ["study", str(path), "--store", str(store), "--executor", "ray", "--retries", "2"]
    assert run_cli(args) == 2
    out = capsys.readouterr()
    lines = out.out.splitlines()
    stopped = next(line for line in lines if line.startswith("stopped after a failure in: "))
    run = stopped.removeprefix("stopped after a failure in: ").split(" (finished")[0]
    assert run.startswith("transfer supervised")
    retried = [line.split(" of ")[0] for line in lines if f" of {run} after:" in line]
    assert retried == ["retry 1/2", "retry 2/2"]  # two retries, then the failure
    assert f"FAILED: {run}" in out.out
    assert "loss" in out.err.lower()  # the run's own message, as the CLI's one-line error
    pretrain = next(i.run for i in expand(load_study(path)) if isinstance(i.run, PretrainRun))
    assert Store(store).is_done(pretrain)  # finished runs are kept
    assert not (store / "studies" / config["name"] / "matching.json").exists()


# --- data-parallel runs ---------------------------------------------------------------------------

#: One pre-training and its upstream IMP (one trained round), each on 2 data-parallel CPU workers.
DATA_PARALLEL = {
    **SMALL,
    "finders": [{"name": "imp-up", "method": "imp", "stage": "upstream"}],
    "executor": {"resources": {"workers": 2, "cpus": 2}},
}


def test_workers_default_to_one_per_gpu_and_only_training_runs_split() -> None:
    assert RunResources(gpus=4, cpus=32).placement(threads=3, trains=True) == Placement(4, 8.0, 1.0)
    assert RunResources(gpus=4, cpus=32).placement(threads=3, trains=False) == Placement(1, 8.0, 1.0)
    assert RunResources(workers=2, cpus=2).placement(threads=3, trains=True) == Placement(2, 1.0, 0.0)
    assert RunResources(workers=2).placement(threads=3, trains=True) == Placement(2, 3.0, 0.0)
    assert RunResources(gpus=0.5).placement(threads=3, trains=True) == Placement(1, 3.0, 0.5)
    assert RunResources(workers=1, gpus=1).placement(threads=3, trains=True) == Placement(1, 3.0, 1.0)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"workers": 3, "gpus": 2}, "workers: 3 with gpus: 2: each data-parallel worker drives one GPU"),
        ({"workers": 2, "gpus": 1}, "give gpus: 2"),
        ({"workers": 1, "gpus": 2}, "workers: 1 with gpus: 2"),
        ({"gpus": 2.5}, "gpus: 2.5: more than one GPU means one data-parallel worker per GPU"),
        ({"workers": 0}, "workers"),
    ],
)
def test_workers_that_do_not_fit_the_gpus_are_config_errors(tmp_path, resources, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_study(_write(tmp_path, {**SMALL, "executor": {"tasks": {"digits": resources}}}))


def test_rank_environments_follow_torchrun_per_node() -> None:
    where = [("a", "10.0.0.1", ["3"]), ("b", "10.0.0.2", ["0"]), ("a", "10.0.0.1", ["1"])]
    first, second, third = rank_environments(where, port=29500)
    assert first == {
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
        "RANK": "0",
        "WORLD_SIZE": "3",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "2",
        "CUDA_VISIBLE_DEVICES": "3,1",  # local rank i drives cuda:i
    }
    assert (third["RANK"], third["LOCAL_RANK"], third["CUDA_VISIBLE_DEVICES"]) == ("2", "1", "3,1")
    assert (second["MASTER_ADDR"], second["LOCAL_RANK"], second["LOCAL_WORLD_SIZE"]) == ("10.0.0.1", "0", "1")
    assert second["CUDA_VISIBLE_DEVICES"] == "0"
    cpu_only = rank_environments([("a", "10.0.0.1", []), ("a", "10.0.0.1", [])], port=1)
    assert "CUDA_VISIBLE_DEVICES" not in cpu_only[1] and cpu_only[1]["LOCAL_RANK"] == "1"


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a torch file, by its path of keys."""

    def walk(value: object, prefix: str) -> dict[str, torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return {prefix: value}
        if isinstance(value, dict):
            return {k: t for key, item in value.items() for k, t in walk(item, f"{prefix}/{key}").items()}
        return {}

    return walk(torch.load(path, map_location="cpu", weights_only=True), "")


def _assert_same_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert ours and ours.keys() == theirs.keys()
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_two_workers_train_as_two_torchrun_processes_do(local_ray, tmp_path) -> None:
    path = _write(tmp_path, DATA_PARALLEL)
    study = load_study(path)
    items = [item for item in expand(study) if item.run.kind in ("pretrain", "imp")]
    pretrain, imp = (item.run for item in items)
    store = Store(tmp_path / "ray")
    logging = RunLogging(tensorboard=True, store_root=str(store.root.resolve()))
    assert (
        run_on_ray(items, store, settings=study.executor, threads=1, log=lambda _: None, logging=logging) == 2
    )

    # The reference: the same two runs by two gloo processes under torchrun, one store per rank.
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent / "src"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(TESTS / "ddp_study_worker.py"), str(path), str(tmp_path / "torchrun"),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [Store(tmp_path / "torchrun" / f"rank{rank}") for rank in (0, 1)]

    theta_p = _tensors(store.run_dir(pretrain).path / "theta_p.pt")
    for reference in ranks:  # both ranks ended with the same weights; so did Ray's workers
        _assert_same_tensors(theta_p, _tensors(reference.run_dir(pretrain).path / "theta_p.pt"))
        for level in (1, 2):
            ours = Mask.load(mask_path(store.run_dir(imp).path, level))
            theirs = Mask.load(mask_path(reference.run_dir(imp).path, level))
            _assert_same_tensors(dict(ours), dict(theirs))
    # The loss of every step (the mean over both ranks) and every evaluation, written by rank 0 only.
    for folder in (Path(store.run_dir(pretrain)), Path(store.run_dir(imp)) / "round-01"):
        reference = ranks[0].root / folder.relative_to(store.root)
        ours = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert ours == [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
        assert len(ours) == 256 // 64 + 1  # 4 steps of 64 images, one evaluation
        assert not (ranks[1].root / folder.relative_to(store.root) / "metrics.jsonl").exists()
        assert _tensorboard_steps(folder / "tensorboard") == [r["step"] for r in ours if "step" in r]
    result = store.result(pretrain)  # written once, by rank 0, with the study's thread count
    assert result["threads"] == 1 and not store.run_dir(pretrain).train_state_path.exists()


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_a_failing_data_parallel_run_reports_the_runs_own_error(local_ray, tmp_path) -> None:
    config = {**DATA_PARALLEL, "pretrainings": {"supervised": dict(SMALL["pretrainings"]["supervised"])}}
    recipe = config["pretrainings"]["supervised"]["recipe"]
    config["pretrainings"]["supervised"]["recipe"] = {**recipe, "optim": {"name": "sgd", "lr": 1.0e30}}
    study = load_study(_write(tmp_path, config))
    pretrain = [item for item in expand(study) if isinstance(item.run, PretrainRun)]
    lines: list[str] = []
    with pytest.raises(TrainingError, match="loss"):  # both ranks' loss overflows: no rank hangs
        run_on_ray(pretrain, Store(tmp_path / "ray"), settings=study.executor, threads=1, log=lines.append)
    assert any(line.startswith("FAILED: pretrain") for line in lines)
    assert not Store(tmp_path / "ray").is_done(pretrain[0].run)


def test_an_address_with_no_ray_there_fails_in_seconds_with_one_line(tmp_path, capsys, monkeypatch) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # not the Ray other tests here started
    import socket
    import time

    from hostile_fixtures import cli_error
    from study_fixtures import TINY

    with socket.socket() as probe:  # a port nobody listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(TINY))
    args = [
        "study",
        str(study),
        "--store",
        str(tmp_path / "s"),
        "--executor",
        "ray",
        "--address",
        f"127.0.0.1:{port}",
    ]
    start = time.perf_counter()
    line = cli_error(args, capsys)
    assert f"cannot reach a Ray cluster at 127.0.0.1:{port}" in line
    assert time.perf_counter() - start < 30  # not the minutes ray.init would retry for
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").glob("*/*/result.json"))
