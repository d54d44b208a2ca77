"""The study config: pre-trainings × ticket finders × sparsity levels × downstream tasks × seeds.

A study is a YAML file (see ``configs/demo.yaml``). :func:`cvlth.study.plan.expand` turns it into
the run configs of :mod:`cvlth.runs.kinds`; the study itself is never a run, so editing it only
adds or drops runs, and every run already computed is reused.
"""

from __future__ import annotations

import os
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from cvlth.config import (
    DataRef,
    Name,
    ObjectiveRef,
    OptimConfig,
    ScheduleConfig,
    Strict,
    TrainingConfig,
    validate_config,
)
from cvlth.config_yaml import parse_yaml, read_config_text
from cvlth.errors import ConfigError
from cvlth.models.checkpoints.sources import CheckpointSource
from cvlth.pruning.imp import HeadPolicy
from cvlth.runs.kinds import AdaptConfig, BackboneConfig, MaskVariant, Recipe
from cvlth.study.resources import ExecutorSettings

DEFAULT_METRICS = {"supervised": "accuracy", "detection": "map", "segmentation": "miou"}
#: A metric name with this suffix is read from a run's last evaluation (``test_final``).
FINAL_SUFFIX = "@final"
#: Metrics matched beside the headline one (matching.md's second part, ``matching-beside.json``):
#: detection's AP50, AP75 and VOC07's 11-point AP50 beside AP@[.5:.95]; segmentation's last mIoU
#: beside the reported one (the best over evaluations, the paper's).
BESIDE_METRICS: dict[str, tuple[str, ...]] = {
    "detection": ("map50", "map75", "voc07_ap50"),
    "segmentation": ("miou" + FINAL_SUFFIX,),
}


def _distinct(seeds: list[int]) -> list[int]:
    """``seeds`` if no seed repeats (a repeated seed is the same run); else ValueError."""
    repeated = sorted(seed for seed, times in Counter(seeds).items() if times > 1)
    if repeated:
        raise ValueError(
            f"seed {', '.join(map(str, repeated))} is listed more than once; a repeated seed is the same "
            f"run, so it would count once and the seed-to-seed std would be wrong (got {seeds})"
        )
    return seeds


