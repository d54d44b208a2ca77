"""Batch augmentations against hand computations and torchvision's per-image functional ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from cvlth.data import transforms as T
from cvlth.data.augment_pipelines import (
    MOCO_V2_VIEW,
    SIMCLR_VIEW,
    ContrastiveView,
    contrastive_augment,
)
from cvlth.data.geometric_transforms import (
    _resized_crop_boxes,
    horizontal_flip,
    random_crop,
    random_resized_crop,
    resized_crop,
)
from cvlth.data.photometric_transforms import (
    apply_color_jitter,
    blur_params,
    color_jitter,
    gaussian_blur,
    jitter_params,
    random_gaussian_blur,
    random_grayscale,
    simclr_kernel_size,
)

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
    out = random_crop(x, _gen(), padding=4)
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
    out = horizontal_flip(x, _gen(), p=0.5)
    chosen = torch.rand(N, generator=_gen()) < 0.5
    assert 0 < int(chosen.sum()) < N
    assert torch.equal(out[chosen], torch.flip(x[chosen], dims=[-1]))
    assert torch.equal(out[~chosen], x[~chosen])


def test_resized_crop_of_an_integer_box_is_a_plain_crop() -> None:
    x = _images()
    boxes = torch.tensor([[3.0, 5.0, 12.0, 20.0]]).expand(N, 4)  # top, left, h, w
    out = resized_crop(x, boxes, (12, 20))
    assert torch.equal(out, x[:, :, 3:15, 5:25])
    # The full box at the same size is the identity; as float too.
    assert torch.allclose(
        random_resized_crop(T.to_float(x), _gen(), 32, scale=(1, 1), ratio=(1, 1)), T.to_float(x)
    )


def test_resized_crop_resizes_like_bilinear_interpolate() -> None:
    x = T.to_float(_images())
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).expand(N, 4)
    expected = F.interpolate(x, size=(48, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(resized_crop(x, full, (48, 48)), expected, atol=1e-5)


def test_random_resized_crop_boxes_follow_scale_and_ratio() -> None:
    boxes = _resized_crop_boxes(_gen(), 2000, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3))
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = h * w / 1024
    assert area.min() > 0.05 and area.max() <= 1.0 and area.std() > 0.1
    aspect = w / h
    assert aspect.min() > 0.6 and aspect.max() < 1.7  # 3/4..4/3 up to rounding to whole pixels
    out = random_resized_crop(_images(), _gen(), 24)
    assert out.shape == (N, 3, 24, 24) and out.dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_color_jitter_matches_torchvision_functional_ops(dtype) -> None:
    x = _images() if dtype == torch.uint8 else T.to_float(_images())
    b, c, s, h = 0.8, 0.8, 0.8, 0.2  # SimCLR's strength: factors 0.2..1.8, hue shifts up to 0.2
    params = jitter_params(_gen(), N, b, c, s, h, p=0.8)
    out = apply_color_jitter(x, params)
    assert torch.equal(out, color_jitter(x, _gen(), b, c, s, h, p=0.8))  # same draws
    assert 0 < int(params.applied.sum()) < N
    # Parameters in torchvision's ranges; hue shifts of both signs.
    assert ((params.factors[:3] >= 0.2) & (params.factors[:3] <= 1.8)).all()
    hue = params.factors[3]
    assert hue.abs().max() <= 0.2 and hue.min() < 0 < hue.max()
    for i in range(N):
        if not params.applied[i]:
            assert torch.equal(out[i], x[i])
            continue
        f = params.factors[:, i].tolist()
        y = TF.adjust_brightness(T.to_float(x[i]), f[0])
        y = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(y, f[1]), f[2]), f[3])
        if dtype == torch.uint8:  # computed in float, rounded once (torchvision rounds every op)
            assert (out[i].float() - (255 * y).round()).abs().max() <= 1, i
        else:
            assert torch.allclose(out[i], y, atol=3e-4), i  # float32 summation order only


def test_color_jitter_one_channel_is_brightness_and_contrast() -> None:
    x = T.to_float(_images(channels=1))
    params = jitter_params(_gen(), N, 0.5, 0.5, 0.5, 0.5, p=1.0)
    out = apply_color_jitter(x, params)
    for i in range(N):  # saturation and hue do not apply to one channel (and do not crash)
        f = params.factors[:, i].tolist()
        assert torch.allclose(out[i], TF.adjust_contrast(TF.adjust_brightness(x[i], f[0]), f[1]), atol=3e-4)
    as_uint8 = color_jitter(_images(channels=1), _gen(), p=1.0)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (N, 1, 32, 32)


def test_random_grayscale_matches_torchvision() -> None:
    x = _images()
    out = random_grayscale(x, _gen(), p=0.5)
    chosen = torch.rand(N, generator=_gen()) < 0.5
    expected = TF.rgb_to_grayscale(x.float() / 255, num_output_channels=3)
    assert torch.allclose(out[chosen].float() / 255, expected[chosen], atol=1 / 255 + 1e-6)
    assert torch.equal(out[~chosen], x[~chosen])
    one = _images(channels=1)
    assert torch.equal(random_grayscale(one, _gen(), p=1.0), one)


@pytest.mark.parametrize("channels", [1, 3])
def test_pipelines_keep_shapes_dtypes_and_ranges(channels: int) -> None:
    x = _images(channels)
    mean, std = (0.5,) * channels, (0.25,) * channels
    for pipeline in (
        contrastive_augment((mean, std), size=32),
        contrastive_augment((mean, std), MOCO_V2_VIEW, size=24),
    ):
        out = pipeline(x, _gen())
        assert out.dtype == torch.float32 and out.shape[:2] == (N, channels) and torch.isfinite(out).all()
        assert out.min() >= -2.0 - 1e-6 and out.max() <= 2.0 + 1e-6  # (0 - .5)/.25 .. (1 - .5)/.25
        assert torch.equal(out, pipeline(x, _gen()))  # one generator state, one result
    ops = (lambda a, g: random_crop(a, g), horizontal_flip, color_jitter, random_grayscale)
    for op in (*ops, lambda a, g: random_gaussian_blur(a, g, p=0.5, kernel_size=5)):
        y = op(x, _gen())
        assert y.dtype == torch.uint8 and y.shape == x.shape
        z = op(T.to_float(x), _gen())
        assert z.dtype == torch.float32 and z.min() >= 0 and z.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_same_result_on_gpu_with_a_cpu_generator() -> None:
    x = _images()
    pipeline = contrastive_augment(((0.5,) * 3, (0.25,) * 3))
    assert torch.allclose(pipeline(x.cuda(), _gen()).cpu(), pipeline(x, _gen()), atol=1e-4)
    cuda_generator = torch.Generator(device="cuda").manual_seed(0)
    assert pipeline(x.cuda(), cuda_generator).device.type == "cuda"


# --- Gaussian blur ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("channels", "kernel"), [(3, 23), (3, 3), (1, 7)])
def test_gaussian_blur_matches_torchvision_per_image(channels: int, kernel: int) -> None:
    x8 = _images(channels, size=40)
    x = T.to_float(x8)
    sigma = torch.linspace(0.1, 2.0, N)  # SimCLR's range, one sigma per image
    out, out8 = gaussian_blur(x, sigma, kernel), gaussian_blur(x8, sigma, kernel)
    assert out8.dtype == torch.uint8
    for i in range(N):
        s = [sigma[i].item()] * 2
        assert torch.allclose(out[i], TF.gaussian_blur(x[i], [kernel, kernel], s), atol=1e-5), i
        expected8 = TF.gaussian_blur(x8[i], [kernel, kernel], s)
        assert (out8[i].int() - expected8.int()).abs().max() <= 1, i


def test_random_gaussian_blur_applies_drawn_parameters() -> None:
    x = T.to_float(_images(size=32))
    params = blur_params(_gen(), N, (0.1, 2.0), p=0.5)
    assert ((params.sigma >= 0.1) & (params.sigma <= 2.0)).all() and 0 < int(params.applied.sum()) < N
    out = random_gaussian_blur(x, _gen(), p=0.5)  # same draws; kernel 10% of 32 px -> 3
    for i in range(N):
        expected = TF.gaussian_blur(x[i], [3, 3], [params.sigma[i].item()] * 2) if params.applied[i] else x[i]
        assert torch.allclose(out[i], expected, atol=1e-5), i
    assert [simclr_kernel_size(s) for s in (224, 32, 28, 19)] == [23, 3, 3, 1]
    small = x[:, :, :8, :8]
    assert torch.equal(random_gaussian_blur(small, _gen(), p=1.0), small)  # kernel 1: no blur


# --- probabilities (fixed generators, many images) ---------------------------------------------------


def _assert_rate(applied: torch.Tensor, p: float) -> None:
    n = applied.numel()
    assert abs(applied.float().mean().item() - p) <= 4 * (p * (1 - p) / n) ** 0.5


@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_probabilities_are_met(p: float) -> None:
    n = 20_000
    _assert_rate(jitter_params(_gen(1), n, p=p).applied, p)
    _assert_rate(blur_params(_gen(2), n, p=p).applied, p)
    # Grayscale and flip: count the images the op changed (all channels equal / mirrored).
    x = _images(size=8)[:1].expand(n, 3, 8, 8)
    gray = random_grayscale(x, _gen(3), p=p)
    _assert_rate(((gray[:, 0] == gray[:, 1]) & (gray[:, 1] == gray[:, 2])).flatten(1).all(1), p)
    _assert_rate((horizontal_flip(x, _gen(4), p=p) != x).flatten(1).any(1), p)
    # The pipeline's blur: with everything else off, changed images are blurred ones (sigma >= 1:
    # sigma 0.1 leaves an image as it is).
    only_blur = ContrastiveView(
        scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=p, blur_sigma=(1.0, 2.0)
    )
    xf = T.to_float(_images(size=32)[:1]).expand(4000, 3, 32, 32)
    views = contrastive_augment(None, only_blur)(xf, _gen(5))
    _assert_rate(((views - xf).abs() > 1e-3).flatten(1).any(1), p)


def test_contrastive_views_without_normalisation_stay_raw() -> None:
    x = _images()
    identity = ContrastiveView(scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    assert torch.allclose(contrastive_augment(None, identity)(x, _gen()), T.to_float(x), atol=1e-5)
    normalised = contrastive_augment(((0.5,), (0.25,)), identity)(x, _gen())
    assert torch.allclose(normalised, (T.to_float(x) - 0.5) / 0.25, atol=1e-4)
    view = contrastive_augment(None)(x, _gen())  # SimCLR's full view, unnormalised: pixels in [0, 1]
    assert view.min() >= 0 and view.max() <= 1 and view.shape == (N, 3, 32, 32)


def test_the_views_are_the_papers() -> None:
    simclr = ContrastiveView((0.08, 1.0), 0.5, (0.8, 0.8, 0.8, 0.2), 0.8, 0.2, 0.5, (0.1, 2.0), None)
    moco = ContrastiveView((0.2, 1.0), 0.5, (0.4, 0.4, 0.4, 0.1), 0.8, 0.2, 0.5, (0.1, 2.0), None)
    assert simclr == SIMCLR_VIEW and moco == MOCO_V2_VIEW
