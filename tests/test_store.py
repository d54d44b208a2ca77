import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from config_fixtures import TrainConfig
from cvlth.atomic import atomic_path, atomic_write_text
from cvlth.config import DataRef, TrainingConfig
from cvlth.errors import CvlthError
from cvlth.run_identity import config_hash
from cvlth.store import RunBusyError, Store, reported_io

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cfg(seed: int = 0) -> TrainConfig:
    return TrainConfig(data=DataRef(name="tiny"), train=TrainingConfig(seed=seed))


def test_run_dir_is_kind_and_hash(tmp_path) -> None:
    store = Store(tmp_path)
    folder = store.run_dir(cfg())
    assert folder.path == tmp_path / "train" / config_hash(cfg())
    assert os.fspath(folder) == str(folder.path)
    assert Store().root == Path("./runs")


def test_execute_writes_config_result_and_skips_a_finished_run(tmp_path) -> None:
    store = Store(tmp_path)
    calls = []

    def work(folder):
        calls.append(folder.path)
        with open(folder.metrics_path, "a") as handle:
            handle.write('{"step": 1}\n')
        return {"accuracy": 0.5}

    assert not store.is_done(cfg())
    assert store.execute(cfg(), work) == {"accuracy": 0.5}
    folder = store.run_dir(cfg())
    assert TrainConfig.from_yaml(folder.config_path.read_text()) == cfg()
    stored = json.loads(folder.result_path.read_text())
    assert stored["accuracy"] == 0.5 and set(stored) == {"accuracy", "integrity"}
    assert stored["integrity"]["artefacts"] == {  # every file the run wrote, but not its lock
        name: hashlib.sha256((folder.path / name).read_bytes()).hexdigest()
        for name in ("config.yaml", "metrics.jsonl")
    }
    metrics_before = folder.metrics_path.read_bytes()

    assert store.execute(cfg(), work) == {"accuracy": 0.5}
    assert len(calls) == 1  # the second invocation did no work
    assert folder.metrics_path.read_bytes() == metrics_before
    assert store.is_done(cfg()) and store.result(cfg()) == {"accuracy": 0.5}
    assert not store.is_done(cfg(seed=1))


def test_a_failed_run_leaves_no_result_and_runs_again(tmp_path) -> None:
    store = Store(tmp_path)

    def fail(folder):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.execute(cfg(), fail)
    assert not store.is_done(cfg())
    with pytest.raises(CvlthError, match="has no result yet"):
        store.result(cfg())
    assert store.execute(cfg(), lambda folder: {"ok": True}) == {"ok": True}


def test_atomic_write_interrupted_by_exception_keeps_previous_file(tmp_path) -> None:
    target = tmp_path / "result.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # temp file removed


def test_atomic_write_killed_mid_write_keeps_previous_file(tmp_path) -> None:
    target = tmp_path / "checkpoint.pt"
    atomic_write_text(target, "previous")
    proc = python_popen(
        f"""
        import os, signal
        from cvlth.atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_text("partial")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert proc.wait(timeout=60) == -9
    assert target.read_text() == "previous"


def test_second_process_waits_or_refuses_while_a_run_is_locked(tmp_path) -> None:
    store = Store(tmp_path)
    code = f"""
        import sys
        from config_fixtures import TrainConfig
        from cvlth.config import DataRef, TrainingConfig
        from cvlth.store import Store
        cfg = TrainConfig(data=DataRef(name="tiny"), train=TrainingConfig(seed=0))
        try:
            print(Store({str(tmp_path)!r}).execute(cfg, lambda f: {{"by": "child"}}, wait=sys.argv[1] == "wait"))
        except Exception as error:
            print(type(error).__name__, error)
        """
    with store.lock(cfg()):
        out, _ = python_run(code, "nowait")
        assert f"RunBusyError run train/{config_hash(cfg())} is being run by pid {os.getpid()}" in out
        waiting = python_popen(code, "wait")
        stderr_line = waiting.stderr.readline()
        assert f"waiting for train/{config_hash(cfg())} held by pid {os.getpid()}" in stderr_line
        time.sleep(0.2)
        assert waiting.poll() is None  # still blocked on the lock
        store.run_dir(cfg()).write_result({"by": "parent"})
    out, _ = waiting.communicate(timeout=60)
    assert "{'by': 'parent'}" in out  # the waiter found the result and did not recompute


def python_run(code: str, *args: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(Path(__file__).parent)])}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=60,
    )
    return done.stdout, done.stderr


def python_popen(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, str(Path(__file__).parent)])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_lock_without_waiting_raises_in_process(tmp_path) -> None:
    store = Store(tmp_path)
    with (
        store.lock(cfg()),
        pytest.raises(RunBusyError, match="is being run by pid"),
        store.lock(cfg(), wait=False),
    ):
        pass


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "permission denied"), (errno.EROFS, "read-only")],
)
def test_disk_full_and_permission_errors_name_the_path(tmp_path, code, words) -> None:
    target = tmp_path / "checkpoint.pt"
    with pytest.raises(CvlthError) as info, reported_io(target):
        raise OSError(code, os.strerror(code))
    assert str(target) in str(info.value) and words in str(info.value)
    assert info.value.hint and "--store" in info.value.hint


def test_other_os_errors_are_not_swallowed(tmp_path) -> None:
    with pytest.raises(FileNotFoundError), reported_io(tmp_path):
        raise FileNotFoundError(errno.ENOENT, "gone")


def test_result_write_reports_disk_full(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cvlth.atomic.os.fsync", full)  # the data of every atomic write reaches the disk here
    with pytest.raises(CvlthError, match=r"cannot write .*config.yaml: the disk is full"):
        store.execute(cfg(), lambda folder: {"ok": 1})
    assert not store.is_done(cfg())
    assert sorted(p.name for p in store.run_dir(cfg()).path.iterdir()) == [".lock"]  # no temporary file left


def test_runs_command_lists_runs_with_status(tmp_path, capsys) -> None:
    from cvlth.cli import run_cli

    store = Store(tmp_path)
    store.execute(cfg(), lambda folder: {"ok": 1})
    with store.lock(cfg(seed=1)) as folder:
        Store._write_config(folder, cfg(seed=1))
    statuses = {f.path.name: f.status for f in store.runs("train")}
    assert statuses == {config_hash(cfg()): "done", config_hash(cfg(seed=1)): "started"}
    assert run_cli(["runs", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert config_hash(cfg()) in out and config_hash(cfg(seed=1)) in out
    assert "done" in out and "started" in out


def test_atomic_files_get_the_usual_permissions(tmp_path) -> None:
    import os
    import stat

    from cvlth.atomic import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
