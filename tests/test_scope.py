import pytest
import torch
import torchvision
from torch import nn

from cvlth.scope import (
    Scope,
    iter_prunable,
    prunable_parameters,
    prunable_state,
    strip_wrappers,
)


@pytest.fixture(scope="module")
def resnet50() -> nn.Module:
    return torchvision.models.resnet50()


def test_resnet50_prunable_count(resnet50):
    params = prunable_parameters(resnet50)
    assert len(params) == 52
    assert sum(p.numel() for p in params.values()) == 23_445_504
    # Independent count: every Conv2d except the stem.
    convs = [m for n, m in resnet50.named_modules() if isinstance(m, nn.Conv2d) and n != "conv1"]
    assert sum(m.weight.numel() for m in convs) == 23_445_504


def test_scope_excludes_stem_bn_fc_and_includes_downsample(resnet50):
    names = set(prunable_parameters(resnet50))
    assert "conv1.weight" not in names
    assert "layer1.0.downsample.0.weight" in names
    assert "layer3.1.conv2.weight" in names
    assert not any("bn" in n or n.startswith("fc") or "downsample.1" in n for n in names)


def test_include_stem_and_exclude_patterns(resnet50):
    with_stem = prunable_parameters(resnet50, Scope(include_stem=True))
    assert "conv1.weight" in with_stem and len(with_stem) == 53
    no_layer4 = prunable_parameters(resnet50, Scope(exclude=("layer4.*",)))
    assert not any(n.startswith("layer4") for n in no_layer4)
    assert len(no_layer4) == 52 - 10  # layer4: 3 blocks x 3 convs + downsample
    no_down = prunable_parameters(resnet50, Scope(exclude=("*.downsample.0.weight",)))
    assert len(no_down) == 48


@pytest.mark.parametrize(
    "wrapped, canonical",
    [
        ("module.layer1.0.conv1.weight", "layer1.0.conv1.weight"),
        ("module.encoder_q.layer2.1.conv2.weight", "layer2.1.conv2.weight"),
        ("encoder_k.layer4.0.downsample.0.weight", "layer4.0.downsample.0.weight"),
        ("backbone.body.layer3.5.conv3.weight", "layer3.5.conv3.weight"),
        ("backbone.layer1.0.conv1.weight", "layer1.0.conv1.weight"),
        ("layer1.0.conv1.weight", "layer1.0.conv1.weight"),
    ],
)
def test_strip_wrappers(wrapped, canonical):
    assert strip_wrappers(wrapped) == canonical


class _MoCoLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder_q = torchvision.models.resnet18()
        self.encoder_k = torchvision.models.resnet18()


def test_moco_model_yields_both_encoders_and_needs_wrapper_choice():
    model = _MoCoLike()
    items = list(iter_prunable(model))
    assert len(items) == 2 * 19  # resnet18: 16 block convs + 3 downsample convs, per encoder
    with pytest.raises(ValueError, match="encoder_q"):
        prunable_parameters(model)
    query = prunable_parameters(model, wrapper="encoder_q.")
    assert all(p is dict(model.encoder_q.named_parameters())[n] for n, p in query.items())


def test_detection_and_segmentation_backbones_map_to_canonical_names():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn
    from torchvision.models.segmentation import deeplabv3_resnet50

    reference = {n: tuple(p.shape) for n, p in prunable_parameters(torchvision.models.resnet50()).items()}
    detector = fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, trainable_backbone_layers=5
    )
    segmenter = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)
    for model in (detector, segmenter):
        found = {n: tuple(p.shape) for n, p in prunable_parameters(model).items()}
        assert found == reference  # FPN / ASPP / heads never enter the scope


def test_prunable_state_from_wrapped_state_dict():
    model = torchvision.models.resnet18()
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}
    state = prunable_state(wrapped)
    assert set(state) == set(prunable_parameters(model))
    assert torch.equal(state["layer2.0.conv1.weight"], model.layer2[0].conv1.weight)
    duplicated = dict(wrapped) | {f"module.encoder_k.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="twice"):
        prunable_state(duplicated)
