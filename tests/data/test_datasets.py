"""Each official on-disk format, written tiny by hand, read back through the registry."""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvlth.cli import run_cli
from cvlth.data.array_formats import read_idx
from cvlth.data.classification import default_val_size
from cvlth.data.registry import DATASETS, load_dataset
from cvlth.errors import DatasetError


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- writers of the official formats --------------------------------------------------------------


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def _write_cifar10(root: Path, per_batch: int = 20, test: int = 10) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    rng = _rng()
    data = rng.integers(0, 256, (5 * per_batch, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, 5 * per_batch)
    for i in range(5):
        chunk = slice(i * per_batch, (i + 1) * per_batch)
        # The official batches have bytes keys (pickled under Python 2).
        _pickle(folder / f"data_batch_{i + 1}", {b"data": data[chunk], b"labels": labels[chunk].tolist()})
    test_data = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    _pickle(folder / "test_batch", {b"data": test_data, b"labels": list(range(test))})
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return {"data": data, "labels": labels, "test_data": test_data}


def _idx_bytes(array: np.ndarray) -> bytes:
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fashion(root: Path, n_train: int = 60, n_test: int = 10, gz: bool = True) -> dict[str, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = _rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for stem, array in arrays.items():
        if gz:
            (root / f"{stem}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (root / stem).write_bytes(_idx_bytes(array))
    return arrays


# --- CIFAR ----------------------------------------------------------------------------------------


def test_cifar10_reads_pickled_batches_with_paper_style_split(tmp_path: Path) -> None:
    written = _write_cifar10(tmp_path)
    splits = load_dataset("cifar10", tmp_path, seed=3)
    n = 100
    assert (len(splits.train), len(splits.val), len(splits.test)) == (n - n // 10, n // 10, 10)
    assert splits.train.images.dtype == torch.uint8 and splits.image_shape == (3, 32, 32)
    assert splits.classes == [f"c{i}" for i in range(10)] and splits.num_classes == 10
    # Row-major 3072 = 3 x 32 x 32 planes (R then G then B), as the CIFAR page documents.
    expected_test = torch.from_numpy(written["test_data"]).view(-1, 3, 32, 32)
    assert torch.equal(splits.test.images, expected_test)
    assert splits.test.labels.tolist() == list(range(10))
    # train + val are exactly the 100 training images, each with its own label.
    everything = torch.cat([splits.train.images, splits.val.images]).view(n, -1)
    labels = torch.cat([splits.train.labels, splits.val.labels])
    original = torch.from_numpy(written["data"])
    order = [int(np.nonzero((written["data"] == row.numpy()).all(1))[0][0]) for row in everything]
    assert sorted(order) == list(range(n))
    assert torch.equal(everything, original[order]) and labels.tolist() == written["labels"][order].tolist()


def test_split_is_seeded_and_deterministic(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    a, b, c = (load_dataset("cifar10", tmp_path, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert len(load_dataset("cifar10", tmp_path, val_size=25).val) == 25


def test_paper_val_sizes() -> None:
    assert default_val_size(50_000) == 5000  # CIFAR: 45k / 5k
    assert 73_257 - default_val_size(73_257) == 68_257  # SVHN
    assert 60_000 - default_val_size(60_000) == 55_000  # Fashion-MNIST
    assert default_val_size(120) == 12  # fixtures: a tenth


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    rng = _rng(2)
    train = rng.integers(0, 256, (30, 3072), dtype=np.uint8)
    fine = rng.integers(0, 100, 30)
    _pickle(folder / "train", {b"data": train, b"fine_labels": fine.tolist(), b"coarse_labels": [0] * 30})
    _pickle(
        folder / "test", {b"data": train[:5], b"fine_labels": [99, 0, 1, 2, 3], b"coarse_labels": [0] * 5}
    )
    _pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    splits = load_dataset("cifar100", tmp_path, val_size=0)
    assert splits.num_classes == 100 and splits.classes[99] == "f99"
    assert splits.train.labels.tolist() == fine.tolist()
    assert splits.test.labels.tolist() == [99, 0, 1, 2, 3]


def test_missing_cifar_files_are_listed(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", tmp_path)
    message = str(caught.value)
    assert "cifar10" in message and "data_batch_3" in message and str(tmp_path) in message
    assert "batches.meta" in message  # the full list of expected files


def test_malformed_cifar_batch(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="test_batch is malformed: not a python pickle"):
        load_dataset("cifar10", tmp_path)
    _pickle(
        tmp_path / "cifar-10-batches-py" / "test_batch",
        {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},
    )
    with pytest.raises(DatasetError, match=r"\(N, 3072\)"):
        load_dataset("cifar10", tmp_path)


# --- SVHN -----------------------------------------------------------------------------------------


def test_svhn_mat_layout_and_label_ten_is_zero(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = _rng(3)
    x = rng.integers(0, 256, (32, 32, 3, 40), dtype=np.uint8)
    y = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 4, dtype=np.uint8).reshape(-1, 1)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :7], "y": y[:7]})
    splits = load_dataset("svhn", tmp_path, val_size=0)
    assert splits.train.labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 4
    assert splits.test.images.shape == (7, 3, 32, 32)
    # Image k, channel c, row r, column q is X[r, q, c, k].
    assert int(splits.train.images[5, 2, 7, 11]) == int(x[7, 11, 2, 5])
    assert torch.equal(splits.train.images[0].permute(1, 2, 0), torch.from_numpy(x[..., 0]))
    assert len(load_dataset("svhn", tmp_path).val) == 4


def test_svhn_missing_and_malformed(tmp_path: Path) -> None:
    from scipy.io import savemat

    with pytest.raises(DatasetError, match=r"svhn: missing train_32x32.mat, test_32x32.mat in"):
        load_dataset("svhn", tmp_path)
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))})
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DatasetError, match="32x32x3xN"):
        load_dataset("svhn", tmp_path)


