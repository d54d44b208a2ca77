"""A study's `logging:` and `cvlth study --tensorboard / --mlflow`: every training of every run (IMP's
rounds too) logs its scalars, and no run's identity, number or integrity record changes."""

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from cvlth.cli import run_cli
from cvlth.cli.study_cmd import with_logging
from cvlth.errors import ConfigError
from cvlth.run_identity import config_hash
from cvlth.store import RunFolder, Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from cvlth.study.runner import run_study
from cvlth.training.scalar_logs import RunLogging
from hostile_fixtures import cli_error, file_hashes
from study_fixtures import DIGITS_TASK, NEEDS_FASHION_MNIST, SUPERVISED_PRETRAINING, TINY_BACKBONE

#: θ_p trained here, IMP on the task (one round: round-00 trains), its ticket and the dense model
#: fine-tuned: four trainings in four folders.
LOGGED = {
    "name": "logged",
    "backbone": TINY_BACKBONE,
    "pretrainings": {"supervised": SUPERVISED_PRETRAINING},
    "tasks": {"digits": DIGITS_TASK},
    "finders": [{"name": "imp-task", "method": "imp", "stage": "downstream"}],
    "rounds": 1,
    "seeds": [0],
    "adapt": {"small_images": False},
}


def write_study(tmp_path: Path, **logging: bool) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**LOGGED, **({"logging": logging} if logging else {})}))
    return path


def training_folders(root: Path) -> list[str]:
    """Every folder a training wrote metrics.jsonl into, relative to the store."""
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("metrics.jsonl"))


def step_lines(folder: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in RunFolder(folder).read_metrics() if "step" in r]


def tensorboard_losses(folder: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder / "tensorboard"), purge_orphaned_data=False)
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars("train/loss")]


def test_logging_is_no_part_of_any_runs_identity(tmp_path) -> None:
    quiet = load_study(write_study(tmp_path))
    logged = load_study(write_study(tmp_path, tensorboard=True, mlflow=True))
    assert (quiet.logging.tensorboard, logged.logging.tensorboard, logged.logging.mlflow) == (
        False,
        True,
        True,
    )
    hashes = [config_hash(item.run) for item in expand(quiet)]
    assert [config_hash(item.run) for item in expand(logged)] == hashes and len(hashes) == 4


def test_the_flags_override_the_studys_logging_and_only_what_they_name(tmp_path) -> None:
    study = load_study(write_study(tmp_path, tensorboard=True))
    assert with_logging(study, tensorboard=None, mlflow=None) is study
    off = with_logging(study, tensorboard=False, mlflow=None)
    assert (off.logging.tensorboard, off.logging.mlflow) == (False, False)
    both = with_logging(study, tensorboard=None, mlflow=True)
    assert (both.logging.tensorboard, both.logging.mlflow) == (True, True)
    assert study.logging.mlflow is False  # the loaded study is left as it was


@pytest.mark.slow
@NEEDS_FASHION_MNIST
def test_every_training_of_the_study_logs_and_no_run_changes(tmp_path, capsys) -> None:
    has_mlflow = importlib.util.find_spec("mlflow") is not None  # the [mlflow] extra
    root = tmp_path / "runs"
    args = ["study", str(write_study(tmp_path)), "--store", str(root), "--quiet", "--tensorboard"]
    assert run_cli([*args, "--mlflow"] if has_mlflow else args) == 0, capsys.readouterr()
    folders = training_folders(root)
    kinds = sorted(name.split("/")[0] for name in folders)
    assert kinds == ["imp", "pretrain", "transfer", "transfer"]
    assert any(name.endswith("/round-00") for name in folders)  # IMP's round, started by imp()
    for name in folders:
        expected = [(step, pytest.approx(loss, rel=1e-6)) for step, loss in step_lines(root / name)]
        assert tensorboard_losses(root / name) == expected, name
    store = Store(root)
    study = load_study(write_study(tmp_path))
    assert all(store.run_dir(item.run).damage() is None for item in expand(study))
    if has_mlflow:
        from cvlth.training.mlflow_log import client

        mlflow_client = client(root)
        experiment = mlflow_client.get_experiment_by_name("logged")
        runs = mlflow_client.search_runs([experiment.experiment_id])
        assert sorted(run.info.run_name for run in runs) == folders
        assert {run.info.status for run in runs} == {"FINISHED"}


def test_an_unknown_logging_key_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**LOGGED, "logging": {"tensorbord": True}}))
    before = file_hashes(path)
    capsys.readouterr()
    assert run_cli(["study", str(path), "--store", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "logging.tensorbord: unknown field" in err and "Traceback" not in err
    assert file_hashes(path) == before and not (tmp_path / "runs").exists()


def test_mlflow_asked_for_without_mlflow_installed_stops_before_any_run(
    tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    path = write_study(tmp_path)
    line = cli_error(["study", str(path), "--store", str(tmp_path / "runs"), "--mlflow"], capsys)
    assert "mlflow is not installed" in line
    assert not list((tmp_path / "runs").rglob("config.yaml"))
    with pytest.raises(ConfigError) as refused:
        RunLogging.for_study(tensorboard=False, mlflow=True, store_root=tmp_path, study="s")
    assert "pip install 'cvlth[mlflow]'" in refused.value.hint


@pytest.mark.slow
@NEEDS_FASHION_MNIST
def test_worker_processes_log_every_training_too(tmp_path) -> None:
    study = load_study(write_study(tmp_path, tensorboard=True))
    root = tmp_path / "runs"
    run_study(study, Store(root), quiet=True, log=lambda _: None, workers=2, threads=1)
    folders = training_folders(root)
    assert len(folders) == 4
    for name in folders:
        assert [step for step, _ in tensorboard_losses(root / name)] == [
            s for s, _ in step_lines(root / name)
        ]
