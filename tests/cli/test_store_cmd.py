"""`cvlth runs`: ``--forget`` and ``--kind`` never reach outside the store (hostile names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config_fixtures import TrainConfig
from cvlth.cli import run_cli
from cvlth.config import DataRef, TrainingConfig
from cvlth.store import Store
from hostile_fixtures import cli_error, file_hashes


def _project_with_a_store(tmp_path: Path) -> tuple[Path, Path]:
    """A user's project folder whose root holds a config.yaml, a precious file, and a store with
    one finished run (``--store`` is the project folder itself, as in the red team's case)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("name: my-project\n")
    (project / "thesis.tex").write_text("precious\n")
    store = Store(project)
    cfg = TrainConfig(data=DataRef(name="tiny"), train=TrainingConfig(seed=3))
    store.execute(cfg, lambda folder: {"accuracy": 0.5})
    return project, store.run_dir(cfg).path


@pytest.mark.parametrize(
    "name",
    [
        "pretrain/..",
        "train/..",
        "..",
        ".",
        "train/../..",
        "/etc/passwd",
        "train/0123456789abcdef/..",
        "train/0123456789ABCDEF",
        "train/0123",
        "nokind/0123456789abcdef",
        "",
    ],
)
def test_forget_refuses_anything_but_kind_slash_hash(tmp_path: Path, capsys, name: str) -> None:
    project, _ = _project_with_a_store(tmp_path)
    before = file_hashes(project)
    line = cli_error(["runs", "--store", str(project), "--forget", name], capsys)
    assert "run" in line
    assert file_hashes(project) == before  # nothing deleted, nothing changed


def test_forget_deletes_exactly_the_named_run(tmp_path: Path, capsys) -> None:
    project, run = _project_with_a_store(tmp_path)
    name = f"{run.parent.name}/{run.name}"
    assert run_cli(["runs", "--store", str(project), "--forget", name]) == 0
    assert not run.exists()
    assert (project / "config.yaml").is_file() and (project / "thesis.tex").is_file()
    assert run.parent.is_dir()  # the kind's folder stays


def test_forget_refuses_a_symlinked_run_folder(tmp_path: Path, capsys) -> None:
    project, run = _project_with_a_store(tmp_path)
    elsewhere = tmp_path / "elsewhere" / run.name
    elsewhere.parent.mkdir()
    run.rename(elsewhere)
    run.symlink_to(elsewhere, target_is_directory=True)
    before = file_hashes(elsewhere)
    line = cli_error(["runs", "--store", str(project), "--forget", f"train/{run.name}"], capsys)
    assert "symbolic link" in line
    assert file_hashes(elsewhere) == before and run.is_symlink()


def test_forget_refuses_a_symlinked_kind_folder(tmp_path: Path, capsys) -> None:
    project, run = _project_with_a_store(tmp_path)
    kind_folder = run.parent
    real = tmp_path / "real-train"
    kind_folder.rename(real)
    kind_folder.symlink_to(real, target_is_directory=True)
    before = file_hashes(real)
    line = cli_error(["runs", "--store", str(project), "--forget", f"train/{run.name}"], capsys)
    assert "symbolic link" in line
    assert file_hashes(real) == before


@pytest.mark.parametrize("kind", ["/etc", "..", ".", "train/..", "Train", "nokind"])
def test_runs_kind_must_be_a_run_kind(tmp_path: Path, capsys, kind: str) -> None:
    project, _ = _project_with_a_store(tmp_path)
    line = cli_error(["runs", "--store", str(project), "--kind", kind], capsys)
    assert "is not a run kind" in line


def test_runs_kind_lists_that_kind(tmp_path: Path, capsys) -> None:
    project, run = _project_with_a_store(tmp_path)
    capsys.readouterr()
    assert run_cli(["runs", "--store", str(project), "--kind", "train"]) == 0
    assert run.name in capsys.readouterr().out


def test_runs_describe_each_run_and_filter_by_study(tmp_path: Path, capsys) -> None:
    import yaml

    from study_fixtures import TINY

    study = tmp_path / "tiny.yaml"
    study.write_text(yaml.safe_dump(TINY))
    capsys.readouterr()
    assert run_cli(["runs", "--store", str(tmp_path / "store"), "--study", str(study)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.lstrip().startswith("transfer/")]
    assert rows and all("to do" in row for row in rows)
    assert any("digits" in row for row in rows)
    project, run = _project_with_a_store(tmp_path)
    assert run_cli(["runs", "--store", str(project)]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if run.name in line]
    assert "tiny" in row and "done" in row  # TrainConfig(data=tiny): its data set, its state
