"""A run's data identity (cvlth.runs.recorded_data): a folder changed between a kill and the resume is
refused, a finished run whose folder changed is stale (``--plan``) and not reused (``cvlth study``),
an unchanged folder resumes; run hashes do not depend on it."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cvlth.cli import run_cli
from cvlth.data.identity import compare, identity_of_files
from cvlth.run_files import DATA_IDENTITY, DATA_MANIFESTS, TRAIN_STATE
from cvlth.runs.context import RUN_EXECUTORS, Context
from cvlth.runs.execute import ensure
from cvlth.runs.recorded_data import DataChangedError, record_or_check
from cvlth.store import RunFolder, Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from hostile_fixtures import cli_error, file_hashes
from study_fixtures import DIGITS_TASK

CLASSES = ("ant", "bee")


def _png(path: Path, shade: int, size: tuple[int, int] = (6, 5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade, shade, shade)).save(path)


def _tree(root: Path) -> Path:
    """``train/<class>/i.png`` x 4 and ``val/<class>/i.png`` x 2: 12 images."""
    for split, count in (("train", 4), ("val", 2)):
        for label, name in enumerate(CLASSES):
            for i in range(count):
                _png(root / split / name / f"{i}.png", 40 * i + label)
    return root


def _change(tree: Path) -> None:
    """3 files added, 1 removed, 2 changed (one rewritten larger, one touched)."""
    for i in range(3):
        _png(tree / "train" / "bee" / f"new{i}.png", 7)
    (tree / "train" / "ant" / "3.png").unlink()
    _png(tree / "val" / "ant" / "0.png", 1, size=(9, 9))
    touched = tree / "val" / "bee" / "1.png"
    info = touched.stat()
    os.utime(touched, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))


STUDY = {
    "name": "folder",
    "backbone": {"arch": "resnet18", "width": 4, "stem": "cifar", "in_channels": 3},
    "pretrainings": {
        "supervised": {
            "recipe": {
                "data": {"name": "imagefolder", "root": "TREE", "options": {"image_size": 8, "val_size": 2}},
                "objective": {"name": "supervised", "options": {"augment": "none"}},
                "train": {"epochs": 1, "batch_size": 4},
            }
        }
    },
    "tasks": {"digits": DIGITS_TASK},
    "finders": [{"name": "omp", "method": "omp"}],
    "rounds": 1,
    "seeds": [0],
}


@pytest.fixture
def study(tmp_path, monkeypatch) -> tuple[Path, Path, Store, object]:
    """A study pre-trained on an image folder: its config, the tree, the store and the pretrain run."""
    monkeypatch.setenv("COLUMNS", "250")
    tree = _tree(tmp_path / "tree")
    data = json.loads(json.dumps(STUDY).replace('"TREE"', json.dumps(str(tree))))
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(data))
    pretrain = next(p.run for p in expand(load_study(config)) if p.run.kind == "pretrain")
    return config, tree, Store(tmp_path / "store"), pretrain


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The pretrain executor replaced by one that records its call and finishes at once."""
    called: list[str] = []

    def finish(run, folder: RunFolder, ctx) -> dict:
        called.append(folder.name)
        (folder.path / "theta_p.bin").write_bytes(b"weights")
        return {"ok": 1}

    monkeypatch.setitem(RUN_EXECUTORS._items, "pretrain", finish)
    return called


def _killed_after_start(store: Store, run) -> RunFolder:
    """What a run killed after its first checkpoint leaves: config, data identity, training state."""
    folder = store.run_dir(run)
    folder.path.mkdir(parents=True)
    folder.config_path.write_text(run.to_yaml())
    record_or_check(run, folder, store)
    folder.train_state_path.write_bytes(b"a training state")
    return folder


def test_the_identity_is_what_the_folder_held_when_the_run_started(study) -> None:
    _, tree, store, run = study
    folder = _killed_after_start(store, run)
    record = json.loads((folder.path / DATA_IDENTITY).read_text())
    files = sorted(p for p in tree.rglob("*.png"))
    lines = sorted(
        f"{p.relative_to(tree).as_posix()}\0{p.stat().st_size}\0{p.stat().st_mtime_ns}\n" for p in files
    )
    expected = hashlib.sha256(("cvlth-data-identity/1\n" + "".join(lines)).encode()).hexdigest()
    assert record == {
        "format": "cvlth-data-identity/1",
        "dataset": "imagefolder",
        "root": str(tree),
        "files": 12,
        "bytes": sum(p.stat().st_size for p in files),
        "sha256": expected,
    }
    manifest = store.root / DATA_MANIFESTS / f"{expected}.json.gz"
    listed = json.loads(gzip.decompress(manifest.read_bytes()))["files"]
    assert [entry[0] for entry in listed] == sorted(p.relative_to(tree).as_posix() for p in files)
    # Beside the config, not in it: the run keeps its hash and its config.yaml.
    assert store.run_dir(run).name == folder.name
    assert folder.config_path.read_text() == run.to_yaml() and expected not in run.to_yaml()


