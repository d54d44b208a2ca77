"""θ_p: the ``pretrain`` run (train a backbone on an upstream set) and the ``import`` run (convert an
external checkpoint). Both leave ``theta_p.pt`` and, when the objective has heads, ``heads.pt``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cvlth.errors import CvlthError
from cvlth.models.assembly import seeded
from cvlth.models.backbones import BackboneSpec, build_backbone, feature_dim
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.models.checkpoints.importer import ImportedCheckpoint, import_checkpoint
from cvlth.objectives.registry import build_objective
from cvlth.run_files import HEADS, THETA_P
from cvlth.runs.context import RUN_EXECUTORS, Context, run_folder, run_seeds
from cvlth.runs.kinds import ImportRun, PretrainRun
from cvlth.runs.training import save_torch, train_run
from cvlth.store import RunFolder
from cvlth.training.objective import PROJECTION, head_states
from cvlth.zoo.files import SCHEME, checkpoint_file, is_zoo_path, load_zoo_heads, zoo_heads


def load_pretrained(run: PretrainRun | ImportRun, ctx: Context) -> ImportedCheckpoint:
    return import_checkpoint(run_folder(ctx, run) / THETA_P, source="cvlth")


def pretrained_heads(run: PretrainRun | ImportRun, ctx: Context) -> dict[str, dict[str, torch.Tensor]]:
    path = run_folder(ctx, run) / HEADS
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}


def _spec(run: PretrainRun) -> BackboneSpec:
    return BackboneSpec(**run.backbone.model_dump())


@RUN_EXECUTORS.register("pretrain")
def execute_pretrain(run: PretrainRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    data = ctx.dataset(run.recipe.data)
    spec = _spec(run)
    seeds = run_seeds(run)
    model = seeded(seeds.init, lambda: build_backbone(spec, data.num_classes))
    objective = build_objective(
        run.recipe.objective, feature_dim=feature_dim(spec), data=data, seed=seeds.objective
    )
    result = train_run(model, objective, data, run.recipe, folder, ctx, mask=None, seeds=seeds)
    source = run.recipe.objective.name
    normalize = run.recipe.objective.options.get("normalize", "dataset")  # what it was trained with
    normalization = normalize if isinstance(normalize, str) else "custom"
    save_checkpoint(
        Path(folder) / THETA_P, model.state_dict(), spec, normalization=normalization, source=source
    )
    if objective.modules():
        save_torch(head_states(objective), Path(folder) / HEADS)
    return {"checkpoint": THETA_P, "spec": spec.label, **result}


@RUN_EXECUTORS.register("import")
def execute_import(run: ImportRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    file = checkpoint_file(run.path)
    if "$" in run.path and not file.exists():
        raise CvlthError(
            f"checkpoint path {run.path!r} names an environment variable that is not set",
            hint="export it (e.g. CVLTH_CHECKPOINTS=/path/to/checkpoints) and run the study again",
        )
    imported = import_checkpoint(file, source=run.source)
    report = imported.report
    if imported.spec is None:
        raise CvlthError(f"{run.path}: {report.architecture.description} is not a registered ResNet")
    save_checkpoint(
        Path(folder) / THETA_P,
        imported.state_dict,
        imported.spec,
        normalization=report.normalization,
        source=report.format,
    )
    if imported.projection_head:  # MoCo v2 / SimCLR: rewound with θ_p by upstream IMP
        save_torch({PROJECTION: imported.projection_head}, Path(folder) / HEADS)
    zoo = {}
    if is_zoo_path(run.path):  # a world checkpoint: its heads lie beside it, its quality in its header
        heads_file = zoo_heads(run.path.removeprefix(SCHEME))
        if heads_file.is_file():
            save_torch(load_zoo_heads(heads_file), Path(folder) / HEADS)
        zoo = {"zoo": run.path, "zoo_quality": json.loads(report.metadata.get("quality", "{}"))}
    return {
        "checkpoint": THETA_P,
        "format": report.format,
        "spec": imported.spec.label,
        "dropped": len(report.dropped),
        "normalization": report.normalization,
        "head": report.head,
        **zoo,
    }
