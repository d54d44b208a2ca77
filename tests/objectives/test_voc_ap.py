"""VOC07 11-point AP50 against hand computations of the devkit's rule."""

import math

import pytest
import torch

from cvlth.objectives.detection import average_precision
from cvlth.objectives.voc_ap import class_ap, eleven_point_ap, voc07_ap50


def _target(boxes, labels, difficult=None):
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels),
    }
    if difficult is not None:
        target["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return target


def _prediction(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_eleven_point_ap_by_hand():
    # hits T F T of 2 boxes: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # Thresholds 0..0.5 (6 of them) see precision 1; 0.6..1.0 (5) only the third, 2/3.
    assert eleven_point_ap([True, False, True], 2) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert eleven_point_ap([True, True], 2) == pytest.approx(1.0)
    assert eleven_point_ap([False, False], 2) == 0.0
    assert eleven_point_ap([], 3) == 0.0
    # one of four found: recall 0.25 reaches thresholds 0, 0.1, 0.2 only
    assert eleven_point_ap([True], 4) == pytest.approx(3 / 11)


def test_class_ap_marks_duplicates_false_and_ignores_difficult_boxes():
    targets = [
        _target([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], [False, True]),
        _target([[0, 0, 10, 10]], [1]),
    ]
    predictions = [
        # TP (0.9); on the difficult box: ignored (0.8); the first box again: duplicate, FP (0.7)
        _prediction([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [1, 1, 1]),
        # nowhere near a box: FP (0.6); IoU 0.9 with the box: TP (0.5)
        _prediction([[50, 50, 60, 60], [0, 0, 10, 9]], [0.6, 0.5], [1, 1]),
    ]
    # ranked hits T F F T of 2 boxes: precision 1, .5, 1/3, .5 at recall .5, .5, .5, 1
    assert class_ap(predictions, targets, 1) == pytest.approx((6 * 1 + 5 * 0.5) / 11)


def test_an_overlap_of_exactly_one_half_is_not_a_hit():
    targets = [_target([[0, 0, 10, 10]], [1])]
    half = [_prediction([[0, 0, 10, 20]], [0.9], [1])]  # IoU 100 / 200
    assert class_ap(half, targets, 1) == 0.0
    above = [_prediction([[0, 0, 10, 19]], [0.9], [1])]  # IoU 100 / 190
    assert class_ap(above, targets, 1) == pytest.approx(1.0)


def test_mean_is_over_classes_with_a_non_difficult_box():
    targets = [_target([[0, 0, 10, 10], [30, 30, 40, 40], [60, 60, 70, 70]], [1, 2, 3], [False, False, True])]
    predictions = [_prediction([[0, 0, 10, 10], [0, 0, 5, 5]], [0.9, 0.8], [1, 2])]
    # class 1 found (AP 1), class 2 missed (AP 0), class 3 only difficult (left out); a prediction
    # of a class without boxes (none here) would be left out too
    assert class_ap(predictions, targets, 3) is None
    assert voc07_ap50(predictions, targets) == pytest.approx(0.5)
    assert math.isnan(voc07_ap50(predictions, [_target([[0, 0, 1, 1]], [1], [True])]))


def test_average_precision_reports_it_beside_the_coco_metrics():
    targets = [_target([[0, 0, 10, 10]], [1]), _target([[5, 5, 25, 25]], [2])]
    predictions = [_prediction([[0, 0, 10, 10]], [0.9], [1]), _prediction([[5, 5, 25, 25]], [0.8], [2])]
    metrics = average_precision(predictions, targets)
    assert set(metrics) == {"map", "map50", "map75", "voc07_ap50"}
    assert metrics["voc07_ap50"] == pytest.approx(1.0)
    assert metrics["map50"] == pytest.approx(1.0)
