"""DeepLabV3+ on a cvlth backbone: mIoU by hand and by torchmetrics, masks while training, MoCo masks."""

import pytest
import torch

from cvlth.data.registry import load_dataset
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.models.detection import build_detector
from cvlth.models.segmentation import build_segmenter
from cvlth.objectives.segmentation import (
    SegmentationObjective,
    class_iou,
    collate,
    confusion_matrix,
    miou,
)
from cvlth.pruning import MaskEnforcer
from cvlth.pruning.strategies import global_magnitude
from cvlth.scope import iter_prunable, prunable_state

SPEC = BackboneSpec("resnet18", width=4, stem="cifar", in_channels=1)

# 3 classes; 255 is ignored. Row = truth, column = prediction.
TARGET = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 255], [1, 1, 2, 255]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 2], [1, 2, 2, 0]])
# truth 0 (3 px): predicted 0, 1, 0 -> [2, 1, 0]
# truth 1 (4 px): predicted 1, 1, 1, 2 -> [0, 3, 1]
# truth 2 (3 px): predicted 2, 0, 2 -> [1, 0, 2]
HAND_CONFUSION = [[2, 1, 0], [0, 3, 1], [1, 0, 2]]
# IoU = TP / (row + column - TP): class 0: 2/(3+3-2) = 1/2; class 1: 3/(4+4-3) = 3/5; class 2: 2/(3+3-2) = 1/2
HAND_MIOU = (1 / 2 + 3 / 5 + 1 / 2) / 3


def test_confusion_matrix_and_miou_by_hand():
    confusion = confusion_matrix(PRED, TARGET, 3)
    assert confusion.tolist() == HAND_CONFUSION
    assert class_iou(confusion).tolist() == pytest.approx([0.5, 0.6, 0.5])
    assert miou(confusion) == pytest.approx(HAND_MIOU)


def test_miou_agrees_with_torchmetrics():
    from torchmetrics.classification import MulticlassJaccardIndex

    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 16, 16), generator=generator)
    target[:, :2] = 255
    pred = torch.where(
        torch.rand(target.shape, generator=generator) < 0.6,
        target % 5,
        torch.randint(0, 5, target.shape, generator=generator),
    )
    reference = MulticlassJaccardIndex(num_classes=5, average="macro", ignore_index=255)
    assert miou(confusion_matrix(pred, target, 5)) == pytest.approx(float(reference(pred, target)), abs=1e-6)
    reference.reset()
    assert miou(confusion_matrix(PRED, TARGET, 3)) == pytest.approx(
        float(MulticlassJaccardIndex(num_classes=3, ignore_index=255)(PRED, TARGET))
    )


def test_absent_classes_do_not_count():
    confusion = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 4)
    assert miou(confusion) == 1.0  # classes 2 and 3 appear nowhere


def test_collate_pads_with_ignore_and_crops():
    images = [torch.ones((1, 4, 6), dtype=torch.uint8), torch.ones((1, 5, 3), dtype=torch.uint8)]
    labels = [torch.zeros((4, 6), dtype=torch.uint8), torch.ones((5, 3), dtype=torch.uint8)]
    batch, targets = collate(images, labels)
    assert tuple(batch.shape) == (2, 1, 5, 6) and tuple(targets.shape) == (2, 5, 6)
    assert (targets[0, 4] == 255).all() and (targets[1, :, 3:] == 255).all() and batch[1, 0, :, 3:].sum() == 0
    cropped, cropped_labels = collate(images, labels, crop_size=4, generator=torch.Generator().manual_seed(0))
    assert tuple(cropped.shape) == (2, 1, 4, 4) and tuple(cropped_labels.shape) == (2, 4, 4)


def test_segmenter_prunable_set_and_output_size():
    classifier = build_backbone(SPEC, num_classes=10)
    model = build_segmenter(classifier.state_dict(), SPEC, num_classes=11).eval()
    assert [p.canonical for p in iter_prunable(model)] == [p.canonical for p in iter_prunable(classifier)]
    assert all(p.name.startswith("backbone.layer") for p in iter_prunable(model))
    assert torch.equal(model.backbone.layer4[1].conv1.weight, classifier.layer4[1].conv1.weight)
    assert model.backbone.layer4[0].conv1.stride == (1, 1) and model.backbone.layer4[1].conv1.dilation == (
        2,
        2,
    )
    assert tuple(model(torch.zeros(2, 1, 40, 56)).shape) == (2, 11, 40, 56)
    r50 = BackboneSpec("resnet50", width=8, stem="imagenet", in_channels=3)
    assert len(list(iter_prunable(build_segmenter(None, r50, num_classes=21)))) == 52


def _moco_checkpoint(tmp_path):
    classifier = build_backbone(SPEC, num_classes=10)
    state = {"module.encoder_q." + k: v for k, v in classifier.state_dict().items()}
    path = tmp_path / "moco.pth.tar"
    torch.save({"state_dict": state}, path)
    return import_checkpoint(path)


def test_one_train_step_keeps_pruned_backbone_weights_zero(tmp_path):
    imported = _moco_checkpoint(tmp_path)
    mask = global_magnitude(prunable_state(imported.state_dict), 0.5)
    model = build_segmenter(imported, SPEC, num_classes=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    MaskEnforcer(model, mask).attach(optimizer)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (1, 24, 24), dtype=torch.uint8, generator=generator) for _ in range(2)]
    targets = [
        {"semantic": torch.randint(0, 4, (24, 24), dtype=torch.uint8, generator=generator)} for _ in range(2)
    ]
    objective = SegmentationObjective(4, (0.1,), (0.3,), crop_size=20)
    model.train()
    before = {p.name: p.parameter.detach().clone() for p in iter_prunable(model)}
    loss, _ = objective.train_step(model, (images, targets), generator)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for item in iter_prunable(model):
        weight = item.parameter.detach()
        assert not weight[~mask[item.canonical]].any()
        assert not torch.equal(weight, before[item.name])
    model.eval()
    result = objective.evaluate(model, _batches(images, targets))
    assert set(result) == {"miou", "pixel_accuracy", "loss"} and 0.0 <= result["miou"] <= 1.0


def _batches(images, targets):
    from cvlth.data.samples import sample_batches

    return sample_batches(list(zip(images, targets, strict=True)), 2, shuffle=False)


def test_moco_mask_applies_unchanged_to_detector_and_segmenter(tmp_path):
    imported = _moco_checkpoint(tmp_path)
    mask = global_magnitude(prunable_state(imported.state_dict), 0.5)
    for model in (build_detector(imported, SPEC, 4), build_segmenter(imported, SPEC, 4)):
        mask.validate(model)
        mask.apply(model)
        pruned = sum(int((item.parameter[~mask[item.canonical]] == 0).sum()) for item in iter_prunable(model))
        assert pruned == mask.pruned > 0
        kept = [item.parameter[mask[item.canonical]] for item in iter_prunable(model)]
        assert all(bool((k != 0).all()) for k in kept)


def test_world_scenes_splits_and_batches():
    splits = load_dataset("world_scenes", train_size=6, val_size=2, test_size=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 3)
    assert splits.num_classes == 11 and splits.image_shape == (1, 64, 64)
    assert splits.tasks == ("detection", "segmentation") and len(splits.mean) == 1
    images, targets = next(iter(splits.batches("train", 4, seed=1).epoch_batches(0)))
    assert len(images) == 4 and {"boxes", "labels", "semantic"} <= set(targets[0])
    assert len(splits.batches("test", 2)) == 2
