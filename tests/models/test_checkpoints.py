"""Checkpoint import: every on-disk format gives the same canonical tensors; masks fit every wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, resnet_fpn_backbone
from torchvision.models.segmentation import deeplabv3_resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.ops.misc import FrozenBatchNorm2d

from cvlth.errors import CheckpointError
from cvlth.masks import Mask
from cvlth.models.backbones import ARCHITECTURES, BackboneSpec, build_backbone, feature_dim
from cvlth.models.checkpoints.architecture import infer_architecture
from cvlth.models.checkpoints.cvlth_format import CHECKPOINT_FORMAT, save_checkpoint
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.models.checkpoints.loading import load_into
from cvlth.models.checkpoints.reading import read_state_dict
from cvlth.pruning.strategies import global_magnitude
from cvlth.scope import iter_prunable, prunable_state

SPEC = BackboneSpec("resnet50", width=8)


def _randomise_bn(model: nn.Module) -> None:
    """Non-default BN statistics, so that a dropped or swapped buffer would be noticed."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
                module.num_batches_tracked.fill_(7)


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    """A narrow ResNet-50 (width 8) with a 1000-class fc, as torchvision would save it."""
    torch.manual_seed(0)
    model = build_backbone(SPEC, 1000)
    _randomise_bn(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def _mlp_head(prefix: str) -> dict[str, torch.Tensor]:
    dim = feature_dim(SPEC)
    return {
        f"{prefix}fc.0.weight": torch.randn(dim, dim),
        f"{prefix}fc.0.bias": torch.randn(dim),
        f"{prefix}fc.2.weight": torch.randn(16, dim),
        f"{prefix}fc.2.bias": torch.randn(16),
    }


def _write_moco_training(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    """What facebookresearch/moco's main_moco.py saves (with DDP's module. prefix)."""
    encoder_k = {k: v + 1.0 if v.is_floating_point() else v for k, v in _backbone(reference).items()}
    state = {
        **{f"module.encoder_q.{k}": v for k, v in _backbone(reference).items()},
        **_mlp_head("module.encoder_q."),
        **{f"module.encoder_k.{k}": v for k, v in encoder_k.items()},
        **_mlp_head("module.encoder_k."),
        "module.queue": torch.randn(16, 64),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    optimizer = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": state, "optimizer": optimizer}, path)
    return path


def _write_moco_encoder_q(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    state = {f"module.encoder_q.{k}": v for k, v in _backbone(reference).items()}
    torch.save({"state_dict": {**state, **_mlp_head("module.encoder_q.")}}, path)
    return path


def _write_torchvision(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    torch.save(reference, path)
    return path


def _write_data_parallel(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.items()}, "epoch": 90}, path)
    return path


def _write_simclr(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    # tonylins/simclr-converter writes {"state_dict": torchvision keys}, fc = 1000-class linear eval.
    torch.save({"state_dict": dict(reference)}, path)
    return path


def _timm_state(reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # timm's released ResNet weights: torchvision names, no num_batches_tracked.
    return {k: v for k, v in reference.items() if not k.endswith("num_batches_tracked")}


def _write_timm_pth(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    torch.save(_timm_state(reference), path)
    return path


def _write_timm_safetensors(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    save_file(
        {k: v.contiguous() for k, v in _timm_state(reference).items()}, str(path), metadata={"format": "pt"}
    )
    return path


def _write_cvlth_pt(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    return save_checkpoint(path, reference, SPEC, source="supervised", epoch=3)


def _write_cvlth_safetensors(path: Path, reference: dict[str, torch.Tensor]) -> Path:
    return save_checkpoint(path, {f"module.{k}": v for k, v in reference.items()}, SPEC)


# name -> (writer, file suffix, detected format, keeps fc)
FORMATS = {
    "torchvision": (_write_torchvision, ".pth", "torchvision", True),
    "data_parallel": (_write_data_parallel, ".pth.tar", "torchvision", True),
    "moco_training": (_write_moco_training, ".pth.tar", "moco", False),
    "moco_encoder_q": (_write_moco_encoder_q, ".pth.tar", "moco", False),
    "simclr": (_write_simclr, ".pth", "torchvision", True),  # same layout: needs source="simclr"
    "timm_pth": (_write_timm_pth, ".pth", "torchvision", True),
    "timm_safetensors": (_write_timm_safetensors, ".safetensors", "torchvision", True),
    "cvlth_pt": (_write_cvlth_pt, ".pt", "cvlth", True),
    "cvlth_safetensors": (_write_cvlth_safetensors, ".safetensors", "cvlth", True),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, reference) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        name: writer(folder / f"{name}{suffix}", reference)
        for name, (writer, suffix, _, _) in FORMATS.items()
    }


def _comparable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # timm files carry no BN counters (filled with 0 on import): compare everything else.
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_imports_to_the_same_canonical_tensors(name, files, reference) -> None:
    _, _, detected, keeps_fc = FORMATS[name]
    imported = import_checkpoint(files[name])
    expected = reference if keeps_fc else _backbone(reference)
    torchvision_keys = set(expected)  # the builder's keys equal torchvision's (test_backbones)
    assert set(imported.state_dict) == torchvision_keys
    got, want = _comparable(imported.state_dict), _comparable(expected)
    assert all(torch.equal(got[k], want[k]) for k in want)
    report = imported.report
    assert report.format == detected
    assert report.spec == SPEC
    assert report.missing == [] and report.mis_shaped == {}
    assert report.has_fc == keeps_fc
    assert report.normalization == "imagenet"


def test_moco_training_checkpoint_reports_what_it_dropped(files, reference) -> None:
    report = import_checkpoint(files["moco_training"]).report
    groups = report.dropped_by_reason()
    key_encoder = [r for r in groups if "key encoder" in r]
    assert len(key_encoder) == 1
    # encoder_k's whole backbone plus its MLP head are dropped, nothing of encoder_q's backbone.
    assert len(groups[key_encoder[0]]) == len(_backbone(reference)) + 4
    assert sorted(groups["MoCo queue of negative keys"]) == ["module.queue", "module.queue_ptr"]
    mlp = [k for r, ks in groups.items() if "MLP" in r for k in ks]
    assert mlp == []  # encoder_q's MLP head is kept as the projection head (encoder_k's is dropped above)
    assert "MLP" in report.head and "kept" in report.head
    saved = torch.load(files["moco_training"], weights_only=True)["state_dict"]
    head = import_checkpoint(files["moco_training"]).projection_head
    assert sorted(head) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for name, value in head.items():
        layer, param = name.split(".")
        assert torch.equal(value, saved[f"module.encoder_q.fc.{layer}.{param}"])
    assert any("epoch" in n and "optimizer" in n for n in report.notes)


def test_moco_v1_linear_projection_is_kept_as_fc(tmp_path, reference) -> None:
    state = {f"module.encoder_q.{k}": v for k, v in _backbone(reference).items()}
    state["module.encoder_q.fc.weight"] = torch.randn(128, feature_dim(SPEC))
    state["module.encoder_q.fc.bias"] = torch.randn(128)
    torch.save({"state_dict": state}, tmp_path / "moco_v1.pth")
    imported = import_checkpoint(tmp_path / "moco_v1.pth")
    assert imported.report.architecture.fc_classes == 128
    assert "projection" in imported.report.head


def test_simclr_needs_the_hint_or_metadata_and_expects_unnormalised_input(files, tmp_path, reference) -> None:
    hinted = import_checkpoint(files["simclr"], source="simclr").report
    assert (hinted.format, hinted.normalization) == ("simclr", "none")
    assert any("unnormalised" in n for n in hinted.notes)
    torch.save({"state_dict": dict(reference), "arch": "simclr-resnet50-1x"}, tmp_path / "tagged.pth")
    assert import_checkpoint(tmp_path / "tagged.pth").report.format == "simclr"


def test_timm_hint_labels_the_format_and_counters_are_filled(files) -> None:
    imported = import_checkpoint(files["timm_safetensors"], source="timm")
    assert imported.report.format == "timm"
    counters = [k for k in imported.state_dict if k.endswith("num_batches_tracked")]
    assert sorted(counters) == imported.report.filled and len(counters) == 53
    assert all(int(imported.state_dict[k]) == 0 for k in counters)


def test_cvlth_checkpoint_header(files) -> None:
    report = import_checkpoint(files["cvlth_pt"]).report
    assert report.metadata["format"] == CHECKPOINT_FORMAT
    assert report.metadata["arch"] == "resnet50" and report.metadata["width"] == "8"
    assert report.metadata["epoch"] == "3"
    assert import_checkpoint(files["cvlth_safetensors"]).report.metadata["source"] == "supervised"


def test_a_hint_contradicting_the_layout_is_an_error(files) -> None:
    with pytest.raises(CheckpointError, match="moco"):
        import_checkpoint(files["moco_training"], source="simclr")
    with pytest.raises(CheckpointError, match="cvlth-checkpoint/1"):
        import_checkpoint(files["torchvision"], source="cvlth")


def test_unknown_cvlth_format_version_is_refused(tmp_path, reference) -> None:
    torch.save({"cvlth": {"format": "cvlth-checkpoint/9"}, "model": reference}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="cvlth-checkpoint/9"):
        import_checkpoint(tmp_path / "future.pt")


def test_read_state_dict_keeps_raw_keys(files) -> None:
    raw = read_state_dict(files["moco_training"])
    assert "module.queue" in raw and "module.encoder_k.conv1.weight" in raw


# --- architecture inference -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_infer_architecture_from_torchvision_shapes(arch: str) -> None:
    with torch.device("meta"):
        state = getattr(torchvision.models, arch)().state_dict()
    info = infer_architecture(state)
    assert info.spec == BackboneSpec(arch)
    assert info.layers == ARCHITECTURES[arch].layers and info.fc_classes == 1000


def test_infer_architecture_width_stem_channels() -> None:
    spec = BackboneSpec("resnet34", width=16, stem="cifar", in_channels=1)
    with torch.device("meta"):
        info = infer_architecture(build_backbone(spec, 10).state_dict())
    assert info.spec == spec and info.block == "basic" and info.fc_classes == 10


def test_incomplete_checkpoint_lists_missing_and_mis_shaped(tmp_path, reference) -> None:
    state = dict(reference)
    del state["layer3.2.bn2.running_var"]
    state["layer2.1.conv2.weight"] = torch.randn(16, 16, 1, 1)
    torch.save(state, tmp_path / "partial.pth")
    report = import_checkpoint(tmp_path / "partial.pth").report
    assert report.missing == ["layer3.2.bn2.running_var"]
    assert report.mis_shaped == {"layer2.1.conv2.weight": ((16, 16, 1, 1), (16, 16, 3, 3))}


# --- loading into models ----------------------------------------------------------------------------


def test_strict_load_of_resnet18_into_resnet50_names_the_cause() -> None:
    with torch.device("meta"):
        small = build_backbone(BackboneSpec("resnet18", width=8)).state_dict()
    model = build_backbone(SPEC)
    with pytest.raises(CheckpointError, match="wrong depth: checkpoint is resnet18.*model is resnet50"):
        load_into(model, small)


def test_strict_load_with_wrong_width_or_head(reference) -> None:
    with pytest.raises(CheckpointError, match="wrong width: checkpoint conv1 has 8 channels, model 16"):
        load_into(build_backbone(BackboneSpec("resnet50", width=16)), reference)
    with pytest.raises(CheckpointError, match="1000 outputs, model 10") as error:
        load_into(build_backbone(SPEC, 10), reference, skip=())
    assert "skip=('fc.',)" in str(error.value)


def test_strict_load_into_a_non_resnet() -> None:
    with pytest.raises(CheckpointError, match="holds no torchvision-style ResNet"):
        load_into(nn.Sequential(nn.Conv2d(3, 8, 3)), {"conv1.weight": torch.zeros(8, 3, 7, 7)})


def test_lenient_load_skips_mis_shaped_and_copies_the_rest(reference) -> None:
    model = build_backbone(SPEC, 10)
    before = model.fc.weight.clone()
    result = load_into(model, reference, strict=False, skip=())
    assert set(result.mis_shaped) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.fc.weight, before)
    assert torch.equal(model.layer4[2].conv3.weight, reference["layer4.2.conv3.weight"])


def test_load_fills_both_moco_encoders(files, reference) -> None:
    class Moco(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder_q = build_backbone(SPEC, 16)
            self.encoder_k = build_backbone(SPEC, 16)

    model = Moco()
    result = load_into(model, import_checkpoint(files["moco_training"]))
    assert result.ok and result.skipped == []
    for encoder in (model.encoder_q, model.encoder_k):
        assert torch.equal(encoder.layer1[0].conv1.weight, reference["layer1.0.conv1.weight"])
        assert torch.equal(encoder.bn1.running_mean, reference["bn1.running_mean"])


# --- one mask for every wrapper ---------------------------------------------------------------------


def _classifier() -> nn.Module:
    return build_backbone(SPEC, 10)


def _faster_rcnn() -> nn.Module:
    # torchvision's own FPN extractor on the narrow backbone, FrozenBatchNorm, nothing frozen.
    body = build_backbone(SPEC, norm_layer=FrozenBatchNorm2d)
    return FasterRCNN(_resnet_fpn_extractor(body, trainable_layers=5), num_classes=3)


def _deeplab() -> nn.Module:
    body = build_backbone(SPEC, replace_stride_with_dilation=[False, True, True])
    layers = IntermediateLayerGetter(body, return_layers={"layer4": "out"})
    return DeepLabV3(layers, DeepLabHead(feature_dim(SPEC), 3), None)


@pytest.mark.parametrize("build", [_classifier, _faster_rcnn, _deeplab])
def test_a_mask_from_the_moco_file_applies_to_every_model(build, files) -> None:
    imported = import_checkpoint(files["moco_training"])
    mask = global_magnitude(prunable_state(imported.state_dict), 0.5)
    model = build()
    load_into(model, imported)
    mask.validate(model)
    mask.apply(model)
    seen = set()
    for item in iter_prunable(model):
        keep = mask[item.canonical]
        weight = item.parameter.detach()
        assert torch.all(weight[~keep] == 0), item.name
        assert torch.equal(weight[keep], imported.state_dict[item.canonical][keep]), item.name
        seen.add(item.canonical)
    assert seen == set(mask)


def test_full_width_mask_fits_torchvision_detection_and_segmentation_backbones() -> None:
    with torch.device("meta"):
        classifier = torchvision.models.resnet50()
        # A bare BackboneWithFPN names the ResNet "body.*"; inside FasterRCNN it is "backbone.body.*".
        fpn = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
        detector = FasterRCNN(fpn, num_classes=21)
        segmenter = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    mask = Mask.dense({item.canonical: tuple(item.parameter.shape) for item in iter_prunable(classifier)})
    assert (len(mask), mask.total) == (52, 23_445_504)
    mask.validate(detector)
    mask.validate(segmenter)


# --- bad files ----------------------------------------------------------------------------------------


class _Custom:
    pass


def _bad_files(folder: Path, reference: dict[str, torch.Tensor]) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment the error message must contain)."""
    (folder / "empty.pth").write_bytes(b"")
    (folder / "notes.txt").write_text("epoch 1: loss 0.3\n")
    torch.save(reference, folder / "full.pth")
    data = (folder / "full.pth").read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    torch.save(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 2)).state_dict(), folder / "not_resnet.pth")
    torch.save({"x": _Custom()}, folder / "pickle.pth")
    torch.save({f"model.{k}": v for k, v in reference.items()}, folder / "prefixed.pth")
    (folder / "bad.safetensors").write_bytes((24).to_bytes(8, "little") + b'{"a": 1')
    return {
        "missing": (folder / "nope.pth", "not found"),
        "empty": (folder / "empty.pth", "empty"),
        "text": (folder / "notes.txt", "text file"),
        "truncated": (folder / "truncated.pth", "truncated or corrupted"),
        "not_resnet": (folder / "not_resnet.pth", "not a ResNet checkpoint"),
        "pickle": (folder / "pickle.pth", "_Custom, which cvlth refuses to unpickle"),
        "prefixed": (folder / "prefixed.pth", "unknown prefix 'model.'"),
        "safetensors": (folder / "bad.safetensors", "not a readable safetensors file"),
    }


def test_bad_files_give_one_clear_checkpoint_error(tmp_path, reference) -> None:
    for name, (path, fragment) in _bad_files(tmp_path, reference).items():
        with pytest.raises(CheckpointError) as error:
            import_checkpoint(path)
        assert fragment in str(error.value), (name, str(error.value))


@pytest.mark.parametrize(
    ("build", "detected"), [(_faster_rcnn, "torchvision-detection"), (_deeplab, "torchvision-segmentation")]
)
def test_whole_detection_and_segmentation_checkpoints_yield_their_backbone(
    build, detected, tmp_path, reference
) -> None:
    model = build()
    load_into(model, reference)
    torch.save(model.state_dict(), tmp_path / "task.pth")
    imported = import_checkpoint(tmp_path / "task.pth")
    assert imported.report.format == detected
    assert set(imported.state_dict) == set(_backbone(reference))
    got, want = _comparable(imported.state_dict), _comparable(_backbone(reference))
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert imported.report.dropped and not imported.report.has_fc
