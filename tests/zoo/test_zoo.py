"""The world's model zoo: the packaged recipe, a tiny build end to end, and `world:NAME` imports."""

import json
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

import cvlth.zoo.files as zoo_files
from cvlth.cli import run_cli
from cvlth.errors import CheckpointError
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.store import Store
from cvlth.study.config import StudyConfig
from cvlth.zoo.build import ZooRecipe, build_zoo, load_zoo_recipe
from cvlth.zoo.files import ZOO_NAMES, checkpoint_file, zoo_checkpoint, zoo_heads
from study_fixtures import DIGITS_TASK, NEEDS_FASHION_MNIST, TINY_BACKBONE, upstream_slice


def test_packaged_recipe_builds_the_three_world_checkpoints() -> None:
    recipe = load_zoo_recipe()
    assert tuple(recipe.checkpoints) == ZOO_NAMES
    objectives = [entry.objective.name for entry in recipe.checkpoints.values()]
    assert objectives == ["supervised", "simclr", "moco"]
    upstream = {
        json.dumps(entry.data.model_dump(mode="json"), sort_keys=True)
        for entry in recipe.checkpoints.values()
    }
    assert len(upstream) == 1  # the three θ_p see the same upstream images


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_shipped_checkpoint_records_the_packaged_recipe(name: str) -> None:
    """Every world checkpoint the package ships was built from the recipe it ships (else rebuild it)."""
    path = zoo_checkpoint(name)
    if not path.is_file():
        pytest.skip(f"{path.name} is not built yet (cvlth zoo build {name})")
    with safe_open(str(path), "pt") as handle:
        header = handle.metadata()
    assert header["zoo_recipe"] == load_zoo_recipe().entry_yaml(name)
    quality = json.loads(header["quality"])
    assert {"knn_accuracy", "linear_probe_accuracy", "test_images"} <= set(quality)


def test_unknown_and_unbuilt_world_names_are_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(zoo_files, "zoo_dir", lambda: tmp_path)
    with pytest.raises(CheckpointError, match="names no world checkpoint"):
        checkpoint_file("world:imagenet")
    with pytest.raises(CheckpointError, match="cvlth zoo build simclr"):
        checkpoint_file("world:simclr")
    assert checkpoint_file("plain/file.pt") == Path("plain/file.pt")


TINY_ZOO = {
    "backbone": TINY_BACKBONE,
    "knn_k": 5,
    "checkpoints": {
        "supervised": {
            "data": upstream_slice(max_train=192, max_eval=64),
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "train": {"epochs": 1, "batch_size": 64},
        },
        "simclr": {
            "data": upstream_slice(max_train=192, max_eval=64),
            "objective": {"name": "simclr", "options": {"crop_scale": [0.3, 1.0], "blur_p": 0.0}},
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "train": {"epochs": 1, "batch_size": 64},
        },
    },
}


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_tiny_zoo_builds_measures_exports_and_imports_as_world_names(tmp_path, monkeypatch, capsys) -> None:
    recipe = ZooRecipe.model_validate(TINY_ZOO)
    out = tmp_path / "zoo"
    qualities = build_zoo(
        recipe, ["supervised", "simclr"], Store(tmp_path / "store"), out, quiet=True, log=lambda _: None
    )
    assert 0 <= qualities["supervised"]["top1_accuracy"] <= 1 and qualities["supervised"]["test_images"] == 64
    assert (
        "top1_accuracy" not in qualities["simclr"]
        and 0 <= qualities["simclr"]["objective_retrieval_accuracy"] <= 1
    )
    for name in ("supervised", "simclr"):
        with safe_open(str(zoo_checkpoint(name, out)), "pt") as handle:
            header = handle.metadata()
        assert header["zoo_recipe"] == recipe.entry_yaml(name)
        assert yaml.safe_load(header["zoo_recipe"])["backbone"]["width"] == 4
        assert header["run_hash"].startswith("pretrain/") and header["cvlth_commit"]
        assert json.loads(header["quality"]) == pytest.approx(qualities[name])
    assert zoo_heads("simclr", out).is_file() and not zoo_heads("supervised", out).is_file()
    imported = import_checkpoint(zoo_checkpoint("simclr", out), source="cvlth")
    assert imported.spec.width == 4

    # A study imports them by name: the import run copies θ_p and the SimCLR projection head.
    monkeypatch.setattr(zoo_files, "zoo_dir", lambda: out)
    monkeypatch.setattr("cvlth.zoo.files.ZOO_NAMES", ("supervised", "simclr"))
    study = {
        "name": "zoo-import",
        "backbone": TINY_BACKBONE,
        "pretrainings": {"simclr": {"import_path": "world:simclr", "import_source": "cvlth"}},
        "tasks": {"digits": DIGITS_TASK},
        "finders": [{"name": "omp", "method": "omp"}],
        "rounds": 1,
        "seeds": [0],
    }
    StudyConfig.model_validate(study)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert run_cli(["study", str(path), "--store", str(tmp_path / "runs"), "--quiet"]) == 0
    (import_run,) = Store(tmp_path / "runs").runs("import")
    result = import_run.read_result()
    assert result["zoo"] == "world:simclr" and result["zoo_quality"] == pytest.approx(qualities["simclr"])
    assert (import_run.path / "heads.pt").is_file()


def test_inspect_shows_a_world_checkpoints_quality_and_provenance(capsys) -> None:
    if not zoo_checkpoint("supervised").is_file():
        pytest.skip("world-supervised.safetensors is not built yet")
    with safe_open(str(zoo_checkpoint("supervised")), "pt") as handle:
        quality = json.loads(handle.metadata()["quality"])
    capsys.readouterr()
    assert run_cli(["inspect", "world:supervised"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "world checkpoint world:supervised" in out
    assert f"top-1 {quality['top1_accuracy']:.4f}" in out and f"{quality['test_images']} images" in out
    assert quality["top1_accuracy"] >= 0.90  # the floor for the supervised θ_p