# --- Fashion-MNIST (IDX) --------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path: Path, gz: bool) -> None:
    arrays = _write_fashion(tmp_path, gz=gz)
    splits = load_dataset("fashion_mnist", tmp_path, val_size=0)
    assert splits.image_shape == (1, 28, 28) and splits.classes[9] == "Ankle boot"
    assert torch.equal(splits.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert splits.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    padded = load_dataset("fashion_mnist", tmp_path, val_size=0, image_size=32)
    assert padded.image_shape == (1, 32, 32)
    assert torch.equal(padded.train.images[:, :, 2:30, 2:30], splits.train.images)  # zero-padded, not resized
    assert padded.train.images[:, :, :2].sum() == 0


def test_idx_bad_magic_and_truncation(tmp_path: Path) -> None:
    arrays = _write_fashion(tmp_path, gz=False)
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DatasetError, match="bad magic number"):
        read_idx(path)
    data = _idx_bytes(arrays["t10k-images-idx3-ubyte"])
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(
        DatasetError, match=r"t10k-images-idx3-ubyte is malformed: header says dims \(10, 28, 28\)"
    ):
        load_dataset("fashion_mnist", tmp_path)


def test_fashion_mnist_missing_names_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion_mnist", tmp_path)
    assert "train-images-idx3-ubyte[.gz]" in str(caught.value) and "t10k-labels-idx1-ubyte[.gz]" in str(
        caught.value
    )


def test_world_upstream_missing_says_apt_get(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("world_upstream", tmp_path)


# --- image folders --------------------------------------------------------------------------------


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagefolder_tree_resized_and_cached(tmp_path: Path) -> None:
    root, cache = tmp_path / "tree", tmp_path / "cache"
    colors = {"ant": (255, 0, 0), "bee": (0, 0, 255)}
    for split, count in (("train", 10), ("val", 2)):
        for name, color in colors.items():
            for i in range(count):
                _png(root / split / name / f"{i}.png", color)
    splits = load_dataset("imagefolder", root, streaming=False, image_size=16, cache_dir=cache, val_size=4)
    assert splits.classes == ["ant", "bee"] and splits.image_shape == (3, 16, 16)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 4)
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16)
    for images, labels in (
        (splits.train.images, splits.train.labels),
        (splits.test.images, splits.test.labels),
    ):
        assert torch.equal(images[labels == 0], red.expand(int((labels == 0).sum()), 3, 16, 16))
    assert len(list(cache.rglob("*.safetensors"))) == 2
    (root / "train" / "ant" / "0.png").write_bytes(b"garbage")  # the cache must not hide a changed file
    with pytest.raises(DatasetError, match=r"0.png is malformed: not a readable image"):
        load_dataset("imagefolder", root, streaming=False, image_size=16, cache_dir=cache)


