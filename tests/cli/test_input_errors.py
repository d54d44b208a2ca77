"""Faulty inputs end in one clear error line (exit 2), never a traceback or silent damage.

Every CLI case checks the exit code, that no traceback is printed, the message, and that the input
files are byte-for-byte unchanged (sha256 before and after).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from cvlth.cli import run_cli
from cvlth.errors import ConfigError
from cvlth.masks import Mask
from cvlth.runs.kinds import load_config
from cvlth.study.config import builtin_study_path
from hostile_fixtures import cli_error, file_hashes


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    return torchvision.models.resnet18().state_dict()


@pytest.fixture
def checkpoint(tmp_path: Path, resnet18_state) -> Path:
    path = tmp_path / "v.pth"
    torch.save(resnet18_state, path)
    return path


def _small_mask() -> Mask:
    generator = torch.Generator().manual_seed(0)
    return Mask(
        {
            name: torch.rand(shape, generator=generator) < 0.5
            for name, shape in {"a": (3, 5), "b": (4,)}.items()
        }
    )


def _rewrite(path: Path, packed: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    save_file({n: t.contiguous() for n, t in packed.items()}, str(path), metadata=metadata)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {n: handle.get_tensor(n) for n in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


# --- 3. duplicate keys in YAML configs ------------------------------------------------------------


def test_duplicate_key_in_a_study_names_key_and_lines(tmp_path: Path, capsys) -> None:
    study = tmp_path / "dup.yaml"
    study.write_text(builtin_study_path("smoke").read_text() + "rounds: 5\n")
    first = 1 + builtin_study_path("smoke").read_text().splitlines().index("rounds: 2")
    last = len(study.read_text().splitlines())
    before = file_hashes(study)
    line = cli_error(["study", str(study), "--plan", "--store", str(tmp_path / "store")], capsys)
    assert line == f"error: {study}: refused: duplicate key 'rounds' at line {last} (first at line {first})"
    assert file_hashes(study) == before and not (tmp_path / "store").exists()


def test_duplicate_nested_key_in_a_run_config(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("kind: train\ndata:\n  name: cifar10\n  root: a\n  root: b\n")
    with pytest.raises(
        ConfigError, match=rf"{config}: refused: duplicate key 'root' at line 5 \(first at line 4\)"
    ):
        load_config(config)


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("base: &b {name: cifar10, root: a}\nkind: train\ndata:\n  <<: *b\n  root: c\n")
    with pytest.raises(ConfigError, match="base: unknown field"):  # parsed; only validation complains
        load_config(config)


# --- 4. an empty class folder -------------------------------------------------------------------


def test_empty_class_folder_is_an_error(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CVLTH_CACHE", str(tmp_path / "cache"))
    for split in ("train", "val"):
        for name in ("a", "b", "c"):
            (tmp_path / split / name).mkdir(parents=True)
            if (split, name) != ("train", "b"):
                Image.new("RGB", (4, 4)).save(tmp_path / split / name / "x.png")
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    before = file_hashes(tmp_path)
    line = cli_error(["datasets", "show", "imagefolder", "--root", str(tmp_path)], capsys)
    assert f"class folder {tmp_path / 'train' / 'b'} holds no images" in line
    assert file_hashes(tmp_path) == before and not (tmp_path / "cache").exists()


# --- 5. outputs never overwrite inputs, nor existing files without --force -----------------------


def test_prune_refuses_to_overwrite_its_input(checkpoint: Path, capsys) -> None:
    before = file_hashes(checkpoint)
    for extra in ([], ["--force"]):
        args = ["prune", str(checkpoint), "--sparsity", "0.5", "--out", str(checkpoint), *extra]
        line = cli_error(args, capsys)
        assert f"--out {checkpoint} is an input of this command" in line
    assert file_hashes(checkpoint) == before


def test_prune_needs_force_to_overwrite_and_refuses_a_directory(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "old.safetensors"
    out.write_bytes(b"precious")
    before = file_hashes(tmp_path)  # the checkpoint and the existing file
    args = ["prune", str(checkpoint), "--sparsity", "0.5", "--out"]
    assert cli_error([*args, str(out)], capsys) == f"error: --out {out} already exists"
    assert cli_error([*args, str(tmp_path)], capsys) == f"error: --out {tmp_path} is a directory"
    assert file_hashes(tmp_path) == before
    assert run_cli([*args, str(out), "--force"]) == 0
    assert Mask.load(out).sparsity == pytest.approx(0.5, abs=1e-6)
    assert file_hashes(checkpoint) == {checkpoint: before[checkpoint]}


# --- 6. non-finite weights ----------------------------------------------------------------------


def test_non_finite_weights_are_refused(tmp_path: Path, resnet18_state, capsys) -> None:
    poisoned = dict(resnet18_state)
    names = ["conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer2.0.conv1.weight"]
    names += ["layer3.0.conv1.weight", "layer4.0.conv1.weight", "fc.bias"]
    for index, name in enumerate(names):
        poisoned[name] = poisoned[name].clone()
        poisoned[name].view(-1)[index] = float("nan") if index % 2 else float("inf")
    path = tmp_path / "bad.pth"
    torch.save(poisoned, path)
    before = file_hashes(tmp_path)
    shown = ", ".join(names[:5])  # the first five in the checkpoint's order
    for args in (
        ["inspect", str(path)],
        ["prune", str(path), "-s", "0.5", "-o", str(tmp_path / "m.safetensors")],
    ):
        line = cli_error(args, capsys)
        assert line == f"error: {path}: 7 tensor(s) hold NaN or Inf values: {shown} and 2 more"
    assert file_hashes(tmp_path) == before  # and no mask was written


# --- 7. mask checksum -----------------------------------------------------------------------------


def test_mask_checksum_is_sha256_of_packed_bits_in_name_order(tmp_path: Path) -> None:
    mask = _small_mask()
    path = mask.save(tmp_path / "m.safetensors")
    _, metadata = _read(path)
    expected = hashlib.sha256(
        b"".join(np.packbits(mask[n].numpy().reshape(-1), bitorder="little").tobytes() for n in ["a", "b"])
    ).hexdigest()
    assert metadata["bits_sha256"] == expected


def test_altered_bits_with_unchanged_sparsity_are_refused(tmp_path: Path, capsys) -> None:
    mask = _small_mask()
    path = mask.save(tmp_path / "m.safetensors")
    packed, metadata = _read(path)
    bits = np.unpackbits(packed["a"].numpy(), bitorder="little")[:15]
    kept, pruned = int(np.flatnonzero(bits)[0]), int(np.flatnonzero(bits == 0)[0])
    bits[kept], bits[pruned] = 0, 1  # same count, other weights
    packed["a"] = torch.from_numpy(np.packbits(bits, bitorder="little"))
    _rewrite(path, packed, metadata)
    before = file_hashes(path)
    line = cli_error(["mask", "show", str(path)], capsys)
    assert (
        line
        == f"error: {path}: the mask bits do not match the file's bits_sha256 checksum (altered or corrupted)"
    )
    assert file_hashes(path) == before


def test_mask_files_without_a_checksum_still_load(tmp_path: Path, capsys) -> None:
    mask = _small_mask()
    path = mask.save(tmp_path / "m.safetensors", method="magnitude")
    packed, metadata = _read(path)
    del metadata["bits_sha256"]  # as cvlth wrote cvlth-mask/1 files before the checksum
    _rewrite(path, packed, metadata)
    assert Mask.load(path) == mask
    assert run_cli(["mask", "show", str(path)]) == 0 and "method: magnitude" in capsys.readouterr().out


# --- 8. other faulty arguments --------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[-1, -8], [-8], [2.5, 2], ["3"]])
def test_mask_with_bad_dimensions_is_refused(tmp_path: Path, capsys, shape: list) -> None:
    path = tmp_path / "neg.safetensors"
    metadata = {"format": "cvlth-mask/1", "shapes": json.dumps({"a": shape}), "sparsity": "0.0"}
    _rewrite(path, {"a": torch.full((1,), 255, dtype=torch.uint8)}, metadata)
    before = file_hashes(path)
    line = cli_error(["mask", "show", str(path)], capsys)
    assert line == (
        f"error: {path}: metadata 'shapes' gives a the shape {shape}; "
        "dimensions must be non-negative integers (corrupted)"
    )
    assert file_hashes(path) == before


def test_a_directory_where_a_file_is_expected(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "dir.pth"
    folder.mkdir()
    out = tmp_path / "m.safetensors"
    assert (
        cli_error(["inspect", str(folder)], capsys)
        == f"error: {folder} is a directory, not a checkpoint file"
    )
    assert (
        cli_error(["mask", "show", str(folder)], capsys) == f"error: {folder} is a directory, not a mask file"
    )
    line = cli_error(["prune", str(folder), "-s", "0.5", "-o", str(out)], capsys)
    assert line == f"error: {folder} is a directory, not a checkpoint file" and not out.exists()
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize(
    ("device", "gpus", "message"),
    [
        ("cuda", 0, "--device cuda: no CUDA GPU is visible on this machine"),
        ("cuda:3", 2, "--device cuda:3: this machine has 2 CUDA GPU(s), numbered 0..1"),
        ("gpu", 0, "--device 'gpu' is not a device"),
    ],
)
def test_study_device_is_checked_before_anything_runs(
    tmp_path: Path, capsys, monkeypatch, device: str, gpus: int, message: str
) -> None:
    # Stand in for a machine with ``gpus`` GPUs, whatever this one has.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    store = tmp_path / "store"
    line = cli_error(["study", "smoke", "--device", device, "--store", str(store), "--quiet"], capsys)
    assert line == f"error: {message}" and not store.exists()
