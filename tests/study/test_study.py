"""End-to-end tests of the study on a tiny slice of the built-in world (seconds per study)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import cvlth.pruning.imp as imp_module
from cvlth import run_files
from cvlth.cli import run_cli, study_cmd
from cvlth.cli.app import INTERRUPTED_MESSAGE
from cvlth.errors import CvlthError
from cvlth.masks import Mask
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.runs import execute
from cvlth.runs import training as run_training
from cvlth.runs.kinds import ImpRun, PretrainRun
from cvlth.scope import iter_prunable
from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from study_fixtures import NEEDS_FASHION_MNIST, TINY

pytestmark = NEEDS_FASHION_MNIST


@pytest.fixture
def tiny_study(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _results(store: Path) -> dict[str, float]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("result.json")}


@pytest.mark.slow
def test_tiny_study_runs_end_to_end_and_rerun_trains_nothing(tmp_path, capsys):
    tiny_study = tmp_path / "tiny.yaml"  # the tiny study, its tickets' inference timed too
    tiny_study.write_text(
        yaml.safe_dump({**TINY, "speed": {"image_size": 16, "batch_sizes": [2], "rounds": 1}})
    )
    store = tmp_path / "store"
    assert run_cli(["study", str(tiny_study), "--store", str(store), "--quiet"]) == 0
    table = json.loads((store / "studies" / "tiny" / "matching.json").read_text())
    assert {row["source"] for row in table} == {
        f"supervised/{f}" for f in ("imp-up", "imp-task", "imp-init", "omp", "random")
    }
    assert all(
        row["rows"][0]["n"] == 2 and row["rows"][0]["sparsity"] == pytest.approx(0.488)
        for row in table
        if row["task"] == "digits"
    )
    assert [row["source"] for row in table if row["task"] == "pre-training task"] == ["supervised/imp-up"]
    assert "extreme matching sparsity" in (store / "studies" / "tiny" / "matching.md").read_text()
    # every run recorded its test split's size; finder seed 0 tickets pair with the dense runs' seeds
    digits = [row for row in table if row["task"] == "digits"]
    assert len({row["test_size"] for row in digits}) == 1 and digits[0]["test_size"] > 0
    assert {row["rows"][0]["margin"]["method"] for row in digits} == {"paired"}
    fig2 = next(row for row in table if row["task"] == "pre-training task")
    # one IMP run: θ_p and each ticket measured once, decided by the test sample alone
    assert fig2["test_size"] > 0 and all(r["margin"]["method"] == "binomial" for r in fig2["rows"])
    assert (store / "studies" / "tiny" / "claims.json").is_file()
    speed = json.loads((store / "studies" / "tiny" / "speed.json").read_text())
    masks = {row["source"]: row["rows"][0]["sparsity"] for row in digits}
    assert {(p["source"], p["level"], p["batch"]) for p in speed} == {(s, 3, 2) for s in masks}
    for point in speed:  # the mask's measured sparsity, and both models timed on PyTorch at least
        assert point["sparsity"] == pytest.approx(masks[point["source"]], abs=0.01)
        assert set(point["seconds"]["pytorch"]) == {"dense", "ticket"} and point["speedup"] > 0
    assert "Inference speed" in (store / "studies" / "tiny" / "report.md").read_text()

    study = load_study(tiny_study)
    planned = expand(study)
    assert len(_results(store)) >= len(planned)  # every run, plus the IMP rounds
    # IMP sparsity per level is 1 - 0.8^k (to within one weight per level).
    for item in planned:
        if isinstance(item.run, ImpRun):
            folder = Path(Store(store).run_dir(item.run))
            for level in range(1, 4):
                mask = Mask.load(run_files.mask_path(folder, level))
                assert abs(mask.pruned - (1 - 0.8**level) * mask.total) <= level

    before = _results(store)
    timed = (store / "studies" / "tiny" / "speed.json").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli(["study", str(tiny_study), "--store", str(store), "--quiet"]) == 0
    assert "(0 computed now)" in capsys.readouterr().out
    assert _results(store) == before  # nothing was recomputed or rewritten
    assert (store / "studies" / "tiny" / "speed.json").stat().st_mtime_ns == timed  # nor re-timed


@pytest.mark.slow
def test_rewinding_restores_theta_p_exactly(tiny_study, tmp_path, monkeypatch):
    """Every IMP round starts from θ_p: surviving weights, BN statistics and the head."""
    starts: list[dict[str, torch.Tensor]] = []
    real_train = run_training.train

    def recording_train(model, objective, train_data, **kwargs):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(model, objective, train_data, **kwargs)

    monkeypatch.setattr(run_training, "train", recording_train)  # the pre-training
    monkeypatch.setattr(imp_module, "train", recording_train)  # the IMP rounds
    study = load_study(tiny_study)
    store = Store(tmp_path / "store")
    ctx = execute.Context(store=store, quiet=True, log=lambda _: None)
    pretrain = next(i.run for i in expand(study) if isinstance(i.run, PretrainRun))
    upstream = next(i.run for i in expand(study) if isinstance(i.run, ImpRun) and i.run.stage == "upstream")
    execute.ensure(upstream, ctx)

    theta_p = import_checkpoint(Path(store.run_dir(pretrain)) / run_files.THETA_P).state_dict
    imp_starts = starts[1:]  # the first training is the pre-training itself
    assert len(imp_starts) == 3  # 3 levels, pruned once before training: 3 trainings, the last level's too
    for start in imp_starts:
        assert start.keys() == theta_p.keys()
        for key, value in theta_p.items():
            assert torch.equal(start[key], value), key
    # ... and the mask used in each round zeroes exactly the pruned weights of θ_p.
    folder = Path(store.run_dir(upstream))
    from cvlth.models.backbones import BackboneSpec, build_backbone

    model = build_backbone(BackboneSpec("resnet18", 4, "cifar", 1), 10)
    model.load_state_dict(theta_p)
    mask = Mask.load(run_files.mask_path(folder, 2))
    mask.apply(model)
    for item in iter_prunable(model):
        kept = mask[item.canonical]
        assert torch.equal(item.parameter.detach()[kept], theta_p[item.canonical][kept])


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(tiny_study, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "cvlth.cli", "study", str(tiny_study), "--quiet", "--store"]
    reference = tmp_path / "reference"
    subprocess.run([*command, str(reference)], check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [*command, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while (
        len(list(killed.rglob("result.json"))) < 6 and time.monotonic() < deadline and process.poll() is None
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "studies" / "tiny" / "matching.json").exists(), "the study finished before the kill"
    subprocess.run([*command, str(killed)], check=True, env=env, capture_output=True)

    def table(store: Path) -> list:
        return json.loads((store / "studies" / "tiny" / "matching.json").read_text())

    assert table(killed) == table(reference)


@pytest.mark.slow
def test_a_failing_run_stops_a_parallel_study_with_its_error(tiny_study, tmp_path, capsys):
    config = yaml.safe_load(tiny_study.read_text())
    config["tasks"]["digits"]["optim"]["lr"] = 1.0e30  # the downstream loss overflows
    config["finders"] = [{"name": "omp", "method": "omp"}]
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(config))
    store = tmp_path / "store"
    assert run_cli(["study", str(broken), "--store", str(store), "--workers", "2"]) == 2
    out = capsys.readouterr()
    assert "FAILED: transfer supervised" in out.out
    assert "loss" in (out.out + out.err).lower()
    pretrain = next(i.run for i in expand(load_study(broken)) if isinstance(i.run, PretrainRun))
    assert Store(store).is_done(pretrain)  # finished runs are kept
    assert not (store / "studies" / "tiny" / "matching.json").exists()


def _state(pid: int) -> str | None:
    """The /proc state letter of a process (None when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _ignores_sigint(pid: int) -> bool:
    """Whether the process ignores SIGINT (the SigIgn mask of /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)
    return bool(ignored >> (signal.SIGINT - 1) & 1)


def _workers(pid: int) -> list[int]:
    """The study's worker processes: its spawned children (not multiprocessing's resource tracker,
    a helper that ends on its own once the study has exited)."""
    found = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_killed_parallel_study_stops_its_workers_and_resumes(tiny_study, tmp_path):
    store = tmp_path / "store"
    command = [sys.executable, "-m", "cvlth.cli", "study", str(tiny_study), "--store", str(store)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen([*command, "--workers", "2"], stdout=subprocess.PIPE, text=True, env=env)
    starts = 0
    for line in process.stdout:
        starts += line.startswith("start:")
        if starts == 3:  # the pre-training, then two runs at once: both workers are computing
            break
    assert starts == 3, "the study ended before two runs ran at once"
    workers = _children(process.pid)
    assert len(workers) >= 2
    process.kill()
    process.wait()
    deadline = time.monotonic() + 20
    while any(_state(pid) not in (None, "Z") for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(_state(pid) in (None, "Z") for pid in workers), "workers kept running after the study died"

    assert run_cli(["study", str(tiny_study), "--store", str(store), "--quiet", "--workers", "2"]) == 0
    assert (store / "studies" / "tiny" / "matching.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
@pytest.mark.parametrize("starts", [1, 3], ids=["worker-starting", "workers-computing"])
def test_repeated_ctrl_c_stops_a_parallel_study_with_one_line(tiny_study, tmp_path, starts):
    """Ctrl-C reaches the whole process group (the study and its workers), often twice: while the
    first worker starts (importing torch) and while both compute."""
    store = tmp_path / "store"
    command = [sys.executable, "-m", "cvlth.cli", "study", str(tiny_study), "--store", str(store)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [*command, "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    seen = 0
    for line in process.stdout:
        seen += line.startswith("start:")
        if seen == starts:
            break
    assert seen == starts, "the study ended early"
    deadline = time.monotonic() + 20  # "start:" is logged just before the run is submitted
    while len(workers := _workers(process.pid)) < min(starts, 2) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(workers) >= min(starts, 2)
    assert all(_ignores_sigint(pid) for pid in workers), "a worker would handle Ctrl-C itself"
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == [INTERRUPTED_MESSAGE]
    assert all(_state(pid) in (None, "Z") for pid in workers), "workers kept running after Ctrl-C"
    assert not (store / "studies" / "tiny" / "matching.json").exists()
    assert run_cli(["study", str(tiny_study), "--store", str(store), "--quiet", "--workers", "2"]) == 0


@pytest.mark.parametrize("error", [CvlthError("no masks here"), OSError(28, "No space left on device")])
def test_a_report_failure_it_can_explain_is_logged(tmp_path, monkeypatch, error) -> None:
    def fail(*args):
        raise error

    monkeypatch.setattr(study_cmd, "write_report", fail)
    lines: list[str] = []
    assert study_cmd.write_study_report(tmp_path, Store(tmp_path), lines.append) is None
    assert len(lines) == 1 and f"({type(error).__name__}: {error})" in lines[0]
    assert f"`cvlth report {tmp_path}`" in lines[0]


def test_a_bug_in_the_report_fails_the_study(tmp_path, monkeypatch) -> None:
    def fail(*args):
        raise KeyError("levels")

    monkeypatch.setattr(study_cmd, "write_report", fail)
    with pytest.raises(KeyError):
        study_cmd.write_study_report(tmp_path, Store(tmp_path), print)
