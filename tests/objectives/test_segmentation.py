"""The segmentation objective's training and evaluation views (scale, crop, pad, flip; eval crop)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from cvlth.config import ObjectiveRef
from cvlth.data.samples import SampleSplits, sample_batches
from cvlth.data.segmentation_transforms import draw_scale_crop
from cvlth.errors import ConfigError
from cvlth.objectives.registry import build_objective, objective_option_defaults
from cvlth.objectives.segmentation import SegmentationObjective

MEAN, STD = (0.5, 0.25, 0.0), (0.5, 0.5, 0.5)


class _Recorder(nn.Module):
    """Keeps what it was fed; its logits (4 classes) are ``c * x[:, 0]`` for class ``c``, so the
    loss depends on where each label pixel lies relative to the image."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach())
        return _logits(x) + self.bias


def _logits(x: torch.Tensor) -> torch.Tensor:
    return x[:, :1] * torch.arange(4.0).view(1, 4, 1, 1)


def _batch():
    generator = torch.Generator().manual_seed(0)
    shapes = [(30, 44), (50, 26)]
    images = [torch.randint(0, 256, (3, *s), dtype=torch.uint8, generator=generator) for s in shapes]
    labels = [torch.randint(0, 4, s, dtype=torch.uint8, generator=generator) for s in shapes]
    return images, labels


