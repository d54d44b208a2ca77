"""Hostile files: no code runs from a dataset pickle, no config or image expands without bound.

Every case checks the exit code (CLI), that no traceback is printed, the message, and that the
hostile input files are byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import builtins
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvlth.cli import run_cli
from cvlth.config_yaml import MAX_CONFIG_NODES, MAX_LIST_ITEMS
from cvlth.data.array_formats import read_cifar10
from cvlth.data.registry import load_dataset
from cvlth.data.voc import read_annotation, read_rgb
from cvlth.errors import DatasetError
from cvlth.study.config import builtin_studies, builtin_study_path, load_study
from hostile_fixtures import cli_error, file_hashes, png_header

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


# --- 1. code execution through CIFAR pickles ------------------------------------------------------


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what pickle calls on load: os.system("touch marker")
        return os.system, (f"touch {self.marker}",)


class _ExecPayload(_SystemPayload):
    def __reduce__(self):  # noqa: ANN204
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _py2(value: object) -> bytes:
    """``value`` as Python 2's cPickle (protocol 2) wrote it: str -> SHORT_BINSTRING, numpy 1 names."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)
    if isinstance(value, bytes):
        return (
            b"U" + bytes([len(value)]) if len(value) < 256 else b"T" + struct.pack("<I", len(value))
        ) + value
    if isinstance(value, tuple):
        return b"(" + b"".join(map(_py2, value)) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(map(_py2, value)) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in value.items()) + b"u"
    assert isinstance(value, np.ndarray) and value.dtype == np.uint8
    dtype = (
        b"cnumpy\ndtype\n" + _py2((b"u1", False, True)) + b"R" + _py2((3, b"|", None, None, None, -1, -1, 0))
    )
    state = b"(" + _py2(1) + _py2(value.shape) + dtype + b"b" + _py2(False) + _py2(value.tobytes()) + b"t"
    reconstruct = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2(((0,), b"b"))[1:-1]
    return reconstruct + b"\x87R" + state + b"b"


def _write_cifar10(folder: Path, write) -> dict[str, object]:  # noqa: ANN001
    """Official-layout CIFAR-10 (2 images per batch) written by ``write(path, dict)``."""
    rng = np.random.default_rng(0)
    batches = {name: rng.integers(0, 256, (2, 3072), dtype=np.uint8) for name in CIFAR10_FILES[:-1]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in batches.items():
        write(folder / name, {b"batch_label": name.encode(), b"data": data, b"labels": [1, 9]})
    write(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072})
    return batches


def _py2_writer(path: Path, obj: dict) -> None:
    path.write_bytes(b"\x80\x02" + _py2(obj) + b".")


@pytest.mark.parametrize("protocol", ["py2", 2, 4, 5])
def test_genuine_cifar_pickles_still_read(tmp_path: Path, protocol: object) -> None:
    def write(path: Path, obj: dict) -> None:
        if protocol == "py2":
            _py2_writer(path, obj)
        else:
            path.write_bytes(pickle.dumps(obj, protocol=protocol))

    batches = _write_cifar10(tmp_path, write)
    if protocol == "py2":  # the hand-made bytes are what an unrestricted pickle reads as the batch
        plain = pickle.loads((tmp_path / "test_batch").read_bytes(), encoding="bytes")
        assert np.array_equal(plain[b"data"], batches["test_batch"]) and plain[b"labels"] == [1, 9]
    train, test = read_cifar10(tmp_path)
    assert torch.equal(test.images, torch.from_numpy(batches["test_batch"]).view(2, 3, 32, 32))
    assert torch.equal(train.images[8:], torch.from_numpy(batches["data_batch_5"]).view(2, 3, 32, 32))
    assert train.labels.tolist() == [1, 9] * 5 and train.classes == [f"c{i}" for i in range(10)]


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_labels_saved_as_numpy_scalars_read(tmp_path: Path, protocol: int) -> None:
    """A CIFAR batch re-saved with numpy scalar labels (np.int64) pickles numpy's ``scalar``."""

    def write(path: Path, obj: dict) -> None:
        if b"labels" in obj:
            obj = {**obj, b"labels": [np.int64(label) for label in obj[b"labels"]]}
        path.write_bytes(pickle.dumps(obj, protocol=protocol))

    _write_cifar10(tmp_path, write)
    assert b"scalar" in (tmp_path / "test_batch").read_bytes()  # the global this test is about
    train, test = read_cifar10(tmp_path)
    assert train.labels.tolist() == [1, 9] * 5 and test.labels.tolist() == [1, 9]


