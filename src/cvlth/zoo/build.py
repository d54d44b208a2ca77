"""Build the world's checkpoints from the packaged recipe, measure them, and export them.

``zoo/recipe.yaml`` is the recipe: one backbone and one pre-training recipe per checkpoint. Each
is an ordinary ``pretrain`` run of the store (hashed, resumable), so a killed build continues and a
finished one is not recomputed. Its θ_p is then measured on the upstream test split (top-1 of its
own classifier where it has one; k-NN and linear-probe accuracy on backbone features; the
pre-training objective's test metrics, Eq. 2 retrieval accuracy for SimCLR / MoCo) and exported as
``world-<name>.safetensors`` with its provenance in the header: the recipe (YAML), the run hash,
the cvlth commit and the measured quality.
"""

from __future__ import annotations

import json
import subprocess
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field
from safetensors.torch import save_file

from cvlth.atomic import atomic_path
from cvlth.config import Name, Strict, validate_config
from cvlth.config_yaml import parse_yaml, read_config_text
from cvlth.data.classification import DatasetSplits
from cvlth.models.backbones import BackboneSpec, build_backbone, feature_dim
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.objectives.registry import build_objective
from cvlth.run_identity import config_hash
from cvlth.runs.context import Context
from cvlth.runs.execute import ensure
from cvlth.runs.kinds import BackboneConfig, PretrainRun, Recipe
from cvlth.runs.pretrain import load_pretrained, pretrained_heads
from cvlth.runs.upstream import evaluate_on_pretraining
from cvlth.store import Store
from cvlth.training.objective import load_heads
from cvlth.zoo.files import zoo_checkpoint, zoo_heads
from cvlth.zoo.quality import backbone_features, knn_accuracy, linear_probe_accuracy

EVAL_BATCH = 500


class ZooRecipe(Strict):
    """The packaged recipe of the world's checkpoints (``zoo/recipe.yaml``)."""

    backbone: BackboneConfig
    checkpoints: dict[Name, Recipe] = Field(
        min_length=1, description="one pre-training recipe per checkpoint"
    )
    knn_k: int = Field(20, ge=1, description="neighbours of the k-NN accuracy")

    def run(self, name: str) -> PretrainRun:
        return PretrainRun(backbone=self.backbone, recipe=self.checkpoints[name])

    def entry_yaml(self, name: str) -> str:
        """What the checkpoint ``name`` records as its recipe: the backbone and its recipe, as YAML."""
        entry = {
            "backbone": self.backbone.model_dump(mode="json"),
            "recipe": self.checkpoints[name].model_dump(mode="json"),
        }
        return yaml.safe_dump(entry, sort_keys=True)


def packaged_recipe_path() -> Path:
    return Path(str(resources.files("cvlth") / "zoo" / "recipe.yaml"))


def load_zoo_recipe(path: Path | None = None) -> ZooRecipe:
    path = path or packaged_recipe_path()
    return validate_config(ZooRecipe, parse_yaml(read_config_text(path, "zoo recipe"), str(path)))


def build_zoo(
    recipe: ZooRecipe,
    names: list[str],
    store: Store,
    out: Path,
    *,
    threads: int | None = None,
    quiet: bool = False,
    log: Any = print,
) -> dict[str, dict[str, Any]]:
    """Train (or reuse), measure and export each named checkpoint; return its quality by name."""
    ctx = Context(store=store, quiet=quiet, threads=threads, log=log)
    commit = cvlth_commit()  # the code that trains, not whatever is checked out when it exports
    qualities = {}
    for name in names:
        run = recipe.run(name)
        start = time.perf_counter()
        ensure(run, ctx)
        log(f"{name}: θ_p {run.kind}/{config_hash(run)} ready after {time.perf_counter() - start:.0f} s")
        quality = measure_quality(run, ctx, recipe.knn_k)
        export_checkpoint(recipe, name, run, ctx, quality, out, commit)
        log(f"{name}: {json.dumps(quality)} -> {zoo_checkpoint(name, out)}")
        qualities[name] = quality
    return qualities


def measure_quality(run: PretrainRun, ctx: Context, k: int) -> dict[str, Any]:
    """Top-1 (where θ_p has a classifier), k-NN and linear-probe accuracy on the upstream test split,
    and the pre-training objective's own test metrics."""
    data: DatasetSplits = ctx.dataset(run.recipe.data)
    spec = BackboneSpec(**run.backbone.model_dump())
    theta = load_pretrained(run, ctx)
    model = build_backbone(spec, data.num_classes)
    model.load_state_dict(theta.state_dict, strict=False)  # SSL θ_p: no fc; the probe reads features
    train_f = backbone_features(model, data.train.images, data.mean, data.std, EVAL_BATCH)
    test_f = backbone_features(model, data.test.images, data.mean, data.std, EVAL_BATCH)
    labels = data.train.labels, data.test.labels
    quality: dict[str, Any] = {
        "test_images": len(data.test),
        "knn_accuracy": knn_accuracy(train_f, labels[0], test_f, labels[1], k=k),
        "linear_probe_accuracy": linear_probe_accuracy(train_f, labels[0], test_f, labels[1]),
    }
    objective = build_objective(run.recipe.objective, feature_dim=feature_dim(spec), data=data, seed=0)
    load_heads(objective, pretrained_heads(run, ctx))
    test = data.test.batches(EVAL_BATCH, shuffle=False)
    measured = evaluate_on_pretraining(model, objective, test, ctx.device)["test"]
    quality.update({f"objective_{key}": value for key, value in measured.items()})
    if "accuracy" in measured and run.recipe.objective.name == "supervised":
        quality["top1_accuracy"] = measured["accuracy"]
    return quality


def export_checkpoint(
    recipe: ZooRecipe,
    name: str,
    run: PretrainRun,
    ctx: Context,
    quality: dict[str, Any],
    out: Path,
    commit: str,
) -> Path:
    """``world-<name>.safetensors`` (θ_p with its provenance) and, when θ_p has heads, its heads file."""
    theta = load_pretrained(run, ctx)
    spec = BackboneSpec(**run.backbone.model_dump())
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(
        zoo_checkpoint(name, out),
        theta.state_dict,
        spec,
        normalization=theta.report.normalization,
        source=run.recipe.objective.name,
        zoo_name=name,
        zoo_recipe=recipe.entry_yaml(name),
        run_hash=f"{run.kind}/{config_hash(run)}",
        cvlth_commit=commit,
        quality=json.dumps(quality, sort_keys=True),
    )
    heads = pretrained_heads(run, ctx)
    if heads:
        tensors = {
            f"{head}.{key}": value.contiguous()
            for head, state in heads.items()
            for key, value in state.items()
        }
        with atomic_path(zoo_heads(name, out)) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "cvlth-heads/1", "zoo_name": name})
    return path


def cvlth_commit() -> str:
    """The git commit of the cvlth checkout that built the file (``+dirty`` with local changes)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."],
            cwd=here.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