def _normalized(image: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(MEAN).view(-1, 1, 1)
    return (image.float() / 255 - mean) / torch.tensor(STD).view(-1, 1, 1)


def test_train_step_feeds_scaled_padded_cropped_flipped_samples():
    images, labels = _batch()
    objective = SegmentationObjective(4, MEAN, STD, crop_size=40, scale_range=[0.5, 2.0], image_pad="mean")
    model = _Recorder()
    loss, _ = objective.train_step(model, (images, [{"semantic": lab} for lab in labels]), _seeded(7))
    # The same draws, by hand: per sample scale, top, left; then one flip coin per sample.
    generator = _seeded(7)
    geometries = [draw_scale_crop(*i.shape[-2:], 40, generator, (0.5, 2.0)) for i in images]
    flips = (torch.rand(2, generator=generator) < 0.5).tolist()
    views, view_labels = [], []
    for index, (image, label, geometry) in enumerate(zip(images, labels, geometries, strict=True)):
        size = [geometry.height, geometry.width]
        scaled = TF.resize(image.float(), size, InterpolationMode.BILINEAR, antialias=True).round()
        scaled_label = TF.resize(label[None], size, InterpolationMode.NEAREST_EXACT)
        padding = [0, 0, max(0, 40 - size[1]), max(0, 40 - size[0])]
        view = TF.crop(
            TF.pad(scaled.to(torch.uint8), padding, fill=[128, 64, 0]), geometry.top, geometry.left, 40, 40
        )
        view_label = TF.crop(TF.pad(scaled_label, padding, fill=255), geometry.top, geometry.left, 40, 40)[0]
        if flips[index]:
            view, view_label = TF.horizontal_flip(view), TF.horizontal_flip(view_label)
        views.append(_normalized(view))
        view_labels.append(view_label)
    assert torch.allclose(model.inputs[0], torch.stack(views), atol=1e-6)
    assert any(min(g.height, g.width) < 40 for g in geometries)  # this seed pads a sample
    assert any(max(g.height, g.width) > 40 for g in geometries)  # ... and crops one
    assert sum(int((lab == 255).sum()) for lab in view_labels) > 0  # padding: 255, ignored below
    expected = F.cross_entropy(_logits(torch.stack(views)), torch.stack(view_labels).long(), ignore_index=255)
    assert torch.isclose(loss, expected, atol=1e-6)


def test_mean_padding_normalises_to_zero():
    image = torch.full((3, 10, 10), 200, dtype=torch.uint8)
    label = torch.zeros((10, 10), dtype=torch.uint8)
    objective = SegmentationObjective(4, MEAN, (0.2, 0.2, 0.2), crop_size=16, image_pad="mean", flip=0.0)
    model = _Recorder()
    objective.train_step(model, ([image], [{"semantic": label}]), _seeded(0))
    fed = model.inputs[0][0]
    # A 10x10 image padded to 16: rows/columns 10.. are the mean, i.e. within half a grey level of 0.
    assert (
        fed[:, 10:].abs().max() <= 0.5 / 255 / 0.2 + 1e-6
        and fed[:, :, 10:].abs().max() <= 0.5 / 255 / 0.2 + 1e-6
    )
    assert torch.allclose(fed[:, :10, :10], _normalized_with(image[:, :10, :10], (0.2, 0.2, 0.2)), atol=1e-6)


def _normalized_with(image: torch.Tensor, std) -> torch.Tensor:
    return (image.float() / 255 - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def test_evaluation_with_eval_crop_sees_the_resized_centre():
    images, labels = _batch()
    objective = SegmentationObjective(4, MEAN, STD, eval_crop=24)
    model = _Recorder().eval()
    samples = [(i, {"semantic": lab}) for i, lab in zip(images, labels, strict=True)]
    result = objective.evaluate(model, sample_batches(samples, 2, shuffle=False))
    fed = model.inputs[0]
    assert tuple(fed.shape) == (2, 3, 24, 24)
    for index, image in enumerate(images):
        resized = TF.resize(image.float(), 24, InterpolationMode.BILINEAR, antialias=True).round()
        assert torch.allclose(fed[index], _normalized(TF.center_crop(resized, [24, 24])), atol=1e-6)
    # Predictions are argmax_c c * x[:, 0]: class 3 where the normalised red channel is positive, else 0.
    views = [
        TF.center_crop(TF.resize(lab[None], 24, InterpolationMode.NEAREST_EXACT), [24, 24]) for lab in labels
    ]
    predicted = torch.where(fed[:, 0] > 0, 3, 0)
    stacked = torch.cat(views)
    assert result["pixel_accuracy"] == pytest.approx(float((predicted == stacked).float().mean()))


def test_full_image_evaluation_is_unchanged_by_default():
    images, labels = _batch()
    model = _Recorder().eval()
    samples = [(i, {"semantic": lab}) for i, lab in zip(images, labels, strict=True)]
    SegmentationObjective(4, MEAN, STD).evaluate(model, sample_batches(samples, 2, shuffle=False))
    assert tuple(model.inputs[0].shape) == (2, 3, 50, 44)  # padded to the batch's largest H and W
    assert torch.allclose(model.inputs[0][0, :, :30, :44], _normalized(images[0]), atol=1e-6)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"scale_range": [0.5, 2.0]}, "needs crop_size"),
        ({"crop_size": 32, "scale_range": [2.0, 0.5]}, "scale_range"),
        ({"crop_size": 32, "scale_range": [0.5]}, "scale_range"),
        ({"crop_size": 0}, "crop_size"),
        ({"eval_crop": -1}, "eval_crop"),
        ({"image_pad": "edge"}, "image_pad"),
    ],
)
def test_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        SegmentationObjective(4, MEAN, STD, **options)


def test_registry_takes_yaml_options_and_its_defaults_are_the_old_behaviour():
    defaults = objective_option_defaults("segmentation")
    assert defaults == {
        "flip": 0.5,
        "crop_size": None,
        "scale_range": None,
        "image_pad": "zero",
        "eval_crop": None,
    }
    data = SampleSplits(
        "toy", [], None, [], ["background", "a", "b", "c"], MEAN, STD, ("segmentation",), (3, 8, 8)
    )
    ref = ObjectiveRef(
        name="segmentation", options={"crop_size": 513, "scale_range": [0.5, 2.0], "eval_crop": 513}
    )
    objective = build_objective(ref, feature_dim=0, data=data)
    assert isinstance(objective, SegmentationObjective)
    assert (objective.crop_size, objective.scale_range, objective.eval_crop) == (513, (0.5, 2.0), 513)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
