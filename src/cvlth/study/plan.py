"""Expand a study into its DAG of runs, and say what is done and what is left.

Runs are listed in dependency order (pre-trainings, then ticket finders, then transfers), so
executing the list front to back never waits. Each run also carries the labels the matching
table needs (pre-training, finder, task, level, seed, the finder's seed).
"""

from __future__ import annotations

import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cvlth.config import DataRef, ObjectiveRef, RunConfig, format_error
from cvlth.data.cache import SUBSET_OPTIONS, loader_options
from cvlth.data.registry import DATASETS, get_spec, load_dataset
from cvlth.data.samples import SampleSplits
from cvlth.errors import ConfigError, CvlthError
from cvlth.models.checkpoints import import_checkpoint
from cvlth.models.task_models import DENSE_OBJECTIVES
from cvlth.objectives.registry import OBJECTIVES, objective_option_defaults
from cvlth.store import RunFolder, Store
from cvlth.study.config import FinderEntry, StudyConfig
from cvlth.study.run_kinds import (
    BaselineRun,
    ImportRun,
    ImpRun,
    PretrainRun,
    Recipe,
    TransferRun,
)

KIND_ORDER = ("pretrain", "import", "baseline", "imp", "transfer")


@dataclass(frozen=True)
class PlannedRun:
    run: RunConfig
    pretraining: str
    finder: str | None = None  # None for θ_p and for the dense transfer
    task: str | None = None
    level: int = 0
    seed: int | None = None  # a transfer's seed (one of the study's ``seeds``)
    variant: str = "ticket"
    finder_seed: int | None = None  # the seed of the finder run (its own, or the transfer's ticket's)

    @property
    def source(self) -> str:
        """The ticket source label used in the matching table, e.g. ``supervised/imp-upstream``."""
        return f"{self.pretraining}/{self.finder or 'dense'}"


def pretrained_run(study: StudyConfig, name: str) -> PretrainRun | ImportRun:
    entry = study.pretrainings[name]
    if entry.recipe is not None:
        return PretrainRun(backbone=study.backbone, recipe=entry.recipe)
    return ImportRun(path=entry.import_path, source=entry.import_source)


def _override(recipe: Recipe, finder: FinderEntry) -> Recipe:
    changes = {
        key: value
        for key, value in {
            "optim": finder.optim,
            "schedule": finder.schedule,
            "train": finder.train,
            "objective": finder.objective,
            "data": finder.data,
        }.items()
        if value is not None
    }
    return recipe.model_copy(update=changes)


def finder_runs(
    study: StudyConfig, finder: FinderEntry, name: str
) -> list[tuple[str | None, ImpRun | BaselineRun]]:
    """(task or None, run) for one finder applied to pre-training ``name``: one run per finder seed
    (and, for downstream IMP, per task); the run's ``seed`` is the finder seed."""
    return [
        (task, run)
        for seed in finder.finder_seeds
        for task, run in _finder_runs_with_seed(study, finder, name, seed)
    ]


def _finder_runs_with_seed(
    study: StudyConfig, finder: FinderEntry, name: str, seed: int
) -> list[tuple[str | None, ImpRun | BaselineRun]]:
    pretrained = pretrained_run(study, name)
    if finder.method in ("omp", "random"):
        method = "omp" if finder.method == "omp" else "random"
        baseline = BaselineRun(
            pretrained=pretrained, method=method, rounds=study.rounds, fraction=study.fraction, seed=seed
        )
        return [(None, baseline)]
    common = {
        "pretrained": pretrained,
        "rounds": study.rounds,
        "fraction": study.fraction,
        "rewind": finder.rewind,
        "seed": seed,
    }
    if finder.stage == "upstream":
        recipe = _override(study.pretrainings[name].upstream_recipe, finder)
        return [(None, ImpRun(stage="upstream", recipe=recipe, **common))]
    return [
        (
            task,
            ImpRun(
                stage="downstream",
                recipe=_override(study.tasks[task], finder),
                adapt=study.adapt_for(task),
                **common,
            ),
        )
        for task in (finder.tasks or list(study.tasks))
    ]


def _transfer_grid(study: StudyConfig, finder: FinderEntry, task: str) -> list[tuple[int, str]]:
    """(level, mask variant) pairs fine-tuned for one finder on one task: its tickets, plus the
    perturbation analysis's variants when the finder is listed there."""
    ticket_levels = study.transfer_grid_levels(finder, task)
    grid = [(level, "ticket") for level in ticket_levels]
    analysis = study.perturbation
    if analysis is not None and finder.name in analysis.finders:
        levels = analysis.levels or ticket_levels
        grid += [(level, v) for level in levels for v in analysis.variants if v != "ticket"]
        grid += [(level, "ticket") for level in levels if level not in ticket_levels]
    return grid


