"""Streaming image folders (cvlth.data.streaming) against torchvision's own transforms.

Run as a script (``python tests/data/test_streaming.py TREE STORE``) it trains the tiny model on the
streamed tree in ``STORE``, SIGKILLed after step ``$CVLTH_TEST_KILL_AT_STEP`` when that is set;
``python tests/data/test_streaming.py --rss TREE`` reads one epoch of TREE and prints the peak RSS in KiB.
"""

from __future__ import annotations

import os
import resource
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvlth.data.registry import load_dataset
from cvlth.data.streaming import StreamingImageSet, sample_seed
from cvlth.errors import DatasetError
from streaming_fixtures import assert_resumes_bit_identical, resume_config, run_script, train_in_store

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared fixtures
CLASSES = ("ant", "bee", "cat", "dog")
SIZES = ((500, 375), (375, 500), (500, 333), (640, 480), (480, 640))  # (width, height), real photo sizes
RESUME_SIZE = 64  # crop size of the resume run: a cheap model, the crop still taken from the full image


def write_tree(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``split/<class>/NNN.jpg`` JPEGs of real sizes with smooth random content (JPEG-like statistics)."""
    rng = np.random.default_rng(seed)
    number = 0
    for split, count in per_class.items():
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                width, height = SIZES[number % len(SIZES)]
                coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
                image.save(root / split / name / f"{number:04d}.jpg", quality=90)
                number += 1
    return root


def enlarge(tree: Path, target: Path, copies: int) -> Path:
    """``copies`` hard links of every file of ``tree``: a tree ``copies`` times larger, no extra disk."""
    for path in tree.rglob("*.jpg"):
        folder = target / path.parent.relative_to(tree)
        folder.mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            os.link(path, folder / f"{path.stem}_{copy}.jpg")
    return target


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"), {"train": 40, "val": 10})  # 200 JPEGs


@pytest.fixture(scope="module")
def splits(tree):
    return load_dataset("imagefolder", tree, streaming=True, val_size=20)


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _paths(images: StreamingImageSet) -> list[Path]:
    return [Path(os.fsdecode(p)) for p in images.paths]


def _torchvision(transform, path: Path) -> torch.Tensor:
    from torchvision.transforms import PILToTensor

    return PILToTensor()(transform(_rgb(path)))


def test_registry_gives_streaming_splits(splits, tree) -> None:
    assert (len(splits.train), len(splits.val), len(splits.test)) == (140, 20, 40)
    assert splits.train.training and not splits.val.training and not splits.test.training
    assert splits.image_shape == (3, 224, 224) and splits.classes == list(CLASSES)
    assert sorted(_paths(splits.train) + _paths(splits.val)) == sorted((tree / "train").rglob("*.jpg"))
    assert [CLASSES[int(label)] for label in splits.test.labels] == [
        p.parent.name for p in _paths(splits.test)
    ]


def test_eval_transform_is_torchvisions_resize_centercrop(splits) -> None:
    from torchvision import transforms as tv

    reference = tv.Compose([tv.Resize(256), tv.CenterCrop(224)])
    expected = torch.stack([_torchvision(reference, path) for path in _paths(splits.test)])
    streamed = torch.cat([images for images, _ in splits.test.batches(16, shuffle=False).epoch_batches(0)])
    assert streamed.dtype == torch.uint8 and torch.equal(streamed, expected)


def test_train_transform_is_torchvisions_random_resized_crop_and_flip(splits) -> None:
    """Seeded with the sample's seed, torchvision's global-RNG transforms draw the same crop and flip."""
    from torchvision import transforms as tv

    reference = tv.Compose([tv.RandomResizedCrop(224), tv.RandomHorizontalFlip()])
    paths = _paths(splits.train)
    flips = set()
    for index in range(0, 140, 7):
        torch.manual_seed(sample_seed(5, 3, index))
        expected = _torchvision(reference, paths[index])
        assert torch.equal(splits.train.read(index, seed=5, epoch=3), expected), index
        flips.add(torch.equal(splits.train.read(index, seed=5, epoch=4), expected))
    assert flips == {False}  # another epoch, another crop


def _epoch(images: StreamingImageSet, seed: int, epoch: int, start: int = 0) -> list[torch.Tensor]:
    return [batch[0] for batch in images.batches(8, shuffle=True, seed=seed).epoch_batches(epoch, start)]


def test_order_is_a_function_of_seed_and_epoch(splits) -> None:
    """Read through the (deterministic) eval transform, each epoch is a permutation of the test set:
    the same for the same (seed, epoch), another for another seed or epoch; ``start`` skips batches."""
    test = splits.test.subset(torch.arange(24))
    singles = torch.stack([test.read(i) for i in range(len(test))]).flatten(1)

    def permutation(batches: list[torch.Tensor]) -> list[int]:
        rows = torch.cat(batches).flatten(1)
        return [int((singles == row).all(1).nonzero()[0]) for row in rows]

    first = permutation(_epoch(test, seed=0, epoch=0))
    assert sorted(first) == list(range(24)) and first != list(range(24))
    assert permutation(_epoch(test, seed=0, epoch=0)) == first
    assert permutation(_epoch(test, seed=1, epoch=0)) != first
    assert permutation(_epoch(test, seed=0, epoch=1)) != first
    assert permutation(_epoch(test, seed=0, epoch=0, start=2)) == first[16:]


def test_worker_processes_do_not_change_the_batches(splits) -> None:
    """Crops come from (seed, epoch, index), not from worker RNG: 2 workers give what 0 give."""
    subset = splits.train.subset(torch.arange(24))
    in_process = _epoch(subset, seed=4, epoch=1, start=1)
    in_workers = _epoch(replace(subset, workers=2), seed=4, epoch=1, start=1)
    assert len(in_process) == 2 and all(
        torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True)
    )


def test_a_broken_file_in_a_worker_is_a_dataset_error(tmp_path) -> None:
    root = write_tree(tmp_path, {"train": 2, "val": 1})
    broken = sorted((root / "val").rglob("*.jpg"))[1]
    broken.write_bytes(broken.read_bytes()[:200])
    test = load_dataset("imagefolder", root, streaming=True, val_size=1).test
    with pytest.raises(DatasetError, match=f"{broken}.*malformed") as caught:
        list(replace(test, workers=2).batches(2, shuffle=False).epoch_batches(0))
    assert caught.value.hint == "re-copy the file"


# --- subprocesses: resume after SIGKILL, peak memory ---------------------------------------------


def _train_streamed(tree: str, store_root: str) -> None:
    """8 steps per epoch (140 images, batch 16, last one dropped), 2 data workers."""
    from cvlth.objectives.supervised import SupervisedObjective

    torch.set_num_threads(1)
    data = load_dataset("imagefolder", tree, streaming=True, val_size=20, image_size=RESUME_SIZE)
    batches = replace(data.train, workers=2).batches(16, seed=7, drop_last=True)
    train_in_store(resume_config("imagefolder-stream"), store_root, SupervisedObjective(), batches, data)


@pytest.mark.slow
def test_killed_mid_epoch_resumes_bit_identical(tree, tmp_path) -> None:
    assert_resumes_bit_identical(__file__, tree, tmp_path, resume_config("imagefolder-stream"))


def _peak_rss_kib(tree: str) -> None:
    data = load_dataset("imagefolder", tree, streaming=True, val_size=0)
    images = replace(data.train, workers=0)  # read in this process
    count = sum(len(labels) for _, labels in images.batches(32, seed=0).epoch_batches(0))
    print(count, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_tree(tree, tmp_path) -> None:
    large = enlarge(tree, tmp_path / "large", copies=10)

    def peak(root: Path) -> tuple[int, int]:
        done = run_script(__file__, "--rss", str(root))
        assert done.returncode == 0, done.stderr
        count, kib = done.stdout.split()
        return int(count), int(kib) * 1024

    (small_count, small), (large_count, large_bytes) = peak(tree), peak(large)
    assert (small_count, large_count) == (160, 1600)
    in_memory = (large_count - small_count) * 3 * 224 * 224  # what keeping the crops would add: 217 MiB
    assert large_bytes - small < in_memory / 10, (small, large_bytes)


if __name__ == "__main__":
    if sys.argv[1] == "--rss":
        _peak_rss_kib(sys.argv[2])
    else:
        _train_streamed(*sys.argv[1:])


def test_train_crop_center_gives_training_images_the_evaluation_transform(tree) -> None:
    """For an objective that crops training images itself: no random crop in the loader."""
    from cvlth.data.registry import load_dataset

    cropped = load_dataset("imagefolder", tree, image_size=32, streaming=True, val_size=1)
    centred = load_dataset(
        "imagefolder", tree, image_size=32, streaming=True, val_size=1, train_crop="center"
    )
    images = [
        next(iter(s.train.batches(4, shuffle=False).epoch_batches(e)))[0] for s in (centred,) for e in (0, 1)
    ]
    assert torch.equal(images[0], images[1])  # deterministic across epochs: no random crop
    evaluated = next(iter(centred.val.batches(1, shuffle=False).epoch_batches(0)))[0]
    assert evaluated.shape[-2:] == images[0].shape[-2:] == (32, 32)
    random_epochs = [next(iter(cropped.train.batches(4, shuffle=False).epoch_batches(e)))[0] for e in (0, 1)]
    assert not torch.equal(random_epochs[0], random_epochs[1])
