"""Detection and segmentation tasks through the study: transferred masks and task-specific IMP."""

import json
from pathlib import Path

import pytest
import yaml

from cvlth import run_files
from cvlth.cli import run_cli
from cvlth.masks import Mask
from cvlth.scope import iter_prunable
from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from study_fixtures import NEEDS_FASHION_MNIST, SUPERVISED_PRETRAINING, TINY_BACKBONE

pytestmark = [
    pytest.mark.slow,
    NEEDS_FASHION_MNIST,
]

SCENES = {"name": "world_scenes", "options": {"train_size": 32, "val_size": 8, "test_size": 8}}
STUDY = {
    "name": "dense",
    "backbone": TINY_BACKBONE,
    "pretrainings": {"supervised": SUPERVISED_PRETRAINING},
    "tasks": {
        "detect": {
            "data": SCENES,
            "objective": {"name": "detection"},
            "optim": {"name": "sgd", "lr": 0.01},
            "train": {"epochs": 1, "batch_size": 8},
        },
        "segment": {
            "data": SCENES,
            "objective": {"name": "segmentation"},
            "optim": {"name": "sgd", "lr": 0.01},
            "train": {"epochs": 1, "batch_size": 8},
        },
    },
    "finders": [
        {"name": "imp-up", "method": "imp", "stage": "upstream"},
        {"name": "imp-detect", "method": "imp", "stage": "downstream", "tasks": ["detect"]},
    ],
    "rounds": 2,
    "transfer_levels": [2],
    "seeds": [0],
    "adapt": {"small_images": False},
}


def test_dense_tasks_run_through_the_study(tmp_path):
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    store = tmp_path / "store"
    assert run_cli(["study", str(path), "--store", str(store), "--quiet"]) == 0
    table = {
        (r["source"], r["task"]): r
        for r in json.loads((store / "studies" / "dense" / "matching.json").read_text())
    }
    assert table[("supervised/imp-up", "detect")]["metric"] == "map"
    assert table[("supervised/imp-up", "segment")]["metric"] == "miou"
    assert table[("supervised/imp-detect", "detect")]["rows"][0]["sparsity"] == pytest.approx(0.36)
    assert ("supervised/imp-detect", "segment") not in table  # task-specific masks stay on their task
    assert table[("supervised/imp-up", "detect")]["model"] == "Faster R-CNN + FPN"
    assert table[("supervised/imp-up", "segment")]["model"] == "DeepLabV3+"

    # AP50, AP75 and VOC07's 11-point AP50 beside AP; the last mIoU beside the reported one
    folder = store / "studies" / "dense"
    beside = json.loads((folder / "matching-beside.json").read_text())
    metrics = {(r["source"], r["task"], r["metric"]) for r in beside}
    assert metrics == {
        *(("supervised/imp-up", "detect", m) for m in ("map50", "map75", "voc07_ap50")),
        *(("supervised/imp-detect", "detect", m) for m in ("map50", "map75", "voc07_ap50")),
        ("supervised/imp-up", "segment", "miou@final"),
    }
    transfers = [p for p in expand(load_study(path)) if p.run.kind == "transfer" and p.task == "detect"]
    dense = next(p.run for p in transfers if p.finder is None)
    result = json.loads((Path(Store(store).run_dir(dense)) / "result.json").read_text())
    beside_dense = next(r for r in beside if r["task"] == "detect" and r["metric"] == "voc07_ap50")["dense"]
    assert beside_dense["mean"] == pytest.approx(result["reported"]["test"]["voc07_ap50"])
    assert "## Beside the headline metrics" in (folder / "matching.md").read_text()
    assert "Beside the headline metrics" in (folder / "report.md").read_text()

    # The task-specific detection mask is a mask of the backbone: it fits a classifier's scope too.
    study = load_study(path)
    imp = next(p.run for p in expand(study) if p.finder == "imp-detect" and p.run.kind == "imp")
    mask = Mask.load(run_files.mask_path(Path(Store(store).run_dir(imp)), 2))
    from cvlth.models.backbones import BackboneSpec, build_backbone

    classifier = build_backbone(BackboneSpec("resnet18", 4, "cifar", 1), 10)
    mask.validate(classifier)
    assert {item.canonical for item in iter_prunable(classifier)} == set(mask)