MAX_PLANNED_RUNS = 100_000  # the paper's whole study is ~11,000 runs


def _check_size(study: StudyConfig) -> None:
    """Refuse, before building any run, a study whose grid would take minutes and gigabytes to plan."""
    seeds, analysis = len(study.seeds), study.perturbation
    bound = len(study.pretrainings) * (1 + len(study.tasks) * seeds)  # θ_p and the dense transfers
    for finder in study.finders:
        tasks = len(finder.tasks or study.tasks)
        levels = len(finder.levels or study.transfer_levels or range(study.rounds))
        if analysis is not None and finder.name in analysis.finders:
            levels += len(analysis.levels or []) + levels * len(analysis.variants)
        tickets = tasks if finder.stage == "downstream" and finder.method == "imp" else 1
        per_finder_seed = tickets + tasks * levels * seeds
        bound += len(finder.pretrainings or study.pretrainings) * len(finder.finder_seeds) * per_finder_seed
    if bound > MAX_PLANNED_RUNS:
        raise ConfigError(
            f"the study expands to up to {bound:,} runs (pre-trainings x finders x finder seeds x tasks x "
            f"levels x mask variants x seeds); cvlth plans at most {MAX_PLANNED_RUNS:,}",
            hint="split it into several studies (they can share one store) or narrow seeds, finder seeds, "
            "tasks or levels",
        )


def expand(study: StudyConfig) -> list[PlannedRun]:
    """Every run of the study, in dependency order, without duplicates, once the study has passed
    every check that can be made before a run (:func:`check_study`): `--plan` and `cvlth study`
    both fail here, not runs later."""
    check_study(study)
    _check_size(study)
    try:
        planned = _expand(study)
    except ValidationError as exc:  # a combination the study's own validation let through
        lines = [format_error(err) for err in exc.errors()]
        raise ConfigError("\n  ".join([f"study {study.name}: a run cannot be built:", *lines])) from None
    check_input_channels(planned)
    return planned


def _expand(study: StudyConfig) -> list[PlannedRun]:
    planned: list[PlannedRun] = []
    for name in study.pretrainings:
        pretrained = pretrained_run(study, name)
        planned.append(PlannedRun(pretrained, name))
        for task, recipe in study.tasks.items():
            for seed in study.seeds:
                dense = TransferRun(
                    pretrained=pretrained, task=recipe, adapt=study.adapt_for(task), seed=seed
                )
                planned.append(PlannedRun(dense, name, None, task, 0, seed))
        for finder in study.finders:
            if finder.pretrainings is not None and name not in finder.pretrainings:
                continue
            for own_task, ticket in finder_runs(study, finder, name):
                planned.append(PlannedRun(ticket, name, finder.name, own_task, finder_seed=ticket.seed))
                for task, recipe in study.tasks.items():
                    if own_task is not None and task != own_task:
                        continue  # a task-specific mask is fine-tuned on its own task only
                    if finder.tasks is not None and task not in finder.tasks:
                        continue
                    for level, variant in _transfer_grid(study, finder, task):
                        for seed in study.seeds:
                            run = TransferRun(
                                pretrained=pretrained,
                                ticket=ticket,
                                level=level,
                                variant=variant,
                                perturb_fraction=study.perturbation.fraction if study.perturbation else 0.1,
                                task=recipe,
                                adapt=study.adapt_for(task),
                                seed=seed,
                            )
                            planned.append(
                                PlannedRun(run, name, finder.name, task, level, seed, variant, ticket.seed)
                            )
    unique: dict[str, PlannedRun] = {}
    for item in planned:
        unique.setdefault(f"{item.run.kind}/{item.run.hash()}", item)
    return sorted(unique.values(), key=lambda item: KIND_ORDER.index(item.run.kind))


# --- checks made before the first run ----------------------------------------------------------


def check_study(study: StudyConfig) -> None:
    """Dataset and objective names and option names of every recipe of the study (ConfigError)."""
    for where, data, objective in _study_recipes(study):
        if data is not None:
            check_data_ref(data, f"{where}.data")
        if objective is not None:
            check_objective_ref(objective, f"{where}.objective")


def _study_recipes(study: StudyConfig) -> list[tuple[str, DataRef | None, ObjectiveRef | None]]:
    recipes: list[tuple[str, DataRef | None, ObjectiveRef | None]] = []
    for name, entry in study.pretrainings.items():
        for part in ("recipe", "upstream"):
            recipe = getattr(entry, part)
            if recipe is not None:
                recipes.append((f"pretrainings.{name}.{part}", recipe.data, recipe.objective))
    recipes += [(f"tasks.{name}", recipe.data, recipe.objective) for name, recipe in study.tasks.items()]
    recipes += [(f"finders.{f.name}", f.data, f.objective) for f in study.finders]
    return recipes


