"""SimCLR and MoCo pre-training and upstream IMP through the study (tiny world slice)."""

import json
from pathlib import Path

import pytest
import torch
import yaml

import cvlth.pruning.imp as imp_module
from cvlth import run_files
from cvlth.cli import run_cli
from cvlth.masks import Mask
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.runs import training as run_training
from cvlth.runs.kinds import ImpRun
from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from study_fixtures import NEEDS_FASHION_MNIST, TINY_BACKBONE, upstream_slice

pytestmark = [
    pytest.mark.slow,
    NEEDS_FASHION_MNIST,
]

UPSTREAM = upstream_slice()
TRAIN = {"epochs": 1, "batch_size": 64}


def _study(pretrainings: dict) -> dict:
    return {
        "name": "ssl",
        "backbone": TINY_BACKBONE,
        "pretrainings": pretrainings,
        "tasks": {
            "digits": {
                "data": {
                    "name": "world_digits",
                    "options": {"image_size": 16, "max_train": 128, "max_test": 64},
                },
                "objective": {"name": "supervised", "options": {"flip": False}},
                "train": TRAIN,
            }
        },
        "finders": [{"name": "imp-up", "method": "imp", "stage": "upstream"}],
        "rounds": 2,
        "seeds": [0],
        "adapt": {"small_images": False},
    }


def _run(tmp_path: Path, study: dict) -> Path:
    path = tmp_path / "ssl.yaml"
    path.write_text(yaml.safe_dump(study))
    store = tmp_path / "store"
    assert run_cli(["study", str(path), "--store", str(store), "--quiet"]) == 0
    return path


def test_simclr_and_moco_pretrain_prune_upstream_and_transfer(tmp_path):
    recipe = {"data": UPSTREAM, "optim": {"name": "sgd", "lr": 0.05}, "train": TRAIN}
    study = _study(
        {
            "simclr": {"recipe": {**recipe, "objective": {"name": "simclr"}}},
            "moco": {
                "recipe": {
                    **recipe,
                    "objective": {"name": "moco", "options": {"queue_size": 256, "momentum": 0.99}},
                }
            },
        }
    )
    path = _run(tmp_path, study)
    store = Store(tmp_path / "store")
    table = json.loads((tmp_path / "store" / "studies" / "ssl" / "matching.json").read_text())
    assert {row["source"] for row in table} == {"simclr/imp-up", "moco/imp-up"}
    for item in expand(load_study(path)):
        if item.run.kind == "pretrain":
            result = store.result(item.run)
            val = result["best_val"]
            assert "retrieval_accuracy" in val  # the upstream metric of the self-supervised objectives
            heads = torch.load(Path(store.run_dir(item.run)) / run_files.HEADS, weights_only=True)
            assert ("projection" in heads) if item.pretraining == "simclr" else ("query_head" in heads)
        if isinstance(item.run, ImpRun):
            folder = Path(store.run_dir(item.run))
            assert Mask.load(run_files.mask_path(folder, 2)).sparsity == pytest.approx(0.36, abs=1e-4)


def test_imported_moco_checkpoint_continues_upstream_imp(tmp_path, monkeypatch):
    model = build_backbone(BackboneSpec("resnet18", 4, "cifar", 1), num_classes=10)
    released = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    released |= {
        f"module.encoder_k.{k}": v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")
    }
    released["module.queue"] = torch.randn(128, 256)
    # MoCo v2's MLP head (width-4 ResNet-18: 32 features -> 32 -> 128), different in encoder_k.
    head = {"0.weight": torch.randn(32, 32), "0.bias": torch.randn(32), "2.weight": torch.randn(128, 32)}
    head["2.bias"] = torch.randn(128)
    released |= {f"module.encoder_q.fc.{k}": v for k, v in head.items()}
    released |= {f"module.encoder_k.fc.{k}": v + 1 for k, v in head.items()}
    heads_at_start: list[dict] = []
    real_train = run_training.train

    def recording_train(model, objective, train_data, **kwargs):
        modules = objective.modules()
        if "query_head" in modules:  # the IMP rounds (transfers are supervised)
            heads_at_start.append(
                {
                    n: {k: v.clone() for k, v in modules[n].state_dict().items()}
                    for n in ("query_head", "key_head")
                }
            )
        return real_train(model, objective, train_data, **kwargs)

    monkeypatch.setattr(imp_module, "train", recording_train)  # the IMP rounds
    checkpoint = tmp_path / "moco_v2.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": released}, checkpoint)
    upstream = {
        "data": UPSTREAM,
        "objective": {"name": "moco", "options": {"queue_size": 256}},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": TRAIN,
    }
    study = _study({"moco": {"import_path": str(checkpoint), "import_source": "moco", "upstream": upstream}})
    study["rounds"] = 3  # three IMP trainings (the last level's too): the head must be restored before each
    path = _run(tmp_path, study)
    assert len(heads_at_start) == 3
    for heads in heads_at_start:  # θ_MoCo's own encoder_q head, in the query and the key head alike
        for name in ("query_head", "key_head"):
            assert all(torch.equal(heads[name][k], v) for k, v in head.items()), name
    store = Store(tmp_path / "store")
    imp = next(item.run for item in expand(load_study(path)) if isinstance(item.run, ImpRun))
    first = Mask.load(run_files.mask_path(Path(store.run_dir(imp)), 1))
    # Level 1 is magnitude pruning of the imported encoder_q itself (before any training).
    from cvlth.pruning.strategies import global_magnitude

    weights = {k: v for k, v in model.state_dict().items() if k in first}
    assert first == global_magnitude(weights, 0.2)
