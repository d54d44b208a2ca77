"""SimCLR / MoCo on streamed image folders: both views cropped from the full image by the loader.

Run as a script (``python tests/objectives/test_streamed_views.py TREE STORE``) it trains SimCLR on
the streamed view pairs of TREE in ``STORE``, SIGKILLed after step ``$CVLTH_TEST_KILL_AT_STEP``
when that is set.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from cvlth.config import ObjectiveRef
from cvlth.data import transforms as T
from cvlth.data.augment_pipelines import MOCO_V2_VIEW, SIMCLR_VIEW, ContrastiveView, contrastive_augment
from cvlth.data.geometric_transforms import horizontal_flip
from cvlth.data.photometric_transforms import color_jitter, random_gaussian_blur, random_grayscale
from cvlth.data.registry import load_dataset
from cvlth.data.source import TensorBatchSource
from cvlth.data.streaming import StreamingImageSet, sample_seed
from cvlth.errors import ConfigError, CvlthError
from cvlth.objectives.features import features
from cvlth.objectives.moco import MoCoObjective
from cvlth.objectives.simclr import SimCLRObjective, nt_xent
from cvlth.objectives.views import training_images, two_views
from data.test_streaming import write_tree
from streaming_fixtures import assert_resumes_bit_identical, resume_config, train_in_store

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared fixtures
SIZE = 64  # view size: cheap, and still a crop of the full 500x375 (etc.) JPEG
SIMCLR = ObjectiveRef(name="simclr", options={"crop_scale": [0.08, 1.0]})
MOCO = ObjectiveRef(name="moco")  # MoCo v2's default crop scale, 0.2-1


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"), {"train": 40, "val": 10})  # 200 JPEGs


@pytest.fixture(scope="module")
def splits(tree):
    return load_dataset("imagefolder", tree, streaming=True, val_size=20, image_size=SIZE)


def _path(images: StreamingImageSet, index: int) -> Path:
    return Path(os.fsdecode(images.paths[index]))


def _torchvision_views(path: Path, seed: int, scale: tuple[float, float]) -> torch.Tensor:
    """Two RandomResizedCrop.get_params draws from the global RNG seeded ``seed``, each cut out of
    the decoded full image by torchvision's resized_crop."""
    from torchvision.transforms import InterpolationMode, PILToTensor, RandomResizedCrop
    from torchvision.transforms import functional as TF

    with Image.open(path) as opened:
        full = opened.convert("RGB")
    torch.manual_seed(seed)
    views = []
    for _ in range(2):
        top, left, h, w = RandomResizedCrop.get_params(full, scale, (3 / 4, 4 / 3))
        view = TF.resized_crop(
            full, top, left, h, w, [SIZE, SIZE], InterpolationMode.BILINEAR, antialias=True
        )
        views.append(PILToTensor()(view))
    return torch.stack(views)


# --- the loader's pairs ----------------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "scale"), [(SIMCLR, (0.08, 1.0)), (MOCO, (0.2, 1.0))])
def test_each_view_is_torchvisions_resized_crop_of_the_full_image(splits, ref, scale) -> None:
    pairs = training_images(ref, splits.train)
    assert pairs.view_scale == scale and pairs.paths is splits.train.paths
    for index in range(0, 140, 13):
        streamed = pairs.read(index, seed=5, epoch=3)
        expected = _torchvision_views(_path(pairs, index), sample_seed(5, 3, index), scale)
        assert streamed.dtype == torch.uint8 and streamed.shape == (2, 3, SIZE, SIZE)
        assert torch.equal(streamed, expected), index
        assert not torch.equal(streamed[0], streamed[1]), index  # two independent crops


