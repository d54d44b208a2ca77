"""Ticket finders: the ``imp`` run (IMP through :func:`cvlth.pruning.imp.imp`, upstream or on a task,
rewound to θ_p, θ_0 or θ_5%) and the ``baseline`` run (OMP or random masks at the same levels).
Both leave ``masks/level-XX.safetensors``; IMP also ``rewind.safetensors`` and ``round-XX/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvlth.config import ObjectiveRef, RunConfig
from cvlth.data.classification import DatasetSplits
from cvlth.masks import Mask
from cvlth.models.assembly import upstream_model
from cvlth.models.checkpoints.importer import ImportedCheckpoint
from cvlth.objectives.registry import objective_option_defaults
from cvlth.pruning.imp import imp, load_rewind
from cvlth.pruning.strategies import get_strategy, level_sparsity
from cvlth.run_files import REWIND, mask_path
from cvlth.runs.context import EVAL_BATCH_SIZE, RUN_EXECUTORS, Context, run_folder, run_seeds
from cvlth.runs.kinds import BaselineRun, ImpRun
from cvlth.runs.pretrain import load_pretrained, pretrained_heads
from cvlth.runs.training import (
    batches,
    logged_adaptations,
    round_info,
    run_objective,
    seed_global_rngs,
    task_model,
)
from cvlth.runs.upstream import evaluate_on_pretraining
from cvlth.scope import prunable_state
from cvlth.seeds import RunSeeds, mix
from cvlth.store import RunFolder
from cvlth.training.objective import load_heads


def load_ticket_mask(finder: ImpRun | BaselineRun, level: int, ctx: Context) -> Mask:
    return Mask.load(mask_path(run_folder(ctx, finder), level))


#: The pruning strategy (:data:`cvlth.pruning.strategies.STRATEGIES`) of each baseline method.
BASELINE_STRATEGIES = {"omp": "magnitude", "random": "random"}


@RUN_EXECUTORS.register("baseline")
def execute_baseline(run: BaselineRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    theta = load_pretrained(run.pretrained, ctx)
    weights = prunable_state(theta.state_dict)
    seeds = run_seeds(run)
    mask: Mask | None = None
    levels = []
    strategy = get_strategy(BASELINE_STRATEGIES[run.method])
    for level in range(1, run.rounds + 1):
        if run.method == "omp":  # one shot: from the dense weights straight to the level's sparsity
            mask = strategy(weights, level_sparsity(level, run.fraction))
        else:  # iterative, like IMP's schedule: ``fraction`` of the remaining weights per level
            mask = strategy(weights, run.fraction, mask, seed=mix(seeds.mask, level))
        mask.save(mask_path(Path(folder), level), method=run.method, round=level)
        levels.append({"level": level, "sparsity": mask.sparsity})
    return {"levels": levels, "seeds": seeds.as_dict()}


@RUN_EXECUTORS.register("imp")
def execute_imp(run: ImpRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    """IMP levels 1..K through :func:`cvlth.pruning.imp.imp`, from θ_p (upstream: with its heads, on
    the pre-training task, pruned once before training) or from θ_p adapted to the task; rewound to
    θ_p, to θ_0, or to θ_5% (the weights after ``rewind_fraction`` of round 0, trained from θ_0)."""
    theta = load_pretrained(run.pretrained, ctx)
    data = ctx.dataset(run.recipe.data)
    seeds = run_seeds(run)
    if run.stage == "upstream":
        model, heads = _upstream_model(run, theta, data, ctx, seeds)
    else:
        model, heads = task_model(run, theta, data, seeds), {}
    adaptations = logged_adaptations(run, theta, data, ctx)
    objective_ref = _objective_ref(run, theta, ctx)

    def make_objective() -> Any:
        return run_objective(objective_ref, model, data, seeds.objective)

    found = imp(
        model,
        make_objective,
        batches(data, "train", run.recipe.train.batch_size, seed=seeds.data_order, objective=objective_ref),
        training=run.recipe.train,
        augmentation_seed=seeds.augmentation,
        optim=run.recipe.optim,
        schedule=run.recipe.schedule,
        rounds=run.rounds,
        folder=Path(folder),
        fraction=run.fraction,
        prune_first=run.stage == "upstream",  # the paper prunes θ_p once before any training
        rewind_step=_early_capture_step(run, data) if run.rewind == "early" else None,
        heads=heads,
        head_policy=run.heads,
        reshuffle=run.reshuffle_rounds,
        val_data=batches(data, "val", EVAL_BATCH_SIZE) if data.val is not None else None,
        test_data=batches(data, "test", EVAL_BATCH_SIZE),
        device=ctx.device,
        quiet=ctx.quiet,
        rewind=run.rewind,
        before_round=lambda level: seed_global_rngs(seeds.torch_global),
        round_info=round_info(run.recipe, data, seeds),
        train_last_level=run.train_last_level,
    )
    result = {
        "levels": [{"level": k, "sparsity": mask.sparsity} for k, mask in found.masks.items()],
        "rounds": found.rounds,
        "rewind": REWIND,
        "seeds": seeds.as_dict(),
        "adaptations": adaptations,
    }
    if run.stage == "upstream":  # Fig. 2's dense row: θ_p, untrained, on the pre-training task
        theta_p, theta_p_heads = _upstream_model(run, theta, data, ctx, seeds)
        objective = run_objective(objective_ref, theta_p, data, seeds.objective)
        load_heads(objective, theta_p_heads)
        test = batches(data, "test", EVAL_BATCH_SIZE)
        result["dense_upstream"] = evaluate_on_pretraining(theta_p, objective, test, ctx.device)
    return result


def ticket_start(finder: RunConfig, ctx: Context) -> dict[str, torch.Tensor] | None:
    """Where a ticket of ``finder`` starts: None for θ_p (every finder but downstream IMP rewound to
    θ_0 or θ_5%), else the backbone weights of the finder's rewind point (its classifier head left
    out: a transfer draws its own)."""
    if not finder.fresh_start:
        return None
    rewind = load_rewind(run_folder(ctx, finder) / REWIND)
    return {key: value for key, value in rewind["model"].items() if not key.startswith("fc.")}


def _objective_ref(run: ImpRun, theta: ImportedCheckpoint, ctx: Context) -> ObjectiveRef:
    """Upstream IMP feeds θ_p the input it was trained on: the normalisation its checkpoint records
    (``none`` for SimCLR v1, ``imagenet`` for torchvision), unless the recipe sets ``normalize``."""
    ref = run.recipe.objective
    recorded = theta.report.normalization
    if run.stage != "upstream" or "normalize" not in objective_option_defaults(ref.name):
        return ref
    if recorded not in ("imagenet", "none"):  # cvlth's own θ_p: its recipe says it
        return ref
    if "normalize" in ref.options:
        if ref.options["normalize"] != recorded:
            ctx.log(
                f"  note: θ_p records normalisation {recorded!r}; the recipe's {ref.options['normalize']!r} is used"
            )
        return ref
    return ref.model_copy(update={"options": {**ref.options, "normalize": recorded}})


def _early_capture_step(run: ImpRun, data: DatasetSplits) -> int:
    steps = (len(data.train) // run.recipe.train.batch_size) * run.recipe.train.epochs
    return max(1, round(run.rewind_fraction * steps))


def _upstream_model(
    run: ImpRun, theta: ImportedCheckpoint, data: DatasetSplits, ctx: Context, seeds: RunSeeds
) -> tuple[nn.Module, dict[str, dict[str, torch.Tensor]]]:
    """θ_p with its pre-training head and objective heads, for IMP on the pre-training task."""
    recipe = run.recipe
    model = upstream_model(theta, data, seeds.init, objective=recipe.objective.name, dataset=recipe.data.name)
    return model, pretrained_heads(run.pretrained, ctx)