def test_a_killed_run_whose_folder_changed_is_refused_on_resume(study, calls, capsys) -> None:
    config, tree, store, run = study
    folder = _killed_after_start(store, run)
    _change(tree)
    before = file_hashes(tree, config, folder.path)
    line = cli_error(["study", str(config), "--store", str(store.root), "--quiet"], capsys)
    assert line == (
        f"error: imagefolder: 3 files added, 1 removed, 2 changed under {tree} (e.g. val/ant/0.png, "
        f"val/bee/1.png, train/bee/new0.png) since run {folder.name} started; resuming it would mix old "
        "and new data"
    )
    assert calls == []  # nothing trained on the mixed data
    lock = folder.lock_path  # taken to resume: the only file added
    assert {p: h for p, h in file_hashes(tree, config, folder.path).items() if p != lock} == before
    with pytest.raises(DataChangedError) as refused:  # the study's own path, in-process
        ensure(run, Context(store=store, quiet=True))
    assert f"`cvlth runs --store {store.root} --forget {folder.name}`" in refused.value.hint


def test_an_unchanged_folder_resumes(study, calls) -> None:
    _, _, store, run = study
    folder = _killed_after_start(store, run)
    assert ensure(run, Context(store=store, quiet=True)) == {"ok": 1}
    assert calls == [folder.name] and folder.is_done()


def test_a_started_run_without_progress_records_the_folder_as_it_is_now(study, calls) -> None:
    _, tree, store, run = study
    folder = _killed_after_start(store, run)
    folder.train_state_path.unlink()  # killed before its first checkpoint: nothing would be mixed
    old = json.loads((folder.path / DATA_IDENTITY).read_text())["sha256"]
    _change(tree)
    assert ensure(run, Context(store=store, quiet=True)) == {"ok": 1}
    assert json.loads((folder.path / DATA_IDENTITY).read_text())["sha256"] != old


def test_a_finished_run_whose_folder_changed_is_stale_in_the_plan_and_not_reused(
    study, calls, capsys
) -> None:
    config, tree, store, run = study
    ensure(run, Context(store=store, quiet=True))
    folder = store.run_dir(run)
    assert run_cli(["study", str(config), "--plan", "--store", str(store.root)]) == 0
    assert "stale" not in capsys.readouterr().out

    _png(tree / "val" / "bee" / "extra.png", 3)
    assert run_cli(["study", str(config), "--plan", "--store", str(store.root)]) == 0
    out = capsys.readouterr().out
    rows = {}
    for row in out.splitlines():
        cells = [c.strip() for c in row.strip().strip("│┃").split("│" if "│" in row else "┃")]
        rows[cells[0]] = cells
    header = rows["run kind"]
    assert header[:5] == ["run kind", "runs", "done", "stale", "to do"]
    assert rows["pretrain"][1:5] == ["1", "0", "1", "1"]  # stale: to do again
    text = " ".join(out.split())
    assert "(1 stale)" in text
    assert (
        f"run {folder.name} is stale: imagefolder: 1 file added, 0 removed, 0 changed under {tree} "
        "(e.g. val/bee/extra.png) since it started"
    ) in text
    assert f"recompute: `cvlth runs --store {store.root} --forget {folder.name}`" in text

    before = file_hashes(tree, config, folder.path)
    line = cli_error(["study", str(config), "--store", str(store.root), "--quiet"], capsys)
    assert line.startswith(f"error: run {folder.name} is stale: imagefolder: 1 file added")
    assert calls == [folder.name]  # computed once, before the change; never again
    assert file_hashes(tree, config, folder.path) == before  # refused before any lock or write

    (tree / "val" / "bee" / "extra.png").unlink()  # the folder as it was: done again
    assert run_cli(["study", str(config), "--plan", "--store", str(store.root)]) == 0
    assert "stale" not in capsys.readouterr().out


def test_without_the_manifest_the_change_is_told_in_counts(study) -> None:
    _, tree, store, run = study
    folder = _killed_after_start(store, run)
    for manifest in (store.root / DATA_MANIFESTS).iterdir():
        manifest.unlink()
    size = (tree / "train" / "ant" / "3.png").stat().st_size
    total = sum(p.stat().st_size for p in tree.rglob("*.png"))
    (tree / "train" / "ant" / "3.png").unlink()
    with pytest.raises(DataChangedError, match="resuming it would mix") as refused:
        record_or_check(run, folder, store)
    assert refused.value.message.startswith(
        f"imagefolder: the files under {tree} changed (12 files, {total:,} bytes then; 11 files, "
        f"{total - size:,} bytes now;"
    )


def test_compare_counts_each_kind_of_change() -> None:
    then = [("a", 1, 10), ("b", 2, 20), ("c", 3, 30), ("d", 4, 40)]
    now = [("a", 1, 10), ("b", 5, 20), ("c", 3, 31), ("e", 6, 60), ("f", 7, 70)]
    change = compare(then, now)
    assert (change.added, change.removed, change.changed) == (2, 1, 2)
    assert change.examples == ("b", "c", "e")


def test_the_identity_follows_sizes_and_mtimes_not_the_order_files_are_listed(tmp_path) -> None:
    tree = _tree(tmp_path / "tree")
    files = sorted(tree.rglob("*.png"))
    first = identity_of_files("imagefolder", tree, files)
    assert identity_of_files("imagefolder", tree, reversed(files)).sha256 == first.sha256
    info = files[0].stat()
    os.utime(files[0], ns=(info.st_atime_ns, info.st_mtime_ns + 1))
    assert identity_of_files("imagefolder", tree, files).sha256 != first.sha256


def test_world_datasets_record_no_identity(tmp_path, calls) -> None:
    from cvlth.data.registry import data_identity

    assert data_identity("world_digits") is None and data_identity("world_mnist") is None
    assert TRAIN_STATE == "train-state.pt"  # the name _killed_after_start leaves