def data_options(name: str) -> list[str]:
    """The options dataset ``name`` takes in a study: its loader's, plus ``max_train`` / ``max_val`` /
    ``max_test`` (deterministic subsets) for classification datasets."""
    spec = get_spec(name)
    try:
        returns = typing.get_type_hints(spec.load).get("return")
    except (NameError, TypeError):
        returns = None
    per_image = returns is SampleSplits  # detection / segmentation samples: no subset options
    return list(spec.options) + ([] if per_image else list(SUBSET_OPTIONS))


def check_data_ref(ref: DataRef, where: str) -> None:
    if ref.name not in DATASETS:
        raise ConfigError(
            f"{where}.name: unknown dataset {ref.name!r}",
            hint=f"choose one of: {', '.join(DATASETS)} (`cvlth datasets` lists them)",
        )
    _check_options(where, f"dataset {ref.name}", ref.options, data_options(ref.name))


def check_objective_ref(ref: ObjectiveRef, where: str) -> None:
    if ref.name not in OBJECTIVES:
        raise ConfigError(
            f"{where}.name: unknown objective {ref.name!r}", hint=f"choose one of: {', '.join(OBJECTIVES)}"
        )
    _check_options(where, f"objective {ref.name}", ref.options, list(objective_option_defaults(ref.name)))


def _check_options(where: str, what: str, given: dict[str, Any], allowed: list[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}.options: {what} has no option {', '.join(map(repr, unknown))}",
            hint=f"its options are: {', '.join(allowed) or 'none'}",
        )


def _classifier_adapt(run: RunConfig) -> Any:
    """The ``adapt`` settings of a run that turns θ_p into a downstream classifier, else None
    (pre-training, upstream IMP and dense tasks keep θ_p's stem as it is)."""
    if isinstance(run, TransferRun) or (isinstance(run, ImpRun) and run.stage == "downstream"):
        recipe = run.recipe if isinstance(run, ImpRun) else run.task
        return None if recipe.objective.name in DENSE_OBJECTIVES else run.adapt
    return None


def needs_same_channels(run: RunConfig) -> bool:
    """Whether ``run`` feeds its images to θ_p's own stem (so their channels must match), rather than
    to a stem rebuilt for the task (classification with ``adapt.small_images`` and no ``keep_stem``)."""
    if training_data(run) is None:
        return False
    adapt = _classifier_adapt(run)
    return adapt is None or not adapt.small_images or adapt.keep_stem


def input_adaptations(run: RunConfig, theta_channels: int, image_channels: int) -> list[str]:
    """What cvlth changes in θ_p so that ``run`` can feed it its training images, one sentence each
    (for the run's log and result). ``theta_channels``: the input channels of θ_p's stem (the study's
    backbone for a pre-training); ``image_channels``: those of the run's training data.

    Raises ConfigError when the images cannot be fed to θ_p at all (its own stem with another
    channel count: dense tasks, ``small_images: false``, ``keep_stem: true``, upstream IMP).
    """
    ref = training_data(run)
    if ref is None:
        return []
    adapt = _classifier_adapt(run)
    if needs_same_channels(run):
        if theta_channels != image_channels:
            raise ConfigError(
                f"{run.kind} run on {ref.name}: θ_p's stem takes {theta_channels}-channel images, {ref.name} "
                f"has {image_channels}-channel images",
                hint="use a θ_p (or backbone.in_channels) that fits the data; classification tasks can "
                "instead rebuild the stem with adapt: {small_images: true, keep_stem: false}",
            )
        return ["max-pool removed (adapt.small_images)"] if adapt is not None and adapt.small_images else []
    adaptations = ["stem conv re-initialised as a 3x3 stride-1 conv, max-pool removed (adapt.small_images)"]
    if theta_channels != image_channels:
        adaptations.append(
            f"stem built for {image_channels} input channels ({ref.name}) instead of θ_p's {theta_channels}"
        )
    return adaptations


def check_input_channels(
    planned: list[PlannedRun], image_channels: Callable[[DataRef], int | None] | None = None
) -> None:
    """For every imported θ_p whose file exists: it is a ResNet cvlth can build, and every run that
    feeds images to its own stem has images with its channel count (see :func:`input_adaptations`).
    ``image_channels`` gives a dataset's channels or None when it is not available here (default:
    load it); datasets are loaded only for those runs."""
    channels_of = image_channels or _image_channels
    checkpoints: dict[str, int] = {}
    for item in planned:
        run = item.run
        pretrained = getattr(run, "pretrained", run)
        if not isinstance(pretrained, ImportRun) or not Path(pretrained.path).is_file():
            continue
        if pretrained.path not in checkpoints:
            checkpoints[pretrained.path] = _checkpoint_channels(pretrained)
        if not needs_same_channels(run):
            continue
        images = channels_of(training_data(run))
        if images is not None:
            try:
                input_adaptations(run, checkpoints[pretrained.path], images)
            except ConfigError as error:
                where = f"pre-training {item.pretraining!r} ({pretrained.path})"
                task = f"task {item.task!r}" if item.task else f"finder {item.finder!r}"
                raise ConfigError(f"{where} → {task}: {error.message}", error.hint) from None


