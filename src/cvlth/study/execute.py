"""Execute the study's run kinds in the run store: each is computed once, resumed if killed.

:func:`ensure` computes a run's dependencies first, then the run itself through
:meth:`cvlth.store.Store.execute` (lock, ``config.yaml``, ``result.json`` written last). Artefacts
passed between runs are files in their run folders:

* ``pretrain`` / ``import``: ``theta_p.pt`` (cvlth-checkpoint/1) and ``heads.pt`` (objective heads);
* ``imp`` / ``baseline``: ``masks/level-XX.safetensors`` (cvlth-mask/1), ``rewind.safetensors``
  (IMP: the weights every round starts from — θ_p, θ_0, or θ_5% captured from the first round trained
  from θ_0 — as ``model.<key>`` and ``heads.<head>.<key>`` tensors, readable without cvlth),
  ``round-XX/`` (one training folder per IMP round);
* ``transfer``: only metrics and ``result.json``.

Every random choice of a run derives from its seeds (:func:`run_seeds`, see :mod:`cvlth.seeds`),
and each result records them under ``seeds``.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cvlth.atomic import atomic_path
from cvlth.config import DataRef, ObjectiveRef, RunConfig
from cvlth.data.cache import DatasetCache
from cvlth.data.classification import DatasetSplits
from cvlth.data.samples import SampleSplits
from cvlth.errors import CvlthError
from cvlth.masks import Mask
from cvlth.models.backbones import BackboneSpec, build_backbone, feature_dim, init_like_torchvision
from cvlth.models.checkpoints import ImportedCheckpoint, import_checkpoint, load_into, save_checkpoint
from cvlth.models.task_models import DENSE_OBJECTIVES, build_task_model
from cvlth.models.transfer import transfer_model
from cvlth.objectives.registry import build_objective, objective_option_defaults
from cvlth.objectives.views import training_images
from cvlth.pruning.imp import REWIND, imp, load_rewind, mask_path
from cvlth.pruning.strategies import level_sparsity, one_shot_magnitude, random_global, random_like
from cvlth.scope import prunable_state
from cvlth.seeds import RunSeeds, derive_seeds, mix
from cvlth.store import RunFolder, Store
from cvlth.study.plan import input_adaptations
from cvlth.study.run_kinds import (
    BaselineRun,
    ImportRun,
    ImpRun,
    PretrainRun,
    Recipe,
    TransferRun,
    dependencies,
)
from cvlth.study.upstream import evaluate_on_pretraining
from cvlth.training.loop import train
from cvlth.training.objective import PROJECTION, head_states, load_heads

AnySplits = DatasetSplits | SampleSplits
THETA_P = "theta_p.pt"
HEADS = "heads.pt"
EVAL_BATCH_SIZE = 512


@dataclass
class Context:
    """What every executor shares: the store, the device, and an in-process dataset cache."""

    store: Store
    device: str = "cpu"
    quiet: bool = False
    threads: int | None = None  # intra-op threads every run computes with (None: torch's default)
    log: Callable[[str], None] = print
    datasets: DatasetCache = field(default_factory=DatasetCache)

    def dataset(self, ref: DataRef) -> AnySplits:
        return self.datasets.get(ref.name, ref.root, ref.options)


# --- the DAG ----------------------------------------------------------------------------------


def ensure(run: RunConfig, ctx: Context) -> dict[str, Any]:
    """The run's result, computing its dependencies and then the run itself if not done yet."""
    folder = ctx.store.run_dir(run)
    if folder.is_done():
        return folder.read_result()
    for dependency in dependencies(run):
        ensure(dependency, ctx)
    executor = EXECUTORS[run.kind]
    if ctx.threads is not None:
        torch.set_num_threads(ctx.threads)
    start = time.perf_counter()
    result = ctx.store.execute(run, lambda f: executor(run, f, ctx), drop_train_state=True)
    ctx.log(f"  {run.kind} {folder.name} finished in {time.perf_counter() - start:.1f} s")
    return result


def run_folder(ctx: Context, run: RunConfig) -> Path:
    return Path(ctx.store.run_dir(run))