class PretrainEntry(Strict):
    """One θ_p: trained here (``recipe``) or imported (``import_path``), exactly one of the two.

    ``upstream`` is the pre-training task that upstream IMP trains on (data, objective, ...); it
    defaults to ``recipe`` and must be given for an imported θ_p that upstream IMP should prune.
    """

    recipe: Recipe | None = Field(None, description="train θ_p here with this recipe")
    import_path: str | None = Field(
        None, description="import θ_p from this checkpoint file, or `world:NAME` for a built-in one"
    )
    import_source: CheckpointSource = Field(
        "auto", description="the imported checkpoint's format (auto: detected from its keys)"
    )
    upstream: Recipe | None = Field(
        None, description="the pre-training task upstream IMP trains on (default: recipe)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> PretrainEntry:
        if (self.recipe is None) == (self.import_path is None):
            raise ValueError("give exactly one of `recipe` (train θ_p here) or `import_path` (a checkpoint)")
        return self

    @property
    def upstream_recipe(self) -> Recipe | None:
        return self.upstream or self.recipe


class FinderEntry(Strict):
    """A way to find masks, applied to every pre-training (and, downstream, to every task).

    ``imp`` with ``stage: upstream`` trains on the pre-training's own data and objective; ``optim``,
    ``schedule``, ``train``, ``objective`` and ``data`` override that recipe (the paper: 10 epochs at
    constant lr 1e-4).
    ``imp`` with ``stage: downstream`` trains on each task in ``tasks`` with the task's recipe, overridden
    the same way. ``omp`` and ``random`` need no training. For those and for upstream IMP,
    ``tasks`` limits which tasks the tickets are transferred to (default: all), and ``levels``
    which IMP levels are (default: the study's ``transfer_levels``) — e.g. fewer levels for the
    expensive detection and segmentation transfers.

    ``seeds`` (default ``[0]``) asks for several independent finder runs: each seed is its own IMP
    or random-mask run (data order, augmentation, new heads, random draws all derive from it), and
    every one of its tickets is fine-tuned with every seed of the study. OMP draws nothing at
    random, so it takes one seed.

    ``heads`` (IMP): how each round starts the objective's heads (``cvlth.pruning.imp.HEAD_POLICIES``;
    the default, ``reference``, is the paper's code).
    """

    name: Name = Field(description="the finder's name in tables and reports")
    method: Literal["imp", "omp", "random"] = Field(
        description="iterative magnitude pruning, one-shot magnitude pruning or random masks"
    )
    stage: Literal["upstream", "downstream"] = Field(
        "upstream", description="IMP on the pre-training task (upstream) or on each downstream task"
    )
    rewind: Literal["pretrained", "init", "early"] = Field(
        "pretrained", description="IMP's rewind point: θ_p, a random init θ_0, or θ_5% (early in round 0)"
    )
    rewind_fraction: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="with rewind: early, the share of round 0's steps after which the weights are "
        "captured as the rewind point (the paper's θ_5%: 0.05)",
    )
    heads: HeadPolicy = Field(
        "reference", description="how each IMP round starts the objective's heads: reference, rewind, carry"
    )
    optim: OptimConfig | None = Field(None, description="replaces the IMP recipe's optimiser")
    schedule: ScheduleConfig | None = Field(None, description="replaces the IMP recipe's schedule")
    train: TrainingConfig | None = Field(None, description="replaces the IMP recipe's loop settings")
    objective: ObjectiveRef | None = Field(None, description="replaces the IMP recipe's objective")
    data: DataRef | None = Field(None, description="replaces the IMP recipe's dataset")
    tasks: list[str] | None = Field(
        None, description="the tasks its tickets are found on or transferred to (default: all)"
    )
    pretrainings: list[str] | None = Field(
        None, description="the pre-trainings it is applied to (default: all)"
    )
    levels: list[int] | None = Field(
        None, description="levels fine-tuned downstream for this finder (default: the study's)"
    )
    seeds: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="independent finder runs, one per seed (default: [0])"
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        return None if seeds is None else _distinct(seeds)

    @model_validator(mode="after")
    def _consistent(self) -> FinderEntry:
        if self.method != "imp" and (self.stage != "upstream" or self.rewind != "pretrained"):
            raise ValueError(f"`stage` and `rewind` apply to imp only (method is {self.method!r})")
        default_fraction = type(self).model_fields["rewind_fraction"].default
        if self.rewind != "early" and self.rewind_fraction != default_fraction:  # written studies hold it
            raise ValueError(f"`rewind_fraction` applies to rewind: early only (rewind is {self.rewind!r})")
        if self.method == "omp" and len(self.finder_seeds) > 1:
            raise ValueError(
                f"finder {self.name!r}: omp draws nothing at random, so its seeds {self.finder_seeds} would "
                "all compute the same masks and count one ticket several times; give it one seed (or none)"
            )
        return self

    @property
    def finder_seeds(self) -> list[int]:
        """The seeds of this finder's runs: ``seeds``, or ``[0]`` (one run) when not given."""
        return self.seeds or [0]


class PerturbationEntry(Strict):
    """The paper's sensitivity analysis: fine-tune variants of the masks of some IMP finders.

    For every listed finder (IMP, any stage and rewind: θ_p, θ_0 or θ_5%), level and seed, each
    variant is fine-tuned from the finder's rewind point; ``ticket`` is the ordinary transfer.
    """

    finders: list[str] = Field(min_length=1, description="names of the IMP finders whose masks are varied")
    variants: list[MaskVariant] = Field(
        default_factory=lambda: ["ticket", "complement", "random", "perturbed"],
        description="the mask variants fine-tuned at every level and seed",
    )
    levels: list[int] | None = Field(
        None, description="levels whose variants are fine-tuned (default: the study's transfer levels)"
    )
    fraction: float = Field(0.1, gt=0, lt=1, description="share of kept entries swapped by `perturbed`")


class SpeedEntry(Strict):
    """The inference speed of the study's tickets (``speed.json``, the report's speed section): at
    every transferred level, each ticket's classifier against the dense one, on every engine present
    (:mod:`cvlth.deploy.speed`). Timed after the runs, in the study's process; no run's identity."""

    image_size: int = Field(ge=1, description="input height and width of the timed images")
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 16], min_length=1, description="batch sizes timed (each >= 1)"
    )
    rounds: int = Field(5, ge=1, description="interleaved timed rounds per batch size (medians reported)")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if any(size < 1 for size in sizes):
            raise ValueError(f"every batch size must be >= 1 (got {sizes})")
        return sizes


