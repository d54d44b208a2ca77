"""TensorBoard and MLflow scalar logs, read back with the libraries themselves: every line of
metrics.jsonl once, at its step, through a crash and a resume; no number and no integrity record
changed; nothing imported when logging is off."""

import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from cvlth.errors import ConfigError
from cvlth.store import RunFolder, Store
from cvlth.training.scalar_logs import RunLogging, scalar_logging, scalars_of
from training_fixtures import TinyNet, half_mask, run_tiny, tiny_config

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared fixtures
SCRIPT = HERE / "training_fixtures.py"


class Crash(Exception):
    """Stands for a crash after a step (the loop's exception path; SIGKILL is tested below)."""


def crash_after(step: int):
    def callback(info) -> None:
        if info.step == step:
            raise Crash(step)

    return callback


def half_mask_sparsity() -> float:
    """half_mask keeps entries 0, 2, 4, ... of every prunable tensor: ceil(n / 2) of n."""
    sizes = [t.numel() for t in half_mask(TinyNet()).values()]
    return 1 - sum((n + 1) // 2 for n in sizes) / sum(sizes)


def expected_scalars(records: list[dict], sparsity: float) -> dict[str, list[tuple[int, float]]]:
    """What metrics.jsonl says each tag holds, written out by hand."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    step = 0
    for record in records:
        if "step" in record:
            step = record["step"]
            for key in ("loss", "lr", "accuracy"):
                out[f"train/{key}"].append((step, record[key]))
        else:
            for split in ("val", "test"):
                for key, value in record.get(split, {}).items():
                    out[f"{split}/{key}"].append((step, value))
            out["epoch"].append((step, record["epoch"]))
            out["sparsity"].append((step, sparsity))
    return dict(out)


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar point in the folder's event files, duplicates kept (no purging)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()[SCALARS]}


def as_float32(scalars: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard stores float32."""
    return {tag: [(s, float(np.float32(v))) for s, v in points] for tag, points in scalars.items()}


def mlflow_runs(root: Path) -> list:
    from cvlth.training.mlflow_log import client

    mlflow_client = client(root)
    experiment = mlflow_client.get_experiment_by_name("tiny")
    return mlflow_client.search_runs([experiment.experiment_id]) if experiment else []


def mlflow_scalars(root: Path, run) -> dict[str, list[tuple[int, float]]]:
    from cvlth.training.mlflow_log import client

    mlflow_client = client(root)
    return {
        key: sorted((m.step, m.value) for m in mlflow_client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def train_logged(root: Path, tensorboard: bool = True, mlflow: bool = False, callbacks=()) -> RunFolder:
    store, cfg = Store(root), tiny_config()
    logging = RunLogging.for_study(tensorboard=tensorboard, mlflow=mlflow, store_root=root, study="tiny")
    with scalar_logging(logging):
        store.execute(cfg, lambda folder: run_tiny(folder, cfg, callbacks)[0])
    return store.run_dir(cfg)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> RunFolder:
    """The tiny training without any scalar log."""
    store, cfg = Store(tmp_path_factory.mktemp("reference")), tiny_config()
    store.execute(cfg, lambda folder: run_tiny(folder, cfg)[0])
    return store.run_dir(cfg)


def test_a_metrics_line_becomes_tagged_scalars_at_its_step() -> None:
    step_line = {"step": 7, "epoch": 1, "batch": 2, "lr": 0.1, "loss": 1.5, "accuracy": 0.25, "note": "x"}
    assert scalars_of(step_line, 3) == (7, {"train/lr": 0.1, "train/loss": 1.5, "train/accuracy": 0.25})
    evaluation = {"epoch": 2, "val": {"accuracy": 0.5, "ap": {"small": 0.1}, "ok": True}, "test": {"map": 1}}
    assert scalars_of(evaluation, 8) == (
        8,
        {"val/accuracy": 0.5, "val/ap/small": 0.1, "test/map": 1.0, "epoch": 2.0},
    )


def test_tensorboard_holds_each_metrics_line_once_and_changes_no_number(tmp_path, reference) -> None:
    folder = train_logged(tmp_path)
    assert folder.read_result() == reference.read_result()  # logging changes no number
    assert folder.metrics_path.read_bytes() == reference.metrics_path.read_bytes()
    records = folder.read_metrics()
    expected = as_float32(expected_scalars(records, half_mask_sparsity()))
    assert tensorboard_scalars(folder.path / "tensorboard") == expected
    assert len(expected["train/loss"]) == 12 and expected["sparsity"][0] == (4, pytest.approx(0.5, abs=0.01))


def test_the_tensorboard_folder_is_no_artefact_of_the_run(tmp_path) -> None:
    folder = train_logged(tmp_path)
    artefacts = json.loads(folder.result_path.read_text())["integrity"]["artefacts"]
    assert "metrics.jsonl" in artefacts
    assert not any(name.startswith("tensorboard") for name in artefacts)
    shutil.rmtree(folder.path / "tensorboard")  # deleting the logs leaves the run intact
    assert folder.damage() is None and folder.status == "done"


def test_a_crashed_training_resumes_its_logs_without_a_repeated_step(tmp_path, reference) -> None:
    # Checkpoints every 2 steps: the crash after step 7 resumes from step 6, so step 7 is computed
    # twice but logged once; the crashed process's event file and the resumed one's both count.
    with pytest.raises(Crash):
        train_logged(tmp_path, callbacks=(crash_after(7),))
    folder = train_logged(tmp_path)
    assert folder.metrics_path.read_bytes() == reference.metrics_path.read_bytes()
    assert len(list((folder.path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    expected = as_float32(expected_scalars(folder.read_metrics(), half_mask_sparsity()))
    assert tensorboard_scalars(folder.path / "tensorboard") == expected


def test_logs_turned_on_for_a_resume_are_filled_in_from_metrics_jsonl(tmp_path) -> None:
    with pytest.raises(Crash):
        train_logged(tmp_path, tensorboard=False, callbacks=(crash_after(7),))
    folder = train_logged(tmp_path)
    expected = as_float32(expected_scalars(folder.read_metrics(), half_mask_sparsity()))
    scalars = tensorboard_scalars(folder.path / "tensorboard")
    assert scalars == expected
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 13))


def test_mlflow_holds_each_metrics_line_once_through_a_crash(tmp_path, reference) -> None:
    pytest.importorskip("mlflow")
    with pytest.raises(Crash):
        train_logged(tmp_path, tensorboard=False, mlflow=True, callbacks=(crash_after(7),))
    (crashed,) = mlflow_runs(tmp_path)
    assert crashed.info.status == "FAILED"
    folder = train_logged(tmp_path, tensorboard=False, mlflow=True)
    assert folder.read_result() == reference.read_result()
    (run,) = mlflow_runs(tmp_path)  # the resumed training went on in the same MLflow run
    assert run.info.run_id == crashed.info.run_id and run.info.status == "FINISHED"
    assert run.info.run_name == run.data.tags["cvlth.run"] == f"train/{folder.path.name}"
    expected = expected_scalars(folder.read_metrics(), half_mask_sparsity())
    assert mlflow_scalars(tmp_path, run) == {tag: sorted(points) for tag, points in expected.items()}
    assert (tmp_path / "mlruns").is_dir()  # the file store, in the store's root


def test_a_recomputed_run_gets_a_new_mlflow_run_and_the_stale_one_is_deleted(tmp_path) -> None:
    pytest.importorskip("mlflow")
    folder = train_logged(tmp_path, tensorboard=False, mlflow=True)
    (first,) = mlflow_runs(tmp_path)
    Store(tmp_path).forget(folder.name)  # e.g. a damaged run, recomputed
    train_logged(tmp_path, tensorboard=False, mlflow=True)
    (second,) = mlflow_runs(tmp_path)  # the active runs
    assert second.info.run_id != first.info.run_id
    from cvlth.training.mlflow_log import client

    assert client(tmp_path).get_run(first.info.run_id).info.lifecycle_stage == "deleted"
    expected = expected_scalars(folder.read_metrics(), half_mask_sparsity())
    assert mlflow_scalars(tmp_path, second) == {tag: sorted(points) for tag, points in expected.items()}


def test_mlflow_refusing_its_file_store_is_a_config_error(tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    with pytest.raises(ConfigError, match="MLflow refuses the file store") as refused:
        RunLogging.for_study(tensorboard=False, mlflow=True, store_root=tmp_path, study="tiny")
    assert "MLFLOW_ALLOW_FILE_STORE" in refused.value.hint


# --- killed for real, in a subprocess -----------------------------------------------------------


def run_script(store_root: Path, logs: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src"), "CVLTH_TEST_LOGGING": logs}
    env.pop("CVLTH_TEST_KILL_AT_STEP", None)
    if kill_at is not None:
        env["CVLTH_TEST_KILL_AT_STEP"] = str(kill_at)
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(store_root)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 7])  # before any checkpoint; mid-epoch after one
def test_a_sigkilled_training_resumes_its_logs_without_a_repeated_or_lost_step(
    tmp_path, reference, kill_at
) -> None:
    has_mlflow = subprocess.run([sys.executable, "-c", "import mlflow"], capture_output=True).returncode == 0
    logs = "tensorboard,mlflow" if has_mlflow else "tensorboard"
    assert run_script(tmp_path, logs, kill_at).returncode == -9
    done = run_script(tmp_path, logs)
    assert done.returncode == 0, done.stderr
    folder = Store(tmp_path).run_dir(tiny_config())
    assert folder.metrics_path.read_bytes() == reference.metrics_path.read_bytes()
    assert folder.read_result() == reference.read_result()
    expected = expected_scalars(folder.read_metrics(), half_mask_sparsity())
    assert tensorboard_scalars(folder.path / "tensorboard") == as_float32(expected)
    if has_mlflow:
        (run,) = mlflow_runs(tmp_path)
        assert run.info.status == "FINISHED"
        assert mlflow_scalars(tmp_path, run) == {tag: sorted(points) for tag, points in expected.items()}


@pytest.mark.slow
def test_a_training_without_logs_imports_neither_tensorboard_nor_mlflow(tmp_path) -> None:
    code = (
        "import sys; from cvlth.store import Store; from training_fixtures import run_tiny, tiny_config\n"
        f"store, cfg = Store({str(tmp_path)!r}), tiny_config(epochs=1)\n"
        "store.execute(cfg, lambda folder: run_tiny(folder, cfg)[0])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'mlflow')"
        " or m.startswith('torch.utils.tensorboard')))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{HERE.parent / 'src'}{os.pathsep}{HERE}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert not list(tmp_path.rglob("tensorboard")) and not (tmp_path / "mlruns").exists()
