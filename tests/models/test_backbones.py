"""Backbone builder (names, widths, stems) and transfer adaptation, checked against torchvision itself."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from cvlth.errors import CheckpointError, ConfigError
from cvlth.models.backbones import ARCHITECTURES, BackboneSpec, build_backbone, feature_dim
from cvlth.models.transfer import transfer_model
from cvlth.scope import iter_prunable


def _meta_state(builder, *args, **kwargs) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = builder(*args, **kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_full_width_backbone_has_torchvisions_keys_and_shapes(arch: str) -> None:
    ours = _meta_state(build_backbone, BackboneSpec(arch), 1000)
    reference = _meta_state(getattr(torchvision.models, arch))
    assert list(ours) == list(reference)  # same names, same order
    assert ours == reference


def _scaled(shape: tuple[int, ...], key: str, factor: int) -> tuple[int, ...]:
    """A torchvision shape with every channel dim divided by ``factor`` (not the RGB input nor fc's outputs)."""
    if key == "conv1.weight":
        return (shape[0] // factor, *shape[1:])
    if key == "fc.weight":
        return (shape[0], shape[1] // factor)
    if key == "fc.bias" or len(shape) == 0:
        return shape
    return tuple(d // factor if i < 2 else d for i, d in enumerate(shape))


@pytest.mark.parametrize(("arch", "width"), [("resnet18", 8), ("resnet50", 16)])
def test_width_multiplier_scales_every_channel_and_keeps_names(arch: str, width: int) -> None:
    ours = _meta_state(build_backbone, BackboneSpec(arch, width=width), 1000)
    reference = _meta_state(getattr(torchvision.models, arch))
    factor = 64 // width
    assert list(ours) == list(reference)
    assert ours == {k: _scaled(s, k, factor) for k, s in reference.items()}


def test_resnet50_prunable_count_matches_the_paper() -> None:
    with torch.device("meta"):
        model = build_backbone(BackboneSpec("resnet50"))
    prunable = list(iter_prunable(model))
    assert len(prunable) == 52
    assert sum(p.parameter.numel() for p in prunable) == 23_445_504


def test_stems_and_input_channels_change_only_the_stem() -> None:
    imagenet = build_backbone(BackboneSpec("resnet18", width=8), 10)
    cifar = build_backbone(BackboneSpec("resnet18", width=8, stem="cifar", in_channels=1), 10)
    assert (imagenet.conv1.kernel_size, imagenet.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert (cifar.conv1.kernel_size, cifar.conv1.stride, cifar.conv1.in_channels) == ((3, 3), (1, 1), 1)
    assert isinstance(cifar.maxpool, nn.Identity)
    # Same names, only conv1 differs in shape.
    a, b = imagenet.state_dict(), cifar.state_dict()
    assert list(a) == list(b)
    assert [k for k in a if a[k].shape != b[k].shape] == ["conv1.weight"]
    # Spatial reduction: imagenet stem /4 then /8 in the stages; cifar stem only /8.
    trunk = nn.Sequential(*list(cifar.children())[:-2])
    assert trunk(torch.randn(2, 1, 32, 32)).shape == (2, 64, 4, 4)
    assert imagenet(torch.randn(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize(
    ("spec", "dim"),
    [
        (BackboneSpec("resnet18"), 512),
        (BackboneSpec("resnet50"), 2048),
        (BackboneSpec("resnet50", width=16), 512),
        (BackboneSpec("resnet34", width=8), 64),
    ],
)
def test_feature_dim_is_fc_input(spec: BackboneSpec, dim: int) -> None:
    assert feature_dim(spec) == dim
    with torch.device("meta"):
        assert build_backbone(spec, 7).fc.in_features == dim


@pytest.mark.parametrize("kwargs", [{"arch": "resnet20"}, {"stem": "deep"}, {"width": 0}, {"in_channels": 0}])
def test_invalid_specs_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        BackboneSpec(**kwargs)


def test_dilation_and_norm_layer_pass_through() -> None:
    frozen = torchvision.ops.misc.FrozenBatchNorm2d
    model = build_backbone(
        BackboneSpec("resnet50", width=8), norm_layer=frozen, replace_stride_with_dilation=[False, True, True]
    )
    assert isinstance(model.bn1, frozen)
    assert model.layer4[1].conv2.dilation == (4, 4)  # block 0 keeps the previous dilation, as torchvision
    assert model.layer4[0].conv2.stride == (1, 1)


# --- transfer ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    model = build_backbone(BackboneSpec("resnet18", width=8), 1000)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_small_image_transfer_reinitialises_stem_and_head_and_loads_the_rest(pretrained) -> None:
    model = transfer_model(pretrained, None, 10, seed=3)
    state = model.state_dict()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.fc.out_features == 10
    loaded = [k for k in pretrained if not k.startswith(("conv1.", "fc."))]
    assert "bn1.running_mean" in loaded
    for key in loaded:
        assert torch.equal(state[key], pretrained[key]), key
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_transfer_new_tensors_depend_only_on_seed(pretrained) -> None:
    torch.manual_seed(123)
    a = transfer_model(pretrained, None, 10, seed=3).state_dict()
    torch.manual_seed(456)
    b = transfer_model(pretrained, None, 10, seed=3).state_dict()
    c = transfer_model(pretrained, None, 10, seed=4).state_dict()
    assert torch.equal(a["conv1.weight"], b["conv1.weight"]) and torch.equal(a["fc.weight"], b["fc.weight"])
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_transfer_to_grayscale_builds_a_one_channel_stem(pretrained) -> None:
    spec = BackboneSpec("resnet18", width=8, in_channels=1)
    model = transfer_model(pretrained, spec, 10)
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(CheckpointError, match="input channels"):
        transfer_model(pretrained, spec, 10, keep_stem=True)


def test_transfer_options_keep_stem_and_maxpool(pretrained) -> None:
    kept = transfer_model(pretrained, None, 10, keep_stem=True, keep_maxpool=True)
    assert torch.equal(kept.conv1.weight, pretrained["conv1.weight"])
    assert isinstance(kept.maxpool, nn.MaxPool2d)
    large = transfer_model(pretrained, None, 5, small_images=False)
    assert torch.equal(large.conv1.weight, pretrained["conv1.weight"])
    assert isinstance(large.maxpool, nn.MaxPool2d) and large.fc.out_features == 5
