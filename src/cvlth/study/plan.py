"""Expand a study into its DAG of runs, and say what is done and what is left.

Runs are listed in dependency order (pre-trainings, then ticket finders, then transfers), so
executing the list front to back never waits. Each run also carries the labels the matching
table needs (pre-training, finder, task, level, seed, the finder's seed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from cvlth.config import DataRef, RunConfig, format_error
from cvlth.errors import ConfigError
from cvlth.runs.adaptation import (
    checkpoint_channels,
    image_channels_of,
    input_adaptations,
    needs_same_channels,
)
from cvlth.runs.kinds import (
    BaselineRun,
    ImportRun,
    ImpRun,
    PretrainRun,
    Recipe,
    TransferRun,
    training_data,
    training_epochs,
)
from cvlth.runs.recorded_data import Identities, stale_reason
from cvlth.store import Store
from cvlth.study.config import FinderEntry, StudyConfig
from cvlth.study.validation import check_study
from cvlth.zoo.files import checkpoint_file


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
        "rewind_fraction": finder.rewind_fraction,
        "heads": finder.heads,
        "seed": seed,
    }
    if finder.stage == "upstream":
        recipe = _override(study.pretrainings[name].upstream_recipe, finder)
        # Every level trains once on the pre-training task, the last included (Fig. 2 up to it).
        return [(None, ImpRun(stage="upstream", recipe=recipe, train_last_level=True, **common))]
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
            for own_task, finder_run in finder_runs(study, finder, name):
                planned.append(
                    PlannedRun(finder_run, name, finder.name, own_task, finder_seed=finder_run.seed)
                )
                for task, recipe in study.tasks.items():
                    if own_task is not None and task != own_task:
                        continue  # a task-specific mask is fine-tuned on its own task only
                    if finder.tasks is not None and task not in finder.tasks:
                        continue
                    for level, variant in _transfer_grid(study, finder, task):
                        for seed in study.seeds:
                            run = TransferRun(
                                pretrained=pretrained,
                                finder=finder_run,
                                level=level,
                                variant=variant,
                                perturb_fraction=study.perturbation.fraction if study.perturbation else 0.1,
                                task=recipe,
                                adapt=study.adapt_for(task),
                                seed=seed,
                            )
                            planned.append(
                                PlannedRun(
                                    run, name, finder.name, task, level, seed, variant, finder_run.seed
                                )
                            )
    unique: dict[str, PlannedRun] = {}
    for item in planned:
        unique.setdefault(f"{item.run.kind}/{item.run.hash()}", item)
    return sorted(unique.values(), key=lambda item: item.run.rank)  # stable: the plan's order within a rank


def check_input_channels(
    planned: list[PlannedRun], image_channels: Callable[[DataRef], int | None] | None = None
) -> None:
    """For every imported θ_p whose file exists: it is a ResNet cvlth can build, and every run that
    feeds images to its own stem has images with its channel count (see :func:`input_adaptations`).
    ``image_channels`` gives a dataset's channels or None when it is not available here (default:
    load it); datasets are loaded only for those runs."""
    channels_of = image_channels or image_channels_of
    checkpoints: dict[str, int] = {}
    for item in planned:
        run = item.run
        pretrained = run.imported_theta()
        if pretrained is None or not checkpoint_file(pretrained.path).is_file():
            continue
        if pretrained.path not in checkpoints:
            checkpoints[pretrained.path] = checkpoint_channels(pretrained)
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


@dataclass(frozen=True)
class PlanSummary:
    total: Counter
    done: Counter
    epochs_left: Counter
    images_left: Counter  # training images to process (epochs x train-set size), where the size is known
    unknown_sizes: frozenset[str]  # datasets whose size could not be read (not present here)
    damaged: dict[str, str] = field(default_factory=dict)  # run folder (kind/hash) -> what is wrong; to do
    stale: dict[str, str] = field(default_factory=dict)  # run folder -> how its data changed; to do

    @property
    def runs_left(self) -> int:
        return sum(self.total.values()) - sum(self.done.values())


def summarize_plan(
    planned: list[PlannedRun],
    store: Store,
    train_size: Callable[[DataRef], int | None] = lambda ref: None,
    full_hash: bool = False,
) -> PlanSummary:
    """Count runs done / damaged / stale / to do and the training left. A finished run is done only
    if its result and files pass the store's check (sizes and mtimes; ``full_hash``: every sha256),
    else it is damaged, and if the files of its dataset are those it started on (where they are
    present here; :mod:`cvlth.runs.recorded_data`), else it is stale; both are counted to do.
    ``train_size`` gives a dataset's train-set size."""
    damaged: dict[str, str] = {}
    stale: dict[str, str] = {}
    identities: Identities = {}
    total, done, epochs_left, images_left = Counter(), Counter(), Counter(), Counter()
    unknown: set[str] = set()
    sizes: dict[str, int | None] = {}
    for item in planned:
        kind = item.run.kind
        total[kind] += 1
        folder = store.run_dir(item.run)
        if folder.is_done():
            why = folder.damage(full_hash)
            if why is None and (why_stale := stale_reason(item.run, folder, store, identities)) is not None:
                stale[folder.name] = why_stale
            elif why is None:
                done[kind] += 1
                continue
            else:
                damaged[folder.name] = why
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
    return PlanSummary(
        total,
        done,
        epochs_left,
        images_left,
        frozenset(unknown),
        damaged,
        stale,
    )