def test_imagefolder_empty(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"imagefolder: no images found in .*train; expected"):
        load_dataset("imagefolder", tmp_path, cache=False)


def test_visda_image_lists(tmp_path: Path) -> None:
    for split, color in (("train", (0, 255, 0)), ("validation", (0, 0, 255))):
        lines = []
        for i in range(6):
            _png(tmp_path / split / f"cls{i % 3}" / f"{i}.jpg", color, (30, 30))
            lines.append(f"cls{i % 3}/{i}.jpg {i % 3}")
        (tmp_path / split / "image_list.txt").write_text("\n".join(lines) + "\n")
    splits = load_dataset("visda2017", tmp_path, streaming=False, image_size=8, cache=False, val_size=1)
    assert splits.num_classes == 12 and splits.classes[0] == "aeroplane"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (5, 1, 6)
    assert splits.test.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert splits.test.images.shape == (6, 3, 8, 8)
    blue = splits.test.images.float().mean((0, 2, 3))  # JPEG: approximately pure blue
    assert blue[2] > 240 and blue[:2].max() < 15
    (tmp_path / "validation" / "image_list.txt").write_text("cls0/0.jpg\n")
    with pytest.raises(DatasetError, match=r"line 1 is 'cls0/0.jpg', expected 'relative/path.jpg label'"):
        load_dataset("visda2017", tmp_path, cache=False)


# --- registry and CLI -----------------------------------------------------------------------------


def test_registry_names_and_option_errors(tmp_path: Path) -> None:
    expected = {"cifar10", "cifar100", "svhn", "fashion_mnist", "imagefolder", "visda2017"}
    assert expected | {"world_upstream", "world_mnist", "world_digits"} <= set(DATASETS)
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(DatasetError, match="cifar10 has no option colour"):
        load_dataset("cifar10", tmp_path, colour=True)


def test_cli_show_and_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_fashion(tmp_path / "fashion_mnist")
    assert run_cli(["datasets", "show", "fashion_mnist", "--root", str(tmp_path / "fashion_mnist")]) == 0
    out = capsys.readouterr().out
    assert "train 54  val 6  test 10" in out and "(1, 28, 28)" in out and "Ankle boot" in out
    assert run_cli(["datasets", "show", "svhn", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "svhn: not found in" in err and str(tmp_path / "test_32x32.mat") in err


def test_cli_lists_availability(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("CVLTH_DATA", str(tmp_path))
    _write_fashion(tmp_path / "fashion_mnist")
    assert run_cli(["datasets"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if "│" in line}
    assert "yes" in rows["fashion_mnist"] and "no" in rows["cifar10"] and "yes" in rows["world_digits"]


def test_val_split_last_takes_the_last_training_images() -> None:
    """The reference code's split: the last N training images are validation (paper: 5,000)."""
    from cvlth.data.classification import ImageSet, split_train_val

    images = torch.arange(20, dtype=torch.uint8).reshape(20, 1, 1, 1)
    full = ImageSet(images, torch.arange(20), [str(i) for i in range(20)])
    train, val = split_train_val(full, 5, seed=3, val_split="last")
    assert val.labels.tolist() == [15, 16, 17, 18, 19] and train.labels.tolist() == list(range(15))
    _, random_val = split_train_val(full, 5, seed=3)
    assert random_val.labels.tolist() != [15, 16, 17, 18, 19]


def test_fashion_mnist_falls_back_to_debians_package(tmp_path: Path, monkeypatch, capsys) -> None:
    """`cvlth datasets` says fashion_mnist is there when only Debian's files are (as world_upstream
    reads them); a folder of the user's under $CVLTH_DATA still comes first."""
    from cvlth.data import registry

    system = tmp_path / "usr-share"
    _write_fashion(system)
    spec = dataclasses.replace(registry.DATASETS["fashion_mnist"], system_root=system)
    monkeypatch.setitem(registry.DATASETS._items, "fashion_mnist", spec)
    monkeypatch.setenv("CVLTH_DATA", str(tmp_path / "data"))
    assert registry.resolve_root("fashion_mnist") == system
    assert run_cli(["datasets"]) == 0
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if "│" in line}
    assert "yes" in rows["fashion_mnist"]
    _write_fashion(tmp_path / "data" / "fashion_mnist")
    assert registry.resolve_root("fashion_mnist") == tmp_path / "data" / "fashion_mnist"