def run_seeds(run: PretrainRun | ImpRun | BaselineRun | TransferRun) -> RunSeeds:
    """A run's seeds. Root entropy: a pre-training's ``train.seed``; a baseline's ``seed``; an IMP
    run's or a transfer's (``seed``, recipe ``train.seed``) — so the study's seeds are independent runs.
    A transfer of a ticket whose finder seed is not 0 adds that seed, so every (finder seed, seed)
    pair fine-tunes with its own head, batches and mask-variant draws; finder seed 0 (every ticket
    before finder seeds existed) keeps the streams it always had."""
    if isinstance(run, PretrainRun):
        return derive_seeds(run.recipe.train.seed)
    if isinstance(run, BaselineRun):
        return derive_seeds(run.seed)
    if isinstance(run, TransferRun):
        finder_seed = run.ticket.seed if run.ticket is not None else 0
        return derive_seeds(run.seed, run.task.train.seed, *((finder_seed,) if finder_seed else ()))
    return derive_seeds(run.seed, run.recipe.train.seed)


# --- θ_p ------------------------------------------------------------------------------------


def load_pretrained(run: PretrainRun | ImportRun, ctx: Context) -> ImportedCheckpoint:
    return import_checkpoint(run_folder(ctx, run) / THETA_P, source="cvlth")


def pretrained_heads(run: PretrainRun | ImportRun, ctx: Context) -> dict[str, dict[str, torch.Tensor]]:
    path = run_folder(ctx, run) / HEADS
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}


def _spec(run: PretrainRun) -> BackboneSpec:
    return BackboneSpec(**run.backbone.model_dump())


