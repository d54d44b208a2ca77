"""Segmentation geometry against torchvision.transforms.v2.functional on the same drawn parameters."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from cvlth.data.segmentation_transforms import (
    apply_scale_crop,
    draw_scale_crop,
    mean_fill,
    pad_pair,
    random_scale_crop,
    resize_center_crop,
    resize_pair,
)


def _pair(height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    label = torch.randint(0, 21, (height, width), dtype=torch.uint8, generator=generator)
    label[: height // 4] = 255  # a void band, as VOC's borders
    return image, label


def _torchvision_scale_pad_crop(image, label, size, top, left, crop, fill):
    """The reference pipeline spelled with torchvision: resize, pad bottom/right, crop."""
    height, width = size
    float_image = TF.resize(image.float(), [height, width], InterpolationMode.BILINEAR, antialias=True)
    image = float_image.round().clamp(0, 255).to(torch.uint8)
    label = TF.resize(label[None], [height, width], InterpolationMode.NEAREST_EXACT)
    padding = [0, 0, max(0, crop - width), max(0, crop - height)]  # left, top, right, bottom
    image = TF.pad(image, padding, fill=fill)
    label = TF.pad(label, padding, fill=255)
    return TF.crop(image, top, left, crop, crop), TF.crop(label, top, left, crop, crop)[0]


def test_scale_pad_crop_equals_torchvision_on_the_drawn_parameters():
    image, label = _pair(37, 50)
    crop, padded, cropped = 41, 0, 0
    for seed in range(12):
        geometry = draw_scale_crop(37, 50, crop, torch.Generator().manual_seed(seed), (0.5, 2.0))
        got_image, got_label = apply_scale_crop(image, label, geometry, crop)
        size = (geometry.height, geometry.width)
        want_image, want_label = _torchvision_scale_pad_crop(
            image, label, size, geometry.top, geometry.left, crop, 0
        )
        assert got_image.dtype == torch.uint8 and tuple(got_image.shape) == (3, crop, crop)
        assert torch.equal(got_image, want_image) and torch.equal(got_label, want_label)
        # torchvision's own uint8 path (native on CPU) agrees to within rounding.
        native = TF.resize(image, list(size), InterpolationMode.BILINEAR, antialias=True)
        scaled, _ = resize_pair(image, label, *size)
        assert (native.int() - scaled.int()).abs().max() <= 1
        padded += min(size) < crop
        cropped += max(size) > crop
    assert padded and cropped  # both branches were exercised


def test_random_scale_crop_is_draw_then_apply_with_a_per_channel_fill():
    image, label = _pair(30, 20, seed=1)
    fill = (128, 64, 0)
    got = random_scale_crop(image, label, 36, torch.Generator().manual_seed(5), (0.5, 2.0), fill)
    geometry = draw_scale_crop(30, 20, 36, torch.Generator().manual_seed(5), (0.5, 2.0))
    want = _torchvision_scale_pad_crop(
        image, label, (geometry.height, geometry.width), geometry.top, geometry.left, 36, list(fill)
    )
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_draws_stay_in_range_and_without_a_scale_are_the_plain_crop():
    for seed in range(20):
        geometry = draw_scale_crop(100, 60, 64, torch.Generator().manual_seed(seed), (0.5, 2.0))
        assert 50 <= geometry.height <= 200 and 30 <= geometry.width <= 120
        assert abs(geometry.width / 60 - geometry.height / 100) < 1 / 60  # one factor, truncated
        assert 0 <= geometry.top <= max(64, geometry.height) - 64
        assert 0 <= geometry.left <= max(64, geometry.width) - 64
    # No scale range: top then left, each uniform over the padded image's valid offsets.
    generator = torch.Generator().manual_seed(3)
    top = int(torch.randint(100 - 64 + 1, (1,), generator=generator))
    left = int(torch.randint(64 - 64 + 1, (1,), generator=generator))
    plain = draw_scale_crop(100, 60, 64, torch.Generator().manual_seed(3))
    assert (plain.height, plain.width, plain.top, plain.left) == (100, 60, top, left)


def test_labels_are_resized_nearest_and_padded_with_255():
    image = torch.zeros((1, 2, 2), dtype=torch.uint8)
    label = torch.tensor([[1, 2], [3, 255]], dtype=torch.uint8)
    _, doubled = resize_pair(image, label, 4, 4)
    by_hand = torch.tensor(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 255, 255], [3, 3, 255, 255]], dtype=torch.uint8
    )
    assert torch.equal(doubled, by_hand)
    _, three = resize_pair(image, label, 3, 3)  # a non-integer factor still never blends classes
    assert set(three.unique().tolist()) <= {1, 2, 3, 255}
    padded_image, padded_label = pad_pair(image + 7, label, 3, 4, fill=(9,))
    assert torch.equal(padded_label[:2, :2], label) and (padded_label[2:] == 255).all()
    assert (padded_label[:, 2:] == 255).all()
    assert (padded_image[0, :2, :2] == 7).all() and (padded_image[0, 2:] == 9).all()


def test_mean_fill_is_the_uint8_mean():
    assert mean_fill((0.5, 0.25, 0.0)) == (128, 64, 0)  # 127.5 rounds to even: 128


@pytest.mark.parametrize("shape", [(30, 45), (45, 30), (20, 20), (20, 33), (33, 20)])
def test_evaluation_view_equals_torchvision_resize_and_center_crop(shape):
    # 20x33 becomes 24x39: its centre anchor is 7.5, which torchvision rounds (to 8).
    image, label = _pair(*shape, seed=2)
    got_image, got_label = resize_center_crop(image, label, 24)
    resized = TF.resize(image.float(), 24, InterpolationMode.BILINEAR, antialias=True).round().to(torch.uint8)
    want_image = TF.center_crop(resized, [24, 24])
    want_label = TF.center_crop(TF.resize(label[None], 24, InterpolationMode.NEAREST_EXACT), [24, 24])[0]
    assert tuple(got_image.shape) == (3, 24, 24)
    assert torch.equal(got_image, want_image) and torch.equal(got_label, want_label)
