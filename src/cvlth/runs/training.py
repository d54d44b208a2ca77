"""What the run kinds share when they train: one seeded training of a recipe, its batches, its
objective, the model adapted to a task, and the input adaptations a run logs.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvlth.atomic import atomic_path
from cvlth.config import ObjectiveRef
from cvlth.data.samples import SampleSplits
from cvlth.masks import Mask
from cvlth.models.assembly import downstream_model
from cvlth.models.backbones import feature_dim
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.models.task_models import DENSE_OBJECTIVES
from cvlth.objectives.registry import build_objective
from cvlth.objectives.views import training_images
from cvlth.runs.adaptation import input_adaptations
from cvlth.runs.context import EVAL_BATCH_SIZE, AnySplits, Context
from cvlth.runs.kinds import ImpRun, Recipe, TransferRun
from cvlth.seeds import RunSeeds, mix
from cvlth.store import RunFolder
from cvlth.training.loop import train


def train_run(
    model: nn.Module,
    objective: Any,
    data: AnySplits,
    recipe: Recipe,
    folder: RunFolder,
    ctx: Context,
    mask: Mask | None,
    seeds: RunSeeds,
) -> dict[str, Any]:
    """One training of ``recipe`` whose every random choice comes from ``seeds``."""
    training = recipe.train  # its ``seed`` is root entropy (in ``seeds``); augmentations get their own
    seed_global_rngs(seeds.torch_global)
    start = time.perf_counter()
    result = train(
        model,
        objective,
        batches(data, "train", training.batch_size, seed=seeds.data_order, objective=recipe.objective),
        training=training,
        optim=recipe.optim,
        schedule=recipe.schedule,
        run=folder,
        val_data=batches(data, "val", EVAL_BATCH_SIZE) if data.val is not None else None,
        test_data=batches(data, "test", EVAL_BATCH_SIZE),
        mask=mask,
        device=ctx.device,
        quiet=ctx.quiet,
        augmentation_seed=seeds.augmentation,
    )
    result.update(wall_seconds=time.perf_counter() - start, **round_info(recipe, data, seeds))
    return result


def round_info(recipe: Recipe, data: AnySplits, seeds: RunSeeds) -> dict[str, Any]:
    """What every training result records besides its metrics."""
    return {
        "seeds": seeds.as_dict(),
        "threads": torch.get_num_threads(),
        "images_per_epoch": len(data.train),
        "test_size": len(data.test),  # what each test metric is over (a result, not the run's identity)
        "data": recipe.data.name,  # lets `--plan` estimate time per dataset
    }


def batches(
    data: AnySplits, split: str, batch_size: int, seed: int = 0, objective: ObjectiveRef | None = None
) -> Any:
    """Training batches are shuffled (and the last partial one dropped); evaluation ones are not.
    Training batches are drawn from the images ``objective`` trains on (streamed view pairs for
    SimCLR / MoCo, see :func:`~cvlth.objectives.views.training_images`)."""
    samples = data.split(split)
    training = split == "train"
    if training and objective is not None:
        samples = training_images(objective, samples)
    drop_last = training and len(samples) > batch_size
    if isinstance(data, SampleSplits):
        size = batch_size if training else max(1, batch_size // 16)  # whole images: smaller batches
        return data.batches(split, size, shuffle=training, seed=seed, drop_last=drop_last)
    return samples.batches(batch_size, shuffle=training, seed=seed, drop_last=drop_last)


def save_torch(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so a crash never leaves half a file behind."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def seed_global_rngs(seed: int) -> None:
    """torch's, numpy's and Python's global RNGs (dropout, RoI samplers, ...) from the run's seed.

    Set before every training (a resumed training then restores them from its checkpoint), so
    neither what ran before in this process nor a restart between IMP rounds changes a number."""
    torch.manual_seed(seed)
    np.random.seed(mix(seed) % (1 << 32))
    random.seed(seed)


def run_objective(ref: ObjectiveRef, model: nn.Module, data: AnySplits, seed: int) -> Any:
    """The objective ``ref`` names for ``model``. Dense-prediction objectives take no feature width
    (their detector / segmenter has no classifier ``fc``): they get 0."""
    width = 0 if ref.name in DENSE_OBJECTIVES else feature_dim(model)
    return build_objective(ref, feature_dim=width, data=data, seed=seed)


def task_model(
    run: ImpRun | TransferRun, theta: ImportedCheckpoint, data: AnySplits, seeds: RunSeeds
) -> nn.Module:
    """θ_p adapted to the run's task, its new parts drawn from the run's seeds; θ_0 instead for IMP
    rewound to ``init`` or ``early`` (θ_5% is captured while training from θ_0)."""
    recipe = run.training_recipe()
    return downstream_model(
        theta,
        data,
        seeds.init,
        objective=recipe.objective.name,
        model_options=recipe.model,
        small_images=run.adapt.small_images,
        keep_stem=run.adapt.keep_stem,
        fresh=run.fresh_start,
    )


def logged_adaptations(
    run: ImpRun | TransferRun, theta: ImportedCheckpoint, data: AnySplits, ctx: Context
) -> list[str]:
    """What is changed in θ_p to feed it the run's images: said in the log and kept in the result."""
    adaptations = input_adaptations(run, theta.spec.in_channels, data.image_shape[0])
    for line in adaptations:
        ctx.log(f"  adapted: {line}")
    return adaptations