class LoggingConfig(Strict):
    """Scalar logs every training of the study writes besides ``metrics.jsonl``
    (:mod:`cvlth.training.scalar_logs`); no run's identity. ``cvlth study --tensorboard / --mlflow``
    override them."""

    tensorboard: bool = Field(False, description="event files in <training folder>/tensorboard/")
    mlflow: bool = Field(False, description="MLflow runs in <store>/mlruns (pip install 'cvlth[mlflow]')")


class StudyConfig(Strict):
    name: Name = Field(description="the study's name: its folder <store>/studies/<name>/")
    backbone: BackboneConfig = Field(description="the architecture of every θ_p and ticket")
    pretrainings: dict[Name, PretrainEntry] = Field(
        min_length=1, description="the pre-trained models θ_p, by name"
    )
    tasks: dict[Name, Recipe] = Field(
        min_length=1, description="the downstream tasks, by name, each with its fine-tuning recipe"
    )
    finders: list[FinderEntry] = Field(min_length=1, description="the ways tickets are found")
    rounds: int = Field(ge=1, le=40, description="IMP levels; sparsity after k is 1 - (1-fraction)^k")
    fraction: float = Field(
        0.2, gt=0, lt=1, description="share of the remaining weights each IMP level prunes"
    )
    transfer_levels: list[int] | None = Field(None, description="levels fine-tuned downstream (default: all)")
    task_levels: dict[str, list[int]] = Field(
        default_factory=dict, description="per task, the levels fine-tuned on it (default: transfer_levels)"
    )
    seeds: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="fine-tuning seeds: every ticket and the dense model are fine-tuned once per seed",
    )
    adapt: AdaptConfig = Field(
        default_factory=AdaptConfig,
        description="how θ_p becomes a downstream classifier (tasks without task_adapt)",
    )
    task_adapt: dict[str, AdaptConfig] = Field(
        default_factory=dict,
        description="per task, how θ_p becomes its classifier (default: adapt); e.g. VisDA at 224 px keeps "
        "the ImageNet stem",
    )
    perturbation: PerturbationEntry | None = Field(
        None, description="the perturbation analysis of some IMP finders' masks (default: none)"
    )
    speed: SpeedEntry | None = Field(
        None, description="time the tickets' inference at every transferred level (default: not timed)"
    )
    metric: str | None = Field(None, description="test metric for matching; default: by task objective")
    domain_shift_tasks: list[str] = Field(
        default_factory=list,
        description="tasks whose images differ in kind from the pre-training's (synthetic to real, e.g. "
        "VisDA-2017): the report checks the paper's domain-gap claim (C9) on them; no run's identity",
    )
    task_groups: dict[Name, list[str]] = Field(
        default_factory=dict,
        description="named groups of downstream tasks over which universal matching sparsity is also "
        "reported (the paper's: natural images; all classification; detection and segmentation "
        "separately); every source is also reported over all its tasks (group `all`); no run's identity",
    )
    executor: ExecutorSettings = Field(
        default_factory=ExecutorSettings,
        description="what each run asks a Ray cluster for; no run's identity",
    )
    logging: LoggingConfig = Field(
        default_factory=LoggingConfig, description="TensorBoard / MLflow logs; no run's identity"
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        return _distinct(seeds)

    @model_validator(mode="after")
    def _references(self) -> StudyConfig:
        names = [f.name for f in self.finders]
        if len(set(names)) != len(names):
            raise ValueError(f"finder names must be unique, got {names}")
        for finder in self.finders:
            for task in finder.tasks or []:
                if task not in self.tasks:
                    raise ValueError(
                        f"finder {finder.name!r}: unknown task {task!r} (tasks: {sorted(self.tasks)})"
                    )
            for name in finder.pretrainings or []:
                if name not in self.pretrainings:
                    raise ValueError(
                        f"finder {finder.name!r}: unknown pre-training {name!r} (have {sorted(self.pretrainings)})"
                    )
            if finder.method == "imp" and finder.stage == "upstream":
                for name in finder.pretrainings or list(self.pretrainings):
                    if self.pretrainings[name].upstream_recipe is None:
                        raise ValueError(
                            f"finder {finder.name!r}: upstream IMP on imported pre-training {name!r} needs "
                            "the pre-training task; give the pre-training an `upstream` recipe"
                        )
        if self.perturbation is not None:
            for name in self.perturbation.finders:
                finder = next((f for f in self.finders if f.name == name), None)
                if finder is None or finder.method != "imp":
                    raise ValueError(f"perturbation.finders: {name!r} is not an imp finder of this study")
            for level in self.perturbation.levels or []:
                if not 1 <= level <= self.rounds:
                    raise ValueError(f"perturbation.levels: {level} is outside 1..{self.rounds}")
        for level in self.transfer_levels or []:
            if not 1 <= level <= self.rounds:
                raise ValueError(f"transfer_levels: {level} is outside 1..{self.rounds}")
        for finder in self.finders:
            for level in finder.levels or []:
                if not 1 <= level <= self.rounds:
                    raise ValueError(f"finder {finder.name!r}: levels: {level} is outside 1..{self.rounds}")
        for group, members in self.task_groups.items():
            if group == "all":
                raise ValueError(
                    "task_groups: `all` is reserved (every source is reported over all its tasks)"
                )
            unknown = [task for task in members if task not in self.tasks]
            if unknown:
                raise ValueError(
                    f"task_groups.{group}: unknown task {unknown[0]!r} (tasks: {sorted(self.tasks)})"
                )
            if len(set(members)) < 2:
                raise ValueError(f"task_groups.{group}: a group needs two or more different tasks")
        for task in self.domain_shift_tasks:
            if task not in self.tasks:
                raise ValueError(f"domain_shift_tasks: unknown task {task!r} (tasks: {sorted(self.tasks)})")
        for task in self.task_adapt:
            if task not in self.tasks:
                raise ValueError(f"task_adapt: unknown task {task!r} (tasks: {sorted(self.tasks)})")
        for task, levels in self.task_levels.items():
            if task not in self.tasks:
                raise ValueError(f"task_levels: unknown task {task!r} (tasks: {sorted(self.tasks)})")
            for level in levels:
                if not 1 <= level <= self.rounds:
                    raise ValueError(f"task_levels.{task}: {level} is outside 1..{self.rounds}")
        unknown = self.executor.unknown_names(set(self.tasks), set(self.pretrainings))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: no such task or pre-training in this study")
        return self

    def adapt_for(self, task: str) -> AdaptConfig:
        """How θ_p becomes ``task``'s classifier: its ``task_adapt`` entry, else the study's ``adapt``."""
        return self.task_adapt.get(task, self.adapt)

    def transfer_grid_levels(self, finder: FinderEntry, task: str) -> list[int]:
        """The levels ``finder``'s tickets are fine-tuned at on ``task``: the finder's ``levels`` or
        the task's ``task_levels`` entry in place of ``transfer_levels``; both, where both are given."""
        narrowed = [set(given) for given in (finder.levels, self.task_levels.get(task)) if given]
        return sorted(set.intersection(*narrowed)) if narrowed else self.levels

    def task_metric(self, task: str) -> str:
        """The metric that decides matching on ``task``: accuracy, AP@[.5:.95] (map) or mIoU."""
        if self.metric is not None:
            return self.metric
        return DEFAULT_METRICS.get(self.tasks[task].objective.name, "accuracy")

    def beside_metrics(self, task: str) -> tuple[str, ...]:
        """The metrics matched beside the headline one on ``task`` (none when the study sets ``metric``)."""
        if self.metric is not None:
            return ()
        return BESIDE_METRICS.get(self.tasks[task].objective.name, ())

    @property
    def levels(self) -> list[int]:
        return sorted(set(self.transfer_levels or range(1, self.rounds + 1)))


def builtin_study_path(name: str) -> Path:
    """The packaged study config ``name`` (``demo``, ``smoke``, ``paper-resnet50``, ...)."""
    return Path(str(resources.files("cvlth") / "configs" / f"{name}.yaml"))


def builtin_studies() -> list[str]:
    return sorted(p.stem for p in Path(str(resources.files("cvlth") / "configs")).glob("*.yaml"))


def load_study(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study YAML (a path, or the name of a packaged study such as ``demo``);
    ``overrides`` replace top-level keys."""
    file = Path(path)
    if not file.exists() and str(path) in builtin_studies():
        file = builtin_study_path(str(path))
    hint = f"give a YAML path or one of the packaged studies: {', '.join(builtin_studies())}"
    text = read_config_text(file, "study config", hint)
    data = _expand_variables(parse_yaml(text, str(file)))
    data.update(overrides or {})
    try:
        return validate_config(StudyConfig, data)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error.message}", error.hint) from error


def _expand_variables(value: Any) -> Any:
    """``${VAR}`` and ``$VAR`` in strings become environment values (data and checkpoint paths)."""
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand_variables(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_variables(v) for v in value]
    return value


def study_to_yaml(study: StudyConfig) -> str:
    return yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)