def test_views_are_a_function_of_seed_epoch_and_index(splits) -> None:
    pairs = training_images(SIMCLR, splits.train)
    first = torch.stack([pairs.read(i, seed=5, epoch=0) for i in range(6)])
    assert torch.equal(first, torch.stack([pairs.read(i, seed=5, epoch=0) for i in range(6)]))
    for seed, epoch in ((6, 0), (5, 1)):  # another run seed, another epoch: other crops of every image
        other = torch.stack([pairs.read(i, seed=seed, epoch=epoch) for i in range(6)])
        assert all(not torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_batches_of_pairs_in_workers_are_those_read_in_process(splits) -> None:
    pairs = training_images(SIMCLR, splits.train).subset(torch.arange(24))
    order = TensorBatchSource(torch.arange(24), batch_size=8, seed=4).order(1)  # the epoch's order
    expected = torch.stack([pairs.read(int(i), seed=4, epoch=1) for i in order[8:]])
    batches = list(replace(pairs, workers=2).batches(8, seed=4).epoch_batches(1, start=1))
    images = torch.cat([batch[0] for batch in batches])
    assert images.shape == (16, 2, 3, SIZE, SIZE) and torch.equal(images, expected)
    assert torch.equal(torch.cat([batch[1] for batch in batches]), pairs.labels[order[8:]])


def test_a_study_trains_contrastive_objectives_on_pairs(splits) -> None:
    """The study's batches (cvlth.runs.execute): training ones are pairs for SimCLR / MoCo only."""
    from cvlth.runs.training import batches as _batches

    first = next(iter(_batches(splits, "train", 4, seed=3, objective=MOCO).epoch_batches(0)))[0]
    assert first.shape == (4, 2, 3, SIZE, SIZE)
    supervised = _batches(splits, "train", 4, seed=3, objective=ObjectiveRef(name="supervised"))
    evaluation = _batches(splits, "val", 4)
    assert [next(iter(b.epoch_batches(0)))[0].shape for b in (supervised, evaluation)] == [
        (4, 3, SIZE, SIZE)
    ] * 2


def test_other_objectives_and_in_memory_sets_are_left_alone(splits) -> None:
    from cvlth.data.classification import ImageSet

    assert training_images(ObjectiveRef(name="supervised"), splits.train) is splits.train
    in_memory = ImageSet(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ["a"])
    assert training_images(SIMCLR, in_memory) is in_memory  # cropped by the objective, as before
    assert training_images(SIMCLR, splits.train).evaluation().view_scale is None


def test_configs_this_path_cannot_do_are_config_errors(tree, splits) -> None:
    centred = load_dataset(
        "imagefolder", tree, streaming=True, val_size=1, image_size=SIZE, train_crop="center"
    )
    with pytest.raises(ConfigError, match="centre-cropped") as caught:
        training_images(MOCO, centred.train)
    assert "remove `train_crop: center`" in caught.value.hint
    for bad in ([1.0, 0.5], [0.0, 1.0], [0.5], "big"):
        with pytest.raises(ConfigError, match="crop_scale") as caught:
            training_images(ObjectiveRef(name="simclr", options={"crop_scale": bad}), splits.train)
        assert "0 < low <= high" in caught.value.hint


# --- the objectives on pairs ---------------------------------------------------------------------


def _by_hand(views: torch.Tensor, generator: torch.Generator, view: ContrastiveView, normalization):
    """The contrastive view after its crop, step by step with the transforms' own functions."""
    x = horizontal_flip(T.to_float(views), generator, p=view.flip_p)
    x = color_jitter(x, generator, *view.jitter, p=view.jitter_p)
    x = random_grayscale(x, generator, p=view.grayscale_p)
    x = random_gaussian_blur(x, generator, view.blur_p, view.blur_sigma, view.blur_kernel)
    return T.normalize(x, *normalization)


def _pairs(n: int = 8, side: int = 16) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 2, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )


def test_pre_cropped_pairs_are_not_cropped_again() -> None:
    pairs = _pairs()
    identity = ContrastiveView(scale=(0.08, 0.1), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    augment = contrastive_augment(None, identity)
    first, second = two_views(augment, pairs, torch.Generator().manual_seed(0))
    assert torch.equal(first, T.to_float(pairs[:, 0])) and torch.equal(second, T.to_float(pairs[:, 1]))
    cropped = augment(pairs[:, 0], torch.Generator().manual_seed(0))  # a 4-D batch is cropped
    assert not torch.allclose(cropped, first)
    with pytest.raises(CvlthError, match="after_crop"):  # an augmentation that cannot skip its crop
        two_views(lambda images, generator: images, pairs, torch.Generator())


def test_simclr_on_pairs_is_the_rest_of_the_view_by_hand() -> None:
    from ssl_fixtures import NarrowResNet

    torch.manual_seed(0)
    model = NarrowResNet(in_channels=3)
    normalization = ((0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
    augment = contrastive_augment(normalization, SIMCLR_VIEW)
    objective = SimCLRObjective(64, projection_dim=8, augment=augment)
    objective.bind(model)
    pairs = _pairs()
    loss, _ = objective.train_step(model, (pairs, torch.zeros(8)), torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    views = [_by_hand(pairs[:, v], generator, SIMCLR_VIEW, normalization) for v in (0, 1)]
    z1, z2 = objective.head(features(model, torch.cat(views))).chunk(2)
    assert torch.equal(loss, nt_xent(z1, z2, 0.5))


def test_moco_on_pairs_is_the_rest_of_the_view_by_hand() -> None:
    from ssl_fixtures import NarrowResNet

    torch.manual_seed(0)
    model = NarrowResNet(in_channels=3)
    normalization = ((0.5,) * 3, (0.25,) * 3)
    augment = contrastive_augment(normalization, MOCO_V2_VIEW)
    objective = MoCoObjective(64, dim=8, queue_size=32, augment=augment, key_bn_groups=2).bind(model)
    reference = copy.deepcopy(objective)
    pairs = _pairs()
    loss, _ = objective.train_step(model, (pairs,), torch.Generator().manual_seed(3))
    generator = torch.Generator().manual_seed(3)
    view1, view2 = (_by_hand(pairs[:, v], generator, MOCO_V2_VIEW, normalization) for v in (0, 1))
    keys, _ = reference.keys(view2, generator)
    expected, _ = reference.info_nce(reference.query(model, view1), keys)
    assert torch.equal(loss, expected)


# --- resume after SIGKILL --------------------------------------------------------------------------


def _train_streamed(tree: str, store_root: str) -> None:
    """SimCLR on streamed view pairs: 8 steps per epoch (140 images, batch 16), 2 data workers."""
    from cvlth.objectives.registry import build_objective

    torch.set_num_threads(1)
    data = load_dataset("imagefolder", tree, streaming=True, val_size=20, image_size=SIZE)
    pairs = replace(training_images(SIMCLR, data.train), workers=2)
    objective = build_objective(SIMCLR, feature_dim=8, data=data, seed=1)
    config = resume_config("imagefolder-stream-views")
    train_in_store(config, store_root, objective, pairs.batches(16, seed=7, drop_last=True), data)


@pytest.mark.slow
def test_killed_mid_epoch_resumes_bit_identical(tree, tmp_path) -> None:
    assert_resumes_bit_identical(__file__, tree, tmp_path, resume_config("imagefolder-stream-views"))


if __name__ == "__main__":
    _train_streamed(*sys.argv[1:])