@pytest.mark.parametrize("payload", [_SystemPayload, _ExecPayload])
@pytest.mark.parametrize("target", ["data_batch_3", "test_batch", "batches.meta"])
def test_malicious_cifar_pickle_never_runs(tmp_path: Path, capsys, payload, target: str) -> None:
    # The payload is live: an unrestricted pickle.load runs it.
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(payload(control), protocol=2))
    assert control.exists()

    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "marker"
    _write_cifar10(folder, lambda path, obj: path.write_bytes(pickle.dumps(obj, protocol=2)))
    key = b"label_names" if target == "batches.meta" else b"data"
    (folder / target).write_bytes(pickle.dumps({key: payload(marker), b"labels": []}, protocol=2))
    before = file_hashes(folder)

    line = cli_error(["datasets", "show", "cifar10", "--root", str(tmp_path)], capsys)
    assert str(folder / target) in line and "refused" in line
    assert ("posix.system" if payload is _SystemPayload else "builtin__.exec") in line
    assert not marker.exists()
    assert file_hashes(folder) == before


def test_malicious_cifar_is_not_run_by_study_plan(tmp_path: Path, capsys) -> None:
    folder, marker = tmp_path / "data" / "cifar-10-batches-py", tmp_path / "marker"
    _write_cifar10(folder, lambda path, obj: path.write_bytes(pickle.dumps(obj, protocol=2)))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _ExecPayload(marker)}, protocol=2))
    study = tmp_path / "study.yaml"
    text = builtin_study_path("smoke").read_text()
    study.write_text(text.replace("name: world_mnist,", f"name: cifar10, root: {tmp_path / 'data'},"))
    before = file_hashes(folder)
    assert run_cli(["study", str(study), "--plan", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err and "sizes unknown (data not found here): cifar10" in out.out
    assert not marker.exists() and file_hashes(folder) == before


def test_cifar100_meta_with_a_foreign_global_is_refused(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        (folder / name).write_bytes(
            pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"fine_labels": [0]})
        )
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [Path("x")]}))  # a pathlib class
    before = file_hashes(folder)
    line = cli_error(["datasets", "show", "cifar100", "--root", str(tmp_path)], capsys)
    assert str(folder / "meta") in line and "pathlib" in line and "refused" in line
    assert file_hashes(folder) == before


# --- 2. YAML bombs ------------------------------------------------------------------------------

BILLION_LAUGHS = "name: lol\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BILLION_LAUGHS, f"its aliases expand to more than {MAX_CONFIG_NODES:,} YAML nodes"),
        ("name: s\nseeds: [" + ", ".join(map(str, range(10**6))) + "]\n", "bytes, more than the 1,048,576"),
        ("name: s\nseeds: [" + ", ".join(map(str, range(20_000))) + "]\n", "more than 10,000 YAML nodes"),
        ("name: s\nseeds: [" + ", ".join(map(str, range(1001))) + "]\n", "list at line 2 has 1,001 items"),
        ("name: s\nseeds: " + "[" * 1000 + "]" * 1000 + "\n", "nested deeper than 50 levels (line 2)"),
        ("name: s\nseeds: &s [1, *s]\n", "an alias refers to a mapping or list that contains it (line 2)"),
    ],
    ids=["billion-laughs", "million-seeds", "20k-seeds", "1001-seeds", "deep", "recursive-alias"],
)
def test_study_yaml_bombs_are_refused_quickly(tmp_path: Path, capsys, text: str, message: str) -> None:
    study, store = tmp_path / "bomb.yaml", tmp_path / "store"
    study.write_text(text)
    before = file_hashes(study)
    start = time.perf_counter()
    line = cli_error(["study", str(study), "--plan", "--store", str(store)], capsys)
    assert time.perf_counter() - start < 10
    assert line.startswith(f"error: {study}: refused: ") and message in line
    assert file_hashes(study) == before and not store.exists()


