"""Faster R-CNN on a cvlth backbone: AP against hand-computed values, θ_p loading, masks while training."""

import pytest
import torch

from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.detection import build_detector
from cvlth.objectives.detection import DetectionObjective, average_precision, flip_boxes
from cvlth.pruning import MaskEnforcer, magnitude
from cvlth.scope import iter_prunable

SPEC = BackboneSpec("resnet18", width=4, stem="cifar", in_channels=1)
BOX = [4.0, 4.0, 20.0, 20.0]
OTHER = [30.0, 30.0, 50.0, 50.0]


def _pred(boxes, scores, labels=None):
    return {
        "boxes": torch.tensor(boxes).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels or [1] * len(scores)),
    }


def _target(boxes, labels=None, difficult=None):
    target = {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels or [1] * len(boxes))}
    if difficult is not None:
        target["difficult"] = torch.tensor(difficult)
    return target


def test_ap_of_perfect_predictions_is_one():
    result = average_precision(
        [_pred([BOX], [0.9]), _pred([OTHER], [0.8], [2])], [_target([BOX]), _target([OTHER], [2])]
    )
    assert result == pytest.approx({"map": 1.0, "map50": 1.0, "map75": 1.0, "voc07_ap50": 1.0})


def test_ap_with_a_false_positive():
    # Ranked by score, a lower-scoring false positive comes after the only true positive: precision
    # is 1 at recall 1 already, and interpolated precision (the max over recall >= r) is 1 at every
    # one of COCO's 101 recall points: AP = 1.
    lower = average_precision([_pred([BOX, OTHER], [0.9, 0.5])], [_target([BOX])])
    assert lower["map"] == pytest.approx(1.0) and lower["voc07_ap50"] == pytest.approx(1.0)
    # Scored higher, the false positive comes first: (recall 0, precision 0), then the true positive
    # (recall 1, precision 1/2). Interpolated precision is 1/2 at all 101 recall points: AP = 0.5.
    higher = average_precision([_pred([BOX, OTHER], [0.5, 0.9])], [_target([BOX])])
    # VOC07's 11 recall points see the same precision 1/2.
    assert higher == pytest.approx({"map": 0.5, "map50": 0.5, "map75": 0.5, "voc07_ap50": 0.5})


def test_ap_with_a_missed_box():
    # Two objects, one found exactly: recall reaches 1/2 at precision 1 and never more. Of COCO's 101
    # recall points 0, 0.01, ..., 1, the 51 points r <= 0.5 have precision 1, the other 50 have 0:
    # AP = 51 / 101 at every IoU threshold.
    result = average_precision([_pred([BOX], [0.9])], [_target([BOX, OTHER])])
    # VOC07: 6 of its 11 recall points (0, 0.1, ..., 0.5) have precision 1: AP50 = 6 / 11.
    expected = {"map": 51 / 101, "map50": 51 / 101, "map75": 51 / 101, "voc07_ap50": 6 / 11}
    assert result == pytest.approx(expected)


def test_difficult_objects_are_ignored_in_evaluation():
    # A missed difficult object costs nothing, and a detection on it is not a false positive.
    missed = average_precision([_pred([BOX], [0.9])], [_target([BOX, OTHER], difficult=[False, True])])
    found = average_precision(
        [_pred([BOX, OTHER], [0.5, 0.9])], [_target([BOX, OTHER], difficult=[False, True])]
    )
    assert missed["map"] == pytest.approx(1.0) and found["map"] == pytest.approx(1.0)


def test_flip_boxes_mirrors_x():
    assert flip_boxes(torch.tensor([[4.0, 1.0, 20.0, 9.0]]), 64).tolist() == [[44.0, 1.0, 60.0, 9.0]]


def _scenes(n=2, size=32):
    generator = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (1, size, size), dtype=torch.uint8, generator=generator) for _ in range(n)
    ]
    targets = [
        {
            "boxes": torch.tensor([[2.0, 3.0, 14.0, 17.0], [16.0, 10.0, 30.0, 28.0]]),
            "labels": torch.tensor([1, 3]),
        }
        for _ in range(n)
    ]
    return images, targets


def test_detector_loads_theta_p_and_exposes_only_backbone_convs():
    classifier = build_backbone(SPEC, num_classes=10)
    detector = build_detector(classifier.state_dict(), SPEC, num_classes=4, min_size=32, max_size=32)
    assert [p.canonical for p in iter_prunable(detector)] == [p.canonical for p in iter_prunable(classifier)]
    assert len(list(iter_prunable(detector))) == 19
    body = detector.backbone.body
    assert torch.equal(body.layer3[1].conv2.weight, classifier.layer3[1].conv2.weight)
    assert torch.equal(body.bn1.running_var, classifier.bn1.running_var)
    r50 = BackboneSpec("resnet50", width=8, stem="cifar", in_channels=1)
    assert len(list(iter_prunable(build_detector(None, r50, num_classes=3)))) == 52


def test_one_train_step_keeps_pruned_backbone_weights_zero():
    classifier = build_backbone(SPEC, num_classes=10)
    detector = build_detector(classifier.state_dict(), SPEC, num_classes=4, min_size=32, max_size=32)
    mask = magnitude(classifier, 0.5)  # computed on a plain classifier of the same spec
    mask.validate(detector)
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.5, momentum=0.9)
    enforcer = MaskEnforcer(detector, mask)
    enforcer.attach(optimizer)
    detector.train()
    loss, metrics = DetectionObjective().train_step(detector, _scenes(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and {"loss_classifier", "loss_box_reg"} <= set(metrics)
    before = {p.name: p.parameter.detach().clone() for p in iter_prunable(detector)}
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for item in iter_prunable(detector):
        weight = item.parameter.detach()
        assert not weight[~mask[item.canonical]].any()
        assert not torch.equal(weight, before[item.name])  # kept weights did train


def test_evaluate_runs_on_scene_batches():
    from cvlth.data.samples import sample_batches

    images, targets = _scenes(3)
    samples = list(zip(images, targets, strict=True))
    detector = build_detector(None, SPEC, num_classes=4, min_size=32, max_size=32).eval()
    result = DetectionObjective().evaluate(detector, sample_batches(samples, 2, shuffle=False))
    assert set(result) == {"map", "map50", "map75", "voc07_ap50"} and 0.0 <= result["map"] <= 1.0


def test_returned_layers_choose_the_fpn_levels_and_their_anchors():
    # CIFAR stem: layer1 runs at full resolution; leaving it out of the FPN drops the costliest level.
    detector = build_detector(None, SPEC, num_classes=4, min_size=32, max_size=32, returned_layers=[2, 3, 4])
    assert detector.backbone.body.return_layers == {"layer2": "0", "layer3": "1", "layer4": "2"}
    assert detector.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,))  # 3 stages + pool
    assert [p.canonical for p in iter_prunable(detector)] == [
        p.canonical for p in iter_prunable(build_backbone(SPEC, 10))
    ]  # layer1 stays in the backbone (and prunable): it feeds layer2
    features = detector.backbone(torch.zeros(1, 1, 32, 32))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    detector.train()
    loss, _ = DetectionObjective().train_step(detector, _scenes(), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("layers", [[], [1, 3], [2, 3]])
def test_returned_layers_must_be_consecutive_up_to_layer4(layers):
    with pytest.raises(ValueError, match="returned_layers"):
        build_detector(None, SPEC, num_classes=4, returned_layers=layers)
