"""Detection's training view: flips with their boxes, and the detector's (multi-scale) resizing."""

import torch
from torch import nn

from cvlth.data.samples import SampleSplits
from cvlth.models.backbones import BackboneSpec
from cvlth.models.task_models import build_task_model, check_model_options
from cvlth.objectives.detection import DetectionObjective
from cvlth.study.config import load_study


class _Recorder(nn.Module):
    """A stand-in detector: keeps the images and targets it is trained on, returns one loss."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.seen: list[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]] = []

    def forward(self, images, targets):
        self.seen.append((images, targets))
        return {"loss": self.weight * 2.0}


def _sample():
    image = torch.arange(2 * 10, dtype=torch.uint8).view(1, 2, 10)  # 10 px wide
    target = {
        "boxes": torch.tensor([[1.0, 0.0, 4.0, 2.0], [6.0, 1.0, 10.0, 2.0], [0.0, 0.0, 5.0, 1.0]]),
        "labels": torch.tensor([3, 7, 9]),
        "difficult": torch.tensor([False, False, True]),
    }
    return image, target


def test_flip_mirrors_image_and_boxes_by_hand():
    image, target = _sample()
    model = _Recorder()
    loss, metrics = DetectionObjective(flip=1.0).train_step(
        model, ([image], [target]), torch.Generator().manual_seed(0)
    )
    images, targets = model.seen[0]
    assert torch.equal(images[0], image.flip(-1).float() / 255)
    # x1' = W - x2, x2' = W - x1 with W = 10; y unchanged; the difficult box is not trained on.
    assert targets[0]["boxes"].tolist() == [[6.0, 0.0, 9.0, 2.0], [0.0, 1.0, 4.0, 2.0]]
    assert targets[0]["labels"].tolist() == [3, 7]
    assert float(loss.detach()) == 2.0 and set(metrics) == {"loss"}
    assert target["boxes"][0].tolist() == [1.0, 0.0, 4.0, 2.0]  # the sample itself is untouched
    DetectionObjective(flip=0.0).train_step(model, ([image], [target]), torch.Generator().manual_seed(0))
    assert torch.equal(model.seen[1][0][0], image.float() / 255)
    assert model.seen[1][1][0]["boxes"].tolist() == [[1.0, 0.0, 4.0, 2.0], [6.0, 1.0, 10.0, 2.0]]


def test_paper_config_uses_detectron2_voc_sizes_and_they_reach_the_detector():
    model = load_study("paper-resnet50").tasks["voc_detection"].model
    assert model == {"min_size": list(range(480, 801, 32)), "max_size": 1333, "frozen_bn": True}
    check_model_options("detection", model)
    # The same kind of options, scaled down, through the task-model builder: training draws a
    # shorter side per image from min_size, evaluation uses the last one.
    spec = BackboneSpec("resnet18", width=4, stem="cifar", in_channels=3)
    data = SampleSplits(
        "toy", [], None, [], ["background", "a"], (0.5,) * 3, (0.25,) * 3, ("detection",), (3, 64, 64)
    )
    detector = build_task_model(
        "detection", None, spec, data, seed=0, options={"min_size": [32, 48], "max_size": 100}
    )
    image = torch.rand(3, 40, 60)
    detector.train()
    with torch.random.fork_rng(devices=[]):  # the draw uses torch's global RNG (seeded per run)
        torch.manual_seed(0)
        shorter = {min(detector.transform([image])[0].image_sizes[0]) for _ in range(20)}
    assert shorter == {32, 48}
    detector.eval()
    assert detector.transform([image])[0].image_sizes[0] == (48, 72)
