"""Batch augmentations against hand computations and torchvision's per-image functional ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from cvlth.data import transforms as T

N = 16


def _images(channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (N, channels, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def _gen(seed: int = 5) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_to_float_and_normalize_match_torchvision() -> None:
    x = _images()
    assert torch.equal(T.to_float(x), x.float() / 255) and T.to_float(x).dtype == torch.float32
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    assert torch.allclose(
        T.normalize(x, mean, std), TF.normalize(x.float() / 255, list(mean), list(std)), atol=1e-6
    )


def test_random_crop_equals_hand_computed_crop() -> None:
    x = _images()
    out = T.random_crop(x, _gen(), padding=4)
    assert out.shape == x.shape and out.dtype == torch.uint8
    g = _gen()  # same draws, same order: row offsets, then column offsets
    top, left = torch.randint(9, (N,), generator=g), torch.randint(9, (N,), generator=g)
    padded = torch.zeros((N, 3, 40, 40), dtype=torch.uint8)
    padded[:, :, 4:36, 4:36] = x
    for i in range(N):
        t, le = int(top[i]), int(left[i])
        assert torch.equal(out[i], padded[i, :, t : t + 32, le : le + 32])
    assert len(set(zip(top.tolist(), left.tolist(), strict=True))) > 1


def test_horizontal_flip_really_flips() -> None:
    x = _images()
    out = T.horizontal_flip(x, _gen(), p=0.5)
    chosen = torch.rand(N, generator=_gen()) < 0.5
    assert 0 < int(chosen.sum()) < N
    assert torch.equal(out[chosen], torch.flip(x[chosen], dims=[-1]))
    assert torch.equal(out[~chosen], x[~chosen])


def test_resized_crop_of_an_integer_box_is_a_plain_crop() -> None:
    x = _images()
    boxes = torch.tensor([[3.0, 5.0, 12.0, 20.0]]).expand(N, 4)  # top, left, h, w
    out = T.resized_crop(x, boxes, (12, 20))
    assert torch.equal(out, x[:, :, 3:15, 5:25])
    # The full box at the same size is the identity; as float too.
    assert torch.allclose(
        T.random_resized_crop(T.to_float(x), _gen(), 32, scale=(1, 1), ratio=(1, 1)), T.to_float(x)
    )


def test_resized_crop_resizes_like_bilinear_interpolate() -> None:
    x = T.to_float(_images())
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(N, 4)
    expected = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(T.resized_crop(x, full, (48, 48)), expected, atol=1e-5)


def test_random_resized_crop_boxes_follow_scale_and_ratio() -> None:
    boxes = T._resized_crop_boxes(_gen(), 2000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() > 0.05 and area.max() <= 1.0 and area.std() > 0.1
    aspect = w / h
    assert aspect.min() > 0.6 and aspect.max() < 1.7  # 3/4..4/3 up to rounding to whole pixels
    out = T.random_resized_crop(_images(), _gen(), 24)
    assert out.shape == (N, 3, 24, 24) and out.dtype == torch.uint8


def test_color_jitter_matches_torchvision_functional_ops() -> None:
    x = T.to_float(_images())
    b, c, s, h = 0.4, 0.4, 0.4, 0.1
    out = T.color_jitter(x, _gen(), b, c, s, h, p=0.8)
    g = _gen()  # replay the draws: 4 factors per image, then which images are jittered
    factors, applied = torch.rand((4, N), generator=g), torch.rand(N, generator=g) < 0.8
    assert 0 < int(applied.sum()) < N
    for i in range(N):
        if not applied[i]:
            assert torch.equal(out[i], x[i])
            continue
        f = factors[:, i].tolist()
        y = TF.adjust_brightness(x[i], 1 - b + 2 * b * f[0])
        y = TF.adjust_contrast(y, 1 - c + 2 * c * f[1])
        y = TF.adjust_saturation(y, 1 - s + 2 * s * f[2])
        y = TF.adjust_hue(y, (2 * f[3] - 1) * h)
        assert torch.allclose(out[i], y, atol=3e-4), i  # float32 summation order only


def test_color_jitter_one_channel_is_brightness_and_contrast() -> None:
    x = T.to_float(_images(channels=1))
    out = T.color_jitter(x, _gen(), 0.5, 0.5, 0.5, 0.5, p=1.0)
    factors = torch.rand((4, N), generator=_gen())
    for i in range(N):
        y = TF.adjust_contrast(
            TF.adjust_brightness(x[i], 0.5 + factors[0, i].item()), 0.5 + factors[1, i].item()
        )
        assert torch.allclose(out[i], y, atol=3e-4)
    as_uint8 = T.color_jitter(_images(channels=1), _gen(), p=1.0)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (N, 1, 32, 32)


def test_random_grayscale_matches_torchvision() -> None:
    x = _images()
    out = T.random_grayscale(x, _gen(), p=0.5)
    chosen = torch.rand(N, generator=_gen()) < 0.5
    expected = TF.rgb_to_grayscale(x.float() / 255, num_output_channels=3)
    assert torch.allclose(out[chosen].float() / 255, expected[chosen], atol=1 / 255 + 1e-6)
    assert torch.equal(out[~chosen], x[~chosen])
    one = _images(channels=1)
    assert torch.equal(T.random_grayscale(one, _gen(), p=1.0), one)


@pytest.mark.parametrize("channels", [1, 3])
def test_pipelines_keep_shapes_dtypes_and_ranges(channels: int) -> None:
    x = _images(channels)
    mean, std = (0.5,) * channels, (0.25,) * channels
    for pipeline in (
        T.simclr_augment(32, mean, std),
        T.cifar_augment(mean, std),
        T.supervised_augment(24, mean, std),
    ):
        out = pipeline(x, _gen())
        assert out.dtype == torch.float32 and out.shape[:2] == (N, channels)
        assert out.min() >= -2.0 - 1e-6 and out.max() <= 2.0 + 1e-6  # (0 - .5)/.25 .. (1 - .5)/.25
        assert torch.equal(out, pipeline(x, _gen()))  # one generator state, one result
    for op in (lambda a, g: T.random_crop(a, g), T.horizontal_flip, T.color_jitter, T.random_grayscale):
        y = op(x, _gen())
        assert y.dtype == torch.uint8 and y.shape == x.shape
        z = op(T.to_float(x), _gen())
        assert z.dtype == torch.float32 and z.min() >= 0 and z.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_result_on_gpu_with_a_cpu_generator() -> None:
    x = _images()
    pipeline = T.simclr_augment(32, (0.5,) * 3, (0.25,) * 3)
    assert torch.allclose(pipeline(x.cuda(), _gen()).cpu(), pipeline(x, _gen()), atol=1e-4)
    cuda_generator = torch.Generator(device="cuda").manual_seed(0)
    assert pipeline(x.cuda(), cuda_generator).device.type == "cuda"