def test_packaged_studies_fit_the_bounds() -> None:
    for name in builtin_studies():
        assert load_study(name).name


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    text = builtin_study_path("smoke").read_text()
    pretrain_optim = "optim: {name: sgd, lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4}"
    task_optim = "optim: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}"
    assert pretrain_optim in text and task_optim in text
    study = tmp_path / "s.yaml"
    study.write_text(
        text.replace(pretrain_optim, "optim: &o " + pretrain_optim[7:]).replace(task_optim, "optim: *o")
    )
    assert load_study(study).tasks["mnist"].optim.lr == 0.1


def test_a_list_at_the_bound_still_loads(tmp_path: Path) -> None:
    study = tmp_path / "s.yaml"
    seeds = list(range(MAX_LIST_ITEMS))
    study.write_text(builtin_study_path("smoke").read_text().replace("seeds: [0, 1]", f"seeds: {seeds}"))
    assert load_study(study).seeds == seeds


# --- 4. decompression bombs in image folders ------------------------------------------------------


def _tree(root: Path, bomb: bytes) -> Path:
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4), (10, 20, 30)).save(root / split / name / "ok.png")
    (root / "train" / "b" / "bomb.png").write_bytes(bomb)
    return root / "train" / "b" / "bomb.png"


# 20000^2 is over PIL's error limit (2 x 89,478,485 pixels); 10000^2 only over its warning limit.
@pytest.mark.parametrize("side", [20_000, 10_000])
def test_imagefolder_decompression_bomb_is_refused(tmp_path: Path, monkeypatch, side: int) -> None:
    monkeypatch.setenv("CVLTH_CACHE", str(tmp_path / "cache"))
    bomb = _tree(tmp_path / "tree", png_header(side, side))
    with monkeypatch.context() as unlimited:  # what PIL sees without its limit: a huge image
        unlimited.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(bomb) as probe:
            assert probe.size == (side, side)
    before = file_hashes(tmp_path / "tree")
    refused = rf"imagefolder: {bomb} was refused as a decompression bomb.*{side * side}"
    with pytest.raises(DatasetError, match=refused):  # kept in memory: refused on load
        load_dataset("imagefolder", tmp_path / "tree", streaming=False, image_size=8)
    streamed = load_dataset("imagefolder", tmp_path / "tree", image_size=8, val_size=0).train
    index = [os.fsdecode(p) for p in streamed.paths].index(str(bomb))
    with pytest.raises(DatasetError, match=refused):  # streamed (the default): refused when read
        streamed.read(index)
    assert file_hashes(tmp_path / "tree") == before


def test_visda_and_voc_decompression_bombs_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "train" / "a" / "bomb.png"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(png_header(20_000, 20_000))
    (tmp_path / "train" / "image_list.txt").write_text("a/bomb.png 0\n")
    (tmp_path / "validation").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "validation" / "ok.png")
    (tmp_path / "validation" / "image_list.txt").write_text("ok.png 0\n")
    before = file_hashes(tmp_path)
    with pytest.raises(DatasetError, match=rf"visda2017: {bomb} was refused as a decompression bomb"):
        load_dataset("visda2017", tmp_path, streaming=False, cache=False, image_size=8)
    with pytest.raises(DatasetError, match=rf"voc: {bomb} was refused as a decompression bomb"):
        read_rgb(bomb)
    assert file_hashes(tmp_path) == before


def test_voc_annotation_entity_bomb_is_refused(tmp_path: Path) -> None:
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    xml = tmp_path / "bomb.xml"
    xml.write_text(f'<?xml version="1.0"?><!DOCTYPE a [{entities}]><annotation><x>&i;</x></annotation>')
    with pytest.raises(DatasetError, match=rf"malformed VOC annotation {xml}: limit on input amplification"):
        read_annotation(xml)


@pytest.mark.parametrize("entry", ["../outside.png", "ABSOLUTE"])
def test_visda_image_list_cannot_name_files_outside_its_folder(tmp_path: Path, entry: str) -> None:
    outside = tmp_path / "outside.png"
    Image.new("RGB", (4, 4)).save(outside)
    root = tmp_path / "visda"
    for split in ("train", "validation"):
        (root / split).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / split / "ok.png")
    named = str(outside) if entry == "ABSOLUTE" else entry
    (root / "train" / "image_list.txt").write_text(f"ok.png 0\n{named} 1\n")
    (root / "validation" / "image_list.txt").write_text("ok.png 0\n")
    with pytest.raises(DatasetError, match=r"line 2 names .*outside"):
        load_dataset("visda2017", root, cache=False, image_size=8)