def execute_pretrain(run: PretrainRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    data = ctx.dataset(run.recipe.data)
    spec = _spec(run)
    seeds = run_seeds(run)
    model = _seeded(seeds.init, lambda: build_backbone(spec, data.num_classes))
    objective = build_objective(
        run.recipe.objective, feature_dim=feature_dim(spec), data=data, seed=seeds.objective
    )
    result = _train(model, objective, data, run.recipe, folder, ctx, mask=None, seeds=seeds)
    source = run.recipe.objective.name
    normalize = run.recipe.objective.options.get("normalize", "dataset")  # what it was trained with
    normalization = normalize if isinstance(normalize, str) else "custom"
    save_checkpoint(
        Path(folder) / THETA_P, model.state_dict(), spec, normalization=normalization, source=source
    )
    if objective.modules():
        _save_torch(head_states(objective), Path(folder) / HEADS)
    return {"checkpoint": THETA_P, "spec": spec.label, **result}


def execute_import(run: ImportRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    if "$" in run.path and not Path(run.path).exists():
        raise CvlthError(
            f"checkpoint path {run.path!r} names an environment variable that is not set",
            hint="export it (e.g. CVLTH_CHECKPOINTS=/path/to/checkpoints) and run the study again",
        )
    imported = import_checkpoint(run.path, source=run.source)
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
        _save_torch({PROJECTION: imported.projection_head}, Path(folder) / HEADS)
    return {
        "checkpoint": THETA_P,
        "format": report.format,
        "spec": imported.spec.label,
        "dropped": len(report.dropped),
        "normalization": report.normalization,
        "head": report.head,
    }


# --- ticket finders ---------------------------------------------------------------------------


def load_ticket_mask(ticket: ImpRun | BaselineRun, level: int, ctx: Context) -> Mask:
    return Mask.load(mask_path(run_folder(ctx, ticket), level))


def execute_baseline(run: BaselineRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    theta = load_pretrained(run.pretrained, ctx)
    weights = prunable_state(theta.state_dict)
    seeds = run_seeds(run)
    mask: Mask | None = None
    levels = []
    for level in range(1, run.rounds + 1):
        if run.method == "omp":
            mask = one_shot_magnitude(weights, level_sparsity(level, run.fraction))
        else:
            mask = random_global(weights, run.fraction, mask, seed=mix(seeds.mask, level))
        mask.save(mask_path(Path(folder), level), method=run.method, round=level)
        levels.append({"level": level, "sparsity": mask.sparsity})
    return {"levels": levels, "seeds": seeds.as_dict()}


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
        model, heads = _downstream_model(run, theta, data, seeds), {}
    adaptations = _adaptations(run, theta, data, ctx)
    objective_ref = _objective_ref(run, theta, ctx)

    def make_objective() -> Any:
        return _objective(objective_ref, model, data, seeds.objective)

    found = imp(
        model,
        make_objective,
        _batches(data, "train", run.recipe.train.batch_size, seed=seeds.data_order, objective=objective_ref),
        training=run.recipe.train.model_copy(update={"seed": seeds.augmentation}),
        optim=run.recipe.optim,
        schedule=run.recipe.schedule,
        rounds=run.rounds,
        folder=Path(folder),
        fraction=run.fraction,
        prune_first=run.stage == "upstream",  # the paper prunes θ_p once before any training
        rewind_step=_early_capture_step(run, data) if run.rewind == "early" else None,
        heads=heads,
        rewind_heads=run.rewind_heads,
        val_data=_batches(data, "val", EVAL_BATCH_SIZE) if data.val is not None else None,
        test_data=_batches(data, "test", EVAL_BATCH_SIZE),
        device=ctx.device,
        quiet=ctx.quiet,
        label=run.rewind,
        before_round=lambda level: _seed_global_rngs(seeds.torch_global),
        round_info=_round_info(run.recipe, data, seeds),
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
        objective = _objective(objective_ref, theta_p, data, seeds.objective)
        load_heads(objective, theta_p_heads)
        test = _batches(data, "test", EVAL_BATCH_SIZE)
        result["dense_upstream"] = evaluate_on_pretraining(theta_p, objective, test, ctx.device)
    return result


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
    spec = theta.spec
    fc = theta.state_dict.get("fc.weight")
    if fc is not None and fc.shape[0] != data.num_classes and run.recipe.objective.name == "supervised":
        raise CvlthError(
            f"upstream IMP on {run.recipe.data.name} needs a {data.num_classes}-class head, "
            f"θ_p has {fc.shape[0]}",
            hint="upstream IMP runs on the pre-training task; use the pre-training's dataset",
        )
    model = _seeded(
        seeds.init, lambda: build_backbone(spec, fc.shape[0] if fc is not None else data.num_classes)
    )
    load_into(model, theta.state_dict, strict=fc is not None, skip=())  # the pre-training head too
    return model, pretrained_heads(run.pretrained, ctx)


def _downstream_model(
    run: ImpRun | TransferRun, theta: ImportedCheckpoint, data: AnySplits, seeds: RunSeeds
) -> nn.Module:
    """θ_p adapted to the task: a classifier, a Faster R-CNN or a DeepLabV3+ (by the objective's
    name), its new parts drawn from the run's seeds; θ_0 instead for IMP rewound to ``init`` or
    ``early`` (θ_5% is captured while training from θ_0)."""
    recipe = run.recipe if isinstance(run, ImpRun) else run.task
    if recipe.objective.name in DENSE_OBJECTIVES:
        spec = replace(theta.spec, in_channels=data.image_shape[0])
        model = build_task_model(recipe.objective.name, theta, spec, data, seeds.init, recipe.model)
    else:
        spec = (
            replace(theta.spec, in_channels=data.image_shape[0])
            if run.adapt.small_images and not run.adapt.keep_stem
            else theta.spec
        )
        model = transfer_model(
            theta,
            spec,
            data.num_classes,
            small_images=run.adapt.small_images,
            keep_stem=run.adapt.keep_stem,
            seed=seeds.init,
        )
    if isinstance(run, ImpRun) and run.rewind in ("init", "early"):
        model = _seeded(seeds.init, lambda: _fresh_like(model))
    return model


def _fresh_like(model: nn.Module) -> nn.Module:
    """θ_0: the same architecture with torchvision's random initialisation (BN statistics reset)."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
    init_like_torchvision(fresh)
    return fresh


# --- transfer -------------------------------------------------------------------------------


def execute_transfer(run: TransferRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    theta = load_pretrained(run.pretrained, ctx)
    data = ctx.dataset(run.task.data)
    seeds = run_seeds(run)
    adaptations = _adaptations(run, theta, data, ctx)
    model = _downstream_model(run, theta, data, seeds)
    mask = None
    if run.ticket is not None:
        mask = vary_mask(
            load_ticket_mask(run.ticket, run.level, ctx), run.variant, seeds.mask, run.perturb_fraction
        )
        if (
            isinstance(run.ticket, ImpRun)
            and run.ticket.stage == "downstream"
            and run.ticket.rewind != "pretrained"
        ):
            rewind = load_rewind(run_folder(ctx, run.ticket) / REWIND)
            backbone = {k: v for k, v in rewind["model"].items() if not k.startswith("fc.")}
            model.load_state_dict(backbone, strict=False)
    objective = _objective(run.task.objective, model, data, seeds.objective)
    result = _train(model, objective, data, run.task, folder, ctx, mask=mask, seeds=seeds)
    return {
        "level": run.level,
        "sparsity": 0.0 if mask is None else mask.sparsity,
        "seed": run.seed,
        "adaptations": adaptations,
        **result,
    }


def _adaptations(
    run: ImpRun | TransferRun, theta: ImportedCheckpoint, data: AnySplits, ctx: Context
) -> list[str]:
    """What is changed in θ_p to feed it the run's images: said in the log and kept in the result."""
    adaptations = input_adaptations(run, theta.spec.in_channels, data.image_shape[0])
    for line in adaptations:
        ctx.log(f"  adapted: {line}")
    return adaptations


def vary_mask(mask: Mask, variant: str, seed: int, fraction: float = 0.1) -> Mask:
    """The mask a perturbation-analysis transfer fine-tunes (see ``MaskVariant``)."""
    if variant == "ticket":
        return mask
    if variant == "random":
        return random_like(mask, seed=seed)
    if variant == "perturbed":
        return mask.perturb(fraction, seed=seed)
    if variant == "complement":  # the paper's m^c = 1 - m: sparsity 1 - s
        return mask.complement()
    if variant == "complement_matched":
        return restricted_complement(mask, seed=seed)
    raise CvlthError(f"unknown mask variant {variant!r}")


def restricted_complement(mask: Mask, seed: int) -> Mask:
    """1 - m, keeping per layer a random subset of the ticket's kept count (all of 1 - m if smaller)."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for name, keep in mask.items():
        flat = (~keep).reshape(-1)
        candidates = flat.nonzero().squeeze(1)
        budget = int(torch.count_nonzero(keep))
        if candidates.numel() > budget:
            chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:budget]]
            flat = torch.zeros_like(flat)
            flat[chosen] = True
        result[name] = flat.reshape(keep.shape)
    return Mask(result)


# --- shared helpers -------------------------------------------------------------------------


def _train(
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
    training = recipe.train.model_copy(update={"seed": seeds.augmentation})
    _seed_global_rngs(seeds.torch_global)
    start = time.perf_counter()
    result = train(
        model,
        objective,
        _batches(data, "train", training.batch_size, seed=seeds.data_order, objective=recipe.objective),
        training=training,
        optim=recipe.optim,
        schedule=recipe.schedule,
        run=folder,
        val_data=_batches(data, "val", EVAL_BATCH_SIZE) if data.val is not None else None,
        test_data=_batches(data, "test", EVAL_BATCH_SIZE),
        mask=mask,
        device=ctx.device,
        quiet=ctx.quiet,
    )
    result.update(wall_seconds=time.perf_counter() - start, **_round_info(recipe, data, seeds))
    return result


def _round_info(recipe: Recipe, data: AnySplits, seeds: RunSeeds) -> dict[str, Any]:
    """What every training result records besides its metrics."""
    return {
        "seeds": seeds.as_dict(),
        "threads": torch.get_num_threads(),
        "images_per_epoch": len(data.train),
        "data": recipe.data.name,  # lets `--plan` estimate time per dataset
    }


def _batches(
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


def _save_torch(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so a crash never leaves half a file behind."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _seed_global_rngs(seed: int) -> None:
    """torch's, numpy's and Python's global RNGs (dropout, RoI samplers, ...) from the run's seed.

    Set before every training (a resumed training then restores them from its checkpoint), so
    neither what ran before in this process nor a restart between IMP rounds changes a number."""
    torch.manual_seed(seed)
    np.random.seed(mix(seed) % (1 << 32))
    random.seed(seed)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _objective(ref: ObjectiveRef, model: nn.Module, data: AnySplits, seed: int) -> Any:
    """The objective ``ref`` names for ``model``. Dense-prediction objectives take no feature width
    (their detector / segmenter has no classifier ``fc``): they get 0."""
    width = 0 if ref.name in DENSE_OBJECTIVES else feature_dim(model)
    return build_objective(ref, feature_dim=width, data=data, seed=seed)


EXECUTORS: dict[str, Callable[[Any, RunFolder, Context], dict[str, Any]]] = {
    "pretrain": execute_pretrain,
    "import": execute_import,
    "imp": execute_imp,
    "baseline": execute_baseline,
    "transfer": execute_transfer,
}
