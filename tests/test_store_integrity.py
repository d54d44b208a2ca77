"""Hostile input and faults in the run store: damaged runs are reported (never used), paths stay inside
the store, OS errors are one line, two studies can share a store."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from config_fixtures import TrainConfig
from cvlth.cli import run_cli
from cvlth.config import DataRef, TrainingConfig
from cvlth.errors import CvlthError
from cvlth.results.matching import matching
from cvlth.store import RunFolder, Store, StoreError
from cvlth.study.config import StudyConfig, study_to_yaml
from study_fixtures import DIGITS_TASK, NEEDS_FASHION_MNIST, SUPERVISED_PRETRAINING, TINY_BACKBONE

SRC = str(Path(__file__).resolve().parents[1] / "src")


def cfg(seed: int = 0) -> TrainConfig:
    return TrainConfig(data=DataRef(name="tiny"), train=TrainingConfig(seed=seed))


def finished_run(store: Store, seed: int = 0) -> RunFolder:
    """A finished run that wrote two artefacts (one in a subfolder) and a checkpoint."""

    def work(folder: RunFolder) -> dict:
        (folder.path / "weights.bin").write_bytes(bytes(range(256)) * 4)
        (folder.path / "masks").mkdir()
        (folder.path / "masks" / "level-01.bin").write_bytes(b"\x01\x00" * 100)
        folder.train_state_path.write_bytes(b"optimizer state")
        return {"accuracy": 0.75, "levels": [1]}

    store.execute(cfg(seed), work)
    return store.run_dir(cfg(seed))


def flip_byte(path: Path, offset: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


# --- what a finished run records -------------------------------------------------------------


def test_result_records_the_sha256_of_every_file_the_run_wrote(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    record = json.loads(folder.result_path.read_text())["integrity"]
    expected = {
        name: hashlib.sha256((folder.path / name).read_bytes()).hexdigest()
        for name in ("config.yaml", "weights.bin", "masks/level-01.bin")
    }
    assert record["artefacts"] == expected  # the checkpoint (kept by default) and the lock are not artefacts
    stats = {name: os.stat(folder.path / name) for name in expected}
    assert record["stats"] == {name: [info.st_size, info.st_mtime_ns] for name, info in stats.items()}
    assert folder.train_state_path.is_file()
    assert folder.read_result() == {"accuracy": 0.75, "levels": [1]}
    assert folder.status == "done"


def test_drop_train_state_removes_it_after_the_result(tmp_path) -> None:
    store = Store(tmp_path)

    def work(folder: RunFolder) -> dict:
        folder.train_state_path.write_bytes(b"state")
        return {"ok": 1}

    assert store.execute(cfg(), work, drop_train_state=True) == {"ok": 1}
    folder = store.run_dir(cfg())
    assert not folder.train_state_path.exists() and folder.status == "done"


# --- damage is detected on every read ---------------------------------------------------------


def _assert_damaged(folder: RunFolder, tmp_path: Path, words: str) -> None:
    with pytest.raises(StoreError) as caught:
        folder.read_result()
    message = str(caught.value)
    assert words in message
    assert f"run {folder.name} is damaged" in message
    assert f"cvlth runs --store {tmp_path} --forget {folder.name}" in message  # how to recompute it
    assert folder.status == "damaged"


def test_a_flipped_byte_in_an_artefact_is_reported_with_its_path(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    flip_byte(folder.path / "masks" / "level-01.bin")
    _assert_damaged(
        folder, tmp_path, f"{folder.path / 'masks' / 'level-01.bin'} changed after the run finished"
    )
    with pytest.raises(StoreError, match="level-01.bin changed"):
        folder.verified_path("masks/level-01.bin")
    assert folder.verified_path("weights.bin") == folder.path / "weights.bin"  # the intact one is fine


def test_a_deleted_artefact_is_reported(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    (folder.path / "weights.bin").unlink()
    _assert_damaged(folder, tmp_path, f"{folder.path / 'weights.bin'} is missing")


def test_an_edited_result_is_reported(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    stored = json.loads(folder.result_path.read_text())
    stored["accuracy"] = 0.99  # a better number, typed in by hand
    folder.result_path.write_text(json.dumps(stored))
    _assert_damaged(folder, tmp_path, "was edited or damaged")


def test_an_edited_artefact_hash_is_reported(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    flip_byte(folder.path / "weights.bin")
    stored = json.loads(folder.result_path.read_text())
    stored["integrity"]["artefacts"]["weights.bin"] = hashlib.sha256(
        (folder.path / "weights.bin").read_bytes()
    ).hexdigest()  # "repaired" by hand: the record's own hash no longer fits
    folder.result_path.write_text(json.dumps(stored))
    _assert_damaged(folder, tmp_path, "was edited or damaged")


@pytest.mark.parametrize("keep", [0, 1, 40])
def test_a_truncated_result_is_reported(tmp_path, keep) -> None:
    folder = finished_run(Store(tmp_path))
    folder.result_path.write_bytes(folder.result_path.read_bytes()[:keep])
    _assert_damaged(folder, tmp_path, "is not valid JSON")


def test_a_result_without_hashes_is_reported(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    folder.result_path.write_text(json.dumps({"accuracy": 0.75, "levels": [1]}))
    _assert_damaged(folder, tmp_path, "has no content hashes")


def test_quick_check_compares_sizes_and_hashes_only_files_whose_mtime_moved(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    weights = folder.path / "weights.bin"
    info = weights.stat()
    assert folder.damage(full_hash=False) is None
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # touched, bytes unchanged
    assert folder.damage(full_hash=False) is None  # hashed, and the hash still fits
    weights.write_bytes(weights.read_bytes()[:-1])
    assert folder.damage(full_hash=False) == (
        f"run {folder.name} is damaged: {weights} changed after the run finished "
        "(it is 1,023 bytes, 1,024 when the run finished)"
    )
    weights.write_bytes(bytes(range(256)) * 4)  # restored
    flip_byte(weights)
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))  # same size, same mtime: only a hash sees it
    assert folder.damage(full_hash=False) is None
    assert "weights.bin changed after the run finished (its sha256 differs)" in folder.damage()


def test_a_record_written_before_sizes_were_kept_still_reads_and_is_hashed(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    stored = json.loads(folder.result_path.read_text())
    artefacts = stored.pop("integrity")["artefacts"]
    canonical = json.dumps({"result": stored, "artefacts": artefacts}, sort_keys=True, separators=(",", ":"))
    old = {"artefacts": artefacts, "sha256": hashlib.sha256(canonical.encode()).hexdigest()}
    folder.result_path.write_text(json.dumps({**stored, "integrity": old}))  # the earlier format
    assert folder.read_result() == {"accuracy": 0.75, "levels": [1]}
    assert folder.damage(full_hash=False) is None
    weights = folder.path / "weights.bin"
    info = weights.stat()
    flip_byte(weights)
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert "weights.bin changed after the run finished" in folder.damage(full_hash=False)  # hashed


def test_edited_sizes_in_the_record_are_reported(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    stored = json.loads(folder.result_path.read_text())
    stored["integrity"]["stats"]["weights.bin"][0] = 1  # a record "repaired" to fit a truncated file
    folder.result_path.write_text(json.dumps(stored))
    _assert_damaged(folder, tmp_path, "was edited or damaged")


def test_execute_refuses_a_damaged_run_instead_of_using_or_recomputing_it(tmp_path) -> None:
    store = Store(tmp_path)
    folder = finished_run(store)
    flip_byte(folder.path / "weights.bin")
    calls = []
    with pytest.raises(StoreError, match="weights.bin changed"):
        store.execute(cfg(), lambda f: calls.append(f) or {"accuracy": 0.0})
    assert calls == []


def test_verified_path_refuses_unknown_files_and_escapes(tmp_path) -> None:
    folder = finished_run(Store(tmp_path))
    assert folder.verified_path("heads.pt") == folder.path / "heads.pt"  # optional artefact, not written
    (folder.path / "heads.pt").write_bytes(b"planted later")
    with pytest.raises(StoreError, match="is not one of the files the run wrote"):
        folder.verified_path("heads.pt")
    (tmp_path / "outside.bin").write_bytes(b"x")
    for name in ("../../outside.bin", str(tmp_path / "outside.bin")):
        with pytest.raises(StoreError, match="leads outside"):
            folder.verified_path(name)
    with pytest.raises(CvlthError, match="has no result yet"):
        Store(tmp_path).run_dir(cfg(seed=5)).verified_path("weights.bin")


# --- cvlth runs -----------------------------------------------------------------------------


def test_runs_shows_damaged_runs_and_forget_lets_them_be_recomputed(tmp_path, capsys) -> None:
    store = Store(tmp_path)
    damaged, intact = finished_run(store, seed=0), finished_run(store, seed=1)
    damaged.result_path.write_text(damaged.result_path.read_text()[:30])  # truncated
    intact_before = {p: p.read_bytes() for p in intact.path.rglob("*") if p.is_file()}

    code, out, _ = cli(["runs", "--store", str(tmp_path)], capsys)
    assert code == 0
    # the table's rows: "KIND/HASH  status  ..." (no vertical rules)
    rows = {
        line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip().startswith("train/")
    }
    assert rows[damaged.name] == "damaged" and rows[intact.name] == "done"
    assert f"damaged: run {damaged.name} is damaged: {damaged.result_path} is not valid JSON" in out
    assert f"--forget {damaged.name}" in out

    code, out, _ = cli(["runs", "--store", str(tmp_path), "--forget", damaged.name], capsys)
    assert code == 0 and not damaged.path.exists()
    assert {p: p.read_bytes() for p in intact.path.rglob("*") if p.is_file()} == intact_before
    assert store.execute(cfg(0), lambda f: {"accuracy": 0.5}) == {"accuracy": 0.5}  # computed again

    for name in ("train/0000000000000000", "../elsewhere", "train"):
        code, _, err = cli(["runs", "--store", str(tmp_path), "--forget", name], capsys)
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) <= 2


# --- OS errors: one line, exit 2, nothing half-written -----------------------------------------


def test_store_that_is_a_file(tmp_path, capsys) -> None:
    not_a_folder = tmp_path / "store"
    not_a_folder.write_text("precious")
    for args in (["runs"], ["study", "smoke"]):
        code, _, err = cli([*args, "--store", str(not_a_folder)], capsys)
        assert code == 2
        assert f"the store {not_a_folder} is a file, not a folder" in err
    assert not_a_folder.read_text() == "precious"


def test_read_only_store(tmp_path, monkeypatch, capsys) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("cvlth.atomic.tempfile.mkstemp", read_only)  # root ignores chmod; the kernel's answer
    code, _, err = cli(["study", "smoke", "--store", str(tmp_path / "store")], capsys)
    assert code == 2
    assert "cannot write" in err and "study.yaml: the file system is read-only" in err
    assert not list(tmp_path.rglob("*.yaml"))


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # What torch.save raises when the disk fills up under it (no errno).
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 3584 vs 3478"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
    ],
)
def test_disk_full_during_an_atomic_write_names_the_path_and_keeps_the_old_file(tmp_path, failure) -> None:
    folder = RunFolder(tmp_path / "train" / "abc")
    folder.path.mkdir(parents=True)
    folder.train_state_path.write_bytes(b"previous checkpoint")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half of a new check")
        raise failure

    with pytest.raises(CvlthError) as caught:
        folder.write_file_atomically("train-state.pt", write)
    assert f"cannot write {folder.train_state_path}: the disk is full" in str(caught.value)
    assert folder.train_state_path.read_bytes() == b"previous checkpoint"
    assert sorted(p.name for p in folder.path.iterdir()) == ["train-state.pt"]  # no temporary file left


def test_unrelated_runtime_errors_keep_their_traceback(tmp_path) -> None:
    def write(tmp: Path) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        RunFolder(tmp_path).write_file_atomically("x.pt", write)


# --- the report reads only inside the store -------------------------------------------------


def _study_folder(store: Path, mask_path: str) -> Path:
    """A finished-looking study folder whose tickets.json lists ``mask_path`` for its only ticket."""
    study = StudyConfig.model_validate(
        {
            "name": "hostile",
            "backbone": TINY_BACKBONE,
            "pretrainings": {"supervised": SUPERVISED_PRETRAINING},
            "tasks": {"digits": DIGITS_TASK},
            "finders": [{"name": "omp", "method": "omp"}],
            "rounds": 1,
            "seeds": [0],
        }
    )
    folder = store / "studies" / "hostile"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(study_to_yaml(study))
    table = [matching("supervised/omp", "digits", [0.9], {0.2: [0.91]}).to_dict()]
    (folder / "matching.json").write_text(json.dumps(table))
    ticket = {
        "source": "supervised/omp",
        "pretraining": "supervised",
        "finder": "omp",
        "task": None,
        "method": "omp",
        "run": "baseline/x",
        "levels": {"1": {"sparsity": 0.2, "mask": mask_path}},
    }
    (folder / "tickets.json").write_text(json.dumps([ticket]))
    return folder


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_report_refuses_mask_paths_that_leave_the_store(tmp_path, capsys, kind) -> None:
    store = tmp_path / "store"
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"not yours")
    if kind == "symlink":
        (store / "baseline" / "x" / "masks").mkdir(parents=True)
        (store / "baseline" / "x" / "masks" / "level-01.safetensors").symlink_to(secret)
    listed = {
        "dotdot": "baseline/x/../../../secret.safetensors",
        "absolute": str(secret),
        "symlink": "baseline/x/masks/level-01.safetensors",
    }[kind]
    folder = _study_folder(store, listed)
    code, _, err = cli(["report", str(folder)], capsys)
    assert code == 2
    assert (
        f"mask path in {folder / 'tickets.json'} {listed!r} leads outside {store}; refusing to read it" in err
    )
    assert not (folder / "report.html").exists()
    assert secret.read_bytes() == b"not yours"


# --- real studies: damage found before use, two studies on one store ------------------------------

ONE_SEED_STUDY = {
    "name": "shared",
    "backbone": TINY_BACKBONE,
    "pretrainings": {"supervised": SUPERVISED_PRETRAINING},
    "tasks": {"digits": DIGITS_TASK},
    "finders": [{"name": "omp", "method": "omp"}],
    "rounds": 1,
    "seeds": [0, 1],
    "adapt": {"small_images": False},
}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    config = root / "shared.yaml"
    config.write_text(yaml.safe_dump(ONE_SEED_STUDY))
    assert run_cli(["study", str(config), "--store", str(root / "store"), "--quiet"]) == 0
    return config, root / "store"


def _copy(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(finished[1], store)
    return store


def _snapshot(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_study_stops_at_a_flipped_theta_p_before_a_dependent_uses_it(
    finished_study, tmp_path, capsys
) -> None:
    store = _copy(finished_study, tmp_path)
    (theta,) = store.glob("pretrain/*/theta_p.pt")
    flip_byte(theta, offset=theta.stat().st_size // 2)
    dense = [p.parent for p in store.glob("transfer/*/result.json")]
    shutil.rmtree(dense[0])  # a dependent that would be recomputed from θ_p
    before = _snapshot(store)
    code, _, err = cli(["study", str(finished_study[0]), "--store", str(store), "--quiet"], capsys)
    assert code == 2
    assert f"is damaged: {theta} changed after the run finished" in err.replace("\n", "")
    assert f"--forget pretrain/{theta.parent.name}" in err
    assert not dense[0].exists()  # nothing was computed from the damaged file
    after = _snapshot(store)
    assert {k: v for k, v in after.items() if "studies/" not in k} == {
        k: v for k, v in before.items() if "studies/" not in k
    }


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_study_refuses_an_edited_or_truncated_result_and_forget_recomputes_it(
    finished_study, tmp_path, capsys
) -> None:
    store = _copy(finished_study, tmp_path)
    matching_before = (store / "studies" / "shared" / "matching.json").read_text()
    edited, truncated = sorted(p for p in store.glob("transfer/*/result.json"))[:2]
    stored = json.loads(edited.read_text())
    stored["test_at_best_val"]["accuracy"] = 1.0
    edited.write_text(json.dumps(stored, indent=2))
    truncated.write_text(truncated.read_text()[:-20])

    code, out, _ = cli(["runs", "--store", str(store)], capsys)
    assert code == 0 and sum(line.startswith("damaged: run transfer/") for line in out.splitlines()) == 2
    code, _, err = cli(["study", str(finished_study[0]), "--store", str(store), "--quiet"], capsys)
    assert code == 2 and "is damaged" in err
    assert (store / "studies" / "shared" / "matching.json").read_text() == matching_before

    names = [f"transfer/{p.parent.name}" for p in (edited, truncated)]
    assert run_cli(["runs", "--store", str(store), *[a for n in names for a in ("--forget", n)]]) == 0
    code, out, _ = cli(["study", str(finished_study[0]), "--store", str(store), "--quiet"], capsys)
    assert code == 0 and "(2 computed now)" in out
    assert (store / "studies" / "shared" / "matching.json").read_text() == matching_before  # same results


COUNTING_STUDY = """
    import pathlib, sys, time
    from cvlth.store import Store

    execute, log = Store.execute, sys.argv[1]

    def counted(self, cfg, fn, **kwargs):
        def run(folder):
            with open(log, "a") as handle:  # O_APPEND: lines of both processes never mix
                handle.write(f"{folder.name}\\n")
            return fn(folder)
        return execute(self, cfg, run, **kwargs)

    Store.execute = counted

    # Deleting a finished run's checkpoint takes a second: a study that deletes it outside the run's
    # lock (as cvlth once did) then races the other study, which finds the run done at that moment.
    unlink = pathlib.Path.unlink

    def slow_unlink(self, missing_ok=False):
        if self.name == "train-state.pt":
            time.sleep(1.0)
        return unlink(self, missing_ok=missing_ok)

    pathlib.Path.unlink = slow_unlink
    from cvlth.cli import run_cli
    sys.exit(run_cli(sys.argv[2:]))
"""


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_two_studies_on_one_store_both_finish_and_compute_each_run_once(tmp_path) -> None:
    config = tmp_path / "shared.yaml"
    config.write_text(yaml.safe_dump(ONE_SEED_STUDY))
    store, log = tmp_path / "store", tmp_path / "computed.log"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-c", textwrap.dedent(COUNTING_STUDY), str(log), "study", str(config)]
    processes = [
        subprocess.Popen(
            [*args, "--store", str(store), "--quiet"],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
        assert "Traceback" not in out + err
    computed = log.read_text().split()
    folders = sorted(f"{p.parent.parent.name}/{p.parent.name}" for p in store.glob("*/*/config.yaml"))
    assert sorted(computed) == folders  # every run once: 1 pretrain, 1 baseline, 2 dense, 2 ticket transfers
    assert len(folders) == 6
    assert all(RunFolder(store / name).status == "done" for name in folders)
    assert not list(store.glob("*/*/train-state.pt"))