def _checkpoint_channels(run: ImportRun) -> int:
    imported = import_checkpoint(run.path, source=run.source)
    if imported.spec is None:
        raise ConfigError(
            f"{run.path}: {imported.report.architecture.description} is not a ResNet cvlth can build",
            hint="import a torchvision-style ResNet (resnet18/34/50/101/152)",
        )
    return imported.spec.in_channels


def _image_channels(ref: DataRef) -> int | None:
    try:
        return int(load_dataset(ref.name, ref.root, **loader_options(ref.options)).image_shape[0])
    except CvlthError:  # not present here: checked when the run loads it
        return None


@dataclass(frozen=True)
class PlanSummary:
    total: Counter
    done: Counter
    epochs_left: Counter
    images_left: Counter  # training images to process (epochs x train-set size), where the size is known
    images_left_by_data: Counter
    unknown_sizes: frozenset[str]  # datasets whose size could not be read (not present here)
    seconds_per_image: dict[str, float]  # by dataset name, measured on this store's finished runs

    @property
    def runs_left(self) -> int:
        return sum(self.total.values()) - sum(self.done.values())

    @property
    def estimated_seconds(self) -> float | None:
        """Images left times the measured seconds per image of their dataset; None if a dataset
        with work left has no finished run to measure from, or its size is unknown here."""
        if self.unknown_sizes and self.runs_left:
            return None
        if not self.images_left_by_data:
            return 0.0
        if any(name not in self.seconds_per_image for name in self.images_left_by_data):
            return None
        return sum(n * self.seconds_per_image[name] for name, n in self.images_left_by_data.items())


def training_epochs(run: RunConfig) -> int:
    """Epochs of training a run does (IMP: one training per round)."""
    if isinstance(run, PretrainRun):
        return run.recipe.train.epochs
    if isinstance(run, ImpRun):
        trainings = run.rounds - 1 if run.stage == "upstream" else run.rounds
        return trainings * run.recipe.train.epochs
    if isinstance(run, TransferRun):
        return run.task.train.epochs
    return 0


def training_data(run: RunConfig) -> DataRef | None:
    if isinstance(run, PretrainRun | ImpRun):
        return run.recipe.data
    if isinstance(run, TransferRun):
        return run.task.data
    return None


def summarize_plan(
    planned: list[PlannedRun], store: Store, train_size: Callable[[DataRef], int | None] = lambda ref: None
) -> PlanSummary:
    """Count runs done / to do and the training left. ``train_size`` gives a dataset's train-set size."""
    total, done, epochs_left, images_left, by_data = Counter(), Counter(), Counter(), Counter(), Counter()
    unknown: set[str] = set()
    sizes: dict[str, int | None] = {}
    for item in planned:
        kind = item.run.kind
        total[kind] += 1
        if store.is_done(item.run):
            done[kind] += 1
            continue
        epochs = training_epochs(item.run)
        epochs_left[kind] += epochs
        ref = training_data(item.run)
        if ref is None or not epochs:
            continue
        key = ref.model_dump_json()
        if key not in sizes:
            sizes[key] = train_size(ref)
        if sizes[key] is None:
            unknown.add(ref.name)
        else:
            images_left[kind] += epochs * sizes[key]
            by_data[ref.name] += epochs * sizes[key]
    return PlanSummary(
        total, done, epochs_left, images_left, by_data, frozenset(unknown), measured_seconds_per_image(store)
    )


def measured_seconds_per_image(store: Store) -> dict[str, float]:
    """Wall seconds per training image (evaluation included) by dataset, over the finished transfer
    and pre-training runs of ``store``."""
    seconds: Counter = Counter()
    images: Counter = Counter()
    for kind in ("transfer", "pretrain"):
        for result_path in (Path(store.root) / kind).glob("*/result.json"):
            try:
                result = RunFolder(result_path.parent).read_result(verify_artefacts=False)
            except CvlthError:  # a damaged run: `cvlth runs` reports it, the estimate skips it
                continue
            if result.get("wall_seconds") and result.get("images_per_epoch") and result.get("data"):
                seconds[result["data"]] += result["wall_seconds"]
                images[result["data"]] += result["images_per_epoch"] * result.get("epochs", 1)
    return {name: seconds[name] / images[name] for name in images if images[name]}
