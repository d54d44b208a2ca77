"""Objectives built from configs: options checked, heads independent of the global RNG."""

import pytest
import torch

from cvlth.config import ObjectiveRef
from cvlth.data.classification import DatasetSplits, ImageSet
from cvlth.errors import ConfigError
from cvlth.objectives.registry import OBJECTIVES, OBJECTIVES_WITH_HEADS, build_objective


def _data() -> DatasetSplits:
    images = ImageSet(
        torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ["a", "b"]
    )
    return DatasetSplits("tiny", images, images, images, mean=(0.5,), std=(0.25,))


def _head_state(name: str, global_seed: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(global_seed)  # e.g. another process, or other work done before in this one
    objective = build_objective(ObjectiveRef(name=name), feature_dim=16, data=_data(), seed=seed)
    return {
        f"{m}.{k}": v for m, module in objective.modules().items() for k, v in module.state_dict().items()
    }


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_heads_depend_on_the_seed_only(name):
    first, second = _head_state(name, 1, seed=0), _head_state(name, 2, seed=0)
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _head_state(name, 1, seed=5)
    assert not all(torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_the_objectives_with_heads_are_those_whose_built_objective_has_modules():
    built = {
        name: build_objective(ObjectiveRef(name=name), feature_dim=16, data=_data()) for name in OBJECTIVES
    }
    assert {name for name, objective in built.items() if objective.modules()} == set(OBJECTIVES_WITH_HEADS)


def test_unknown_objective_and_bad_option_name_the_problem():
    with pytest.raises(ConfigError, match="unknown objective"):
        build_objective(ObjectiveRef(name="nope"), feature_dim=16, data=_data())
    with pytest.raises(ConfigError, match="bad options"):
        build_objective(
            ObjectiveRef(name="simclr", options={"temprature": 0.1}), feature_dim=16, data=_data()
        )


def _images(channels: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (4, channels, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _rgb_data() -> DatasetSplits:
    images = ImageSet(_images(3), torch.zeros(4, dtype=torch.int64), ["a", "b"])
    return DatasetSplits("rgb", images, images, images, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))


def _preprocess(normalize, data):
    options = {} if normalize is None else {"normalize": normalize}
    objective = build_objective(ObjectiveRef(name="supervised", options=options), feature_dim=16, data=data)
    return objective.preprocess(data.train.images, None)


def test_normalize_option_of_the_supervised_objective():
    rgb = _rgb_data()
    raw = rgb.train.images.float() / 255
    by_hand = {
        None: (raw - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2,  # the dataset's by default
        "none": raw,
        "imagenet": (raw - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
        "dataset": (raw - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2,
        # the reference code's CIFAR-10 constants
        "cifar": (raw - torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
        / torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1),
    }
    for option, expected in by_hand.items():
        given = (
            {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]}
            if option == "cifar"
            else option
        )
        assert torch.allclose(_preprocess(given, rgb), expected, atol=1e-5), option
    gray = _data()  # 1 channel: ImageNet's constants averaged, a single given value used as is
    raw1 = gray.train.images.float() / 255
    assert torch.allclose(_preprocess("imagenet", gray), (raw1 - 0.449) / 0.226, atol=1e-5)
    assert torch.allclose(_preprocess({"mean": [0.1436], "std": [0.1609]}, gray), (raw1 - 0.1436) / 0.1609)
    for bad in (
        "imagnet",
        {"mean": [0.1, 0.2], "std": [0.3, 0.4]},
        {"mean": [0.1], "std": [0.0]},
        {"mean": [0.1]},
    ):
        with pytest.raises(ConfigError, match="normalize"):
            _preprocess(bad, gray)


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_contrastive_options_reach_the_view(name):
    data = _rgb_data()
    off = {"crop_scale": [1.0, 1.0], "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0}
    objective = build_objective(
        ObjectiveRef(name=name, options={**off, "normalize": "none"}), feature_dim=16, data=data
    )
    x = data.train.images
    view = objective.augment(x, torch.Generator().manual_seed(0))
    assert torch.allclose(view, x.float() / 255, atol=1e-5)  # nothing random left, no normalisation
    blurred = build_objective(
        ObjectiveRef(name=name, options={**off, "blur_p": 1.0, "blur_kernel": 3, "normalize": "none"}),
        feature_dim=16,
        data=data,
    ).augment(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(blurred, view, atol=1e-3)
    with pytest.raises(ConfigError, match="bad options"):
        build_objective(ObjectiveRef(name=name, options={"blur": 0.5}), feature_dim=16, data=data)


def test_supervised_resized_crop_scale_option():
    data = _rgb_data()
    x = data.train.images
    options = {"augment": "resized_crop", "crop_scale": [1.0, 1.0], "flip": False, "normalize": "none"}
    objective = build_objective(ObjectiveRef(name="supervised", options=options), feature_dim=16, data=data)
    # Whole-area crops of square images are the images themselves (only the square ratio fits).
    assert torch.allclose(objective.augment(x, torch.Generator().manual_seed(0)), x.float() / 255, atol=1e-5)
    options["crop_scale"] = [0.08, 0.1]
    objective = build_objective(ObjectiveRef(name="supervised", options=options), feature_dim=16, data=data)
    assert not torch.allclose(
        objective.augment(x, torch.Generator().manual_seed(0)), x.float() / 255, atol=1e-2
    )
