"""``cvlth study --executor ray``: the same numbers as a serial study, retries, and no Ray in ``import cvlth``."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cvlth.cli import run_cli
from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from cvlth.study.run_kinds import PretrainRun
from study_fixtures import NEEDS_FASHION_MNIST, TINY

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
    from cvlth.config import config_hash
    from cvlth.errors import ConfigError

    executor = {"resources": {"cpus": 4, "gpus": 1}, "tasks": {"digits": {"cpus": 8, "gpus": 0.5}}}
    plain, placed = (
        load_study(_write(tmp_path, config)) for config in (SMALL, {**SMALL, "executor": executor})
    )
    assert [config_hash(i.run) for i in expand(placed)] == [config_hash(i.run) for i in expand(plain)]
    settings = placed.executor
    assert (settings.for_run("digits", "supervised").cpus, settings.for_run("digits", "supervised").gpus) == (
        8,
        0.5,
    )
    assert settings.for_run(None, "supervised").cpus == 4  # upstream runs: the default
    with pytest.raises(ConfigError, match="executor.tasks.cifar"):
        load_study(_write(tmp_path, {**SMALL, "executor": {"tasks": {"cifar": {"gpus": 1}}}}))


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_ray_gives_the_serial_results(local_ray, tmp_path) -> None:
    from cvlth.study.runner import run_study

    study = load_study(_write(tmp_path, SMALL))
    quiet = {"quiet": True, "log": lambda _: None}
    on_ray = run_study(study, Store(tmp_path / "ray"), executor="ray", **quiet)
    assert on_ray.computed == on_ray.runs == len(expand(study))
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
