"""The study's run kinds, as typed configs: what each run computes is fully named by its config.

Runs nest: a transfer run holds the config of the ticket finder it fine-tunes, which holds the
config of the pre-training it prunes. So a run's hash changes whenever anything upstream of it
changes, and the dependency DAG is read off the configs themselves (:func:`dependencies`).

================  ===============================================================================
kind              computes
================  ===============================================================================
``pretrain``      θ_p: train a backbone on an upstream set with an objective (supervised, ...)
``import``        θ_p: convert an external checkpoint (torchvision, MoCo, SimCLR, timm, cvlth)
``imp``           IMP masks at levels 1..K (upstream on the pre-training task, or downstream)
``baseline``      one-shot magnitude (OMP) or random masks at the same levels
``transfer``      fine-tune (mask, weights) on a downstream task with one seed; level 0 = dense
================  ===============================================================================
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from stat import S_ISREG
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AliasChoices, Field, field_validator, model_validator

from cvlth.config import (
    ConstantSchedule,
    DataRef,
    ObjectiveRef,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    SGDConfig,
    Strict,
    TrainingConfig,
    validate_config,
)
from cvlth.config_yaml import parse_yaml, read_config_text
from cvlth.data.cache import former_defaults, in_former_form, option_defaults
from cvlth.errors import CheckpointError, ConfigError
from cvlth.models.backbones import ARCHITECTURES
from cvlth.models.checkpoints.sources import CheckpointSource
from cvlth.models.task_models import DENSE_OBJECTIVES, check_model_options, model_options_identity
from cvlth.objectives.registry import OBJECTIVES_WITH_HEADS, objective_option_defaults
from cvlth.pruning.imp import HeadPolicy
from cvlth.pruning.strategies import level_sparsity
from cvlth.registry import Registry
from cvlth.run_identity import without_defaults
from cvlth.zoo.files import checkpoint_file

#: Every run kind by its ``kind`` tag: what :func:`load_config` accepts.
RUN_KINDS: Registry[type[RunConfig]] = Registry("run kind", ConfigError)
R = TypeVar("R", bound=type[RunConfig])


def register_run_kind(cls: R) -> R:
    """Class decorator: ``RUN_KINDS.add`` under the class's own ``kind`` tag (named once, there)."""
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str):
        raise TypeError(f"{cls.__name__}.kind needs a Literal default")
    RUN_KINDS.add(kind, cls)
    return cls


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a YAML run config and validate it as the run kind its ``kind`` names."""
    file = Path(path)
    data = parse_yaml(read_config_text(file, "config"), str(file))
    kind = data.get("kind")
    if kind not in RUN_KINDS:
        allowed = ", ".join(repr(k) for k in sorted(RUN_KINDS))
        raise ConfigError(f"{file}: kind: must be one of {allowed} (got {kind!r})")
    try:
        return validate_config(RUN_KINDS[kind], data)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error.message}", error.hint) from error


class BackboneConfig(Strict):
    arch: str = Field(
        "resnet50",
        description="the architecture, a name registered in cvlth.models.ARCHITECTURES (resnet18 ...)",
    )
    width: int = Field(64, ge=1, description="channels of layer1 (64 = torchvision)")
    stem: Literal["imagenet", "cifar"] = Field(
        "imagenet", description="imagenet: 7x7/2 conv and max-pool; cifar: 3x3/1 conv, no max-pool"
    )
    in_channels: int = Field(3, ge=1, description="channels of the input images (1 for grayscale)")

    @field_validator("arch")
    @classmethod
    def _registered(cls, arch: str) -> str:
        """Any architecture in the registry (one registered later is accepted too)."""
        if arch not in ARCHITECTURES:
            raise ValueError(f"must be one of {', '.join(repr(a) for a in ARCHITECTURES)} (got {arch!r})")
        return arch


class Recipe(Strict):
    """How to train on one dataset: data, objective, optimiser, schedule, loop settings."""

    data: DataRef = Field(description="the dataset trained and evaluated on")
    objective: ObjectiveRef = Field(default_factory=ObjectiveRef, description="the loss and metrics")
    optim: OptimConfig = Field(default_factory=SGDConfig, description="the optimiser, chosen by `name`")
    schedule: ScheduleConfig = Field(
        default_factory=ConstantSchedule, description="the learning-rate schedule, chosen by `name`"
    )
    train: TrainingConfig = Field(default_factory=TrainingConfig, description="the training loop's settings")
    model: dict[str, Any] = Field(
        default_factory=dict,
        description="options of a detection/segmentation task's model (see cvlth.models.task_models)",
    )

    @model_validator(mode="after")
    def _known_model_options(self) -> Recipe:
        if self.model:
            try:
                check_model_options(self.objective.name, self.model)
            except ConfigError as error:
                raise ValueError(f"{error.message} ({error.hint})" if error.hint else error.message) from None
        return self

    def normalize_identity(self, data: dict[str, Any]) -> dict[str, Any]:
        """An option at its default value is the same run as the option left out; where the data are
        cached (``cache``, ``cache_dir``) does not change a number. An option whose default changed
        is written as before the change (:func:`~cvlth.data.cache.in_former_form`), so that configs
        keep their hashes."""
        data_options = {k: v for k, v in data["data"]["options"].items() if k not in _CACHE_OPTIONS}
        name = self.data.name
        defaults = {**option_defaults(name), **former_defaults(name)}
        data["data"]["options"] = without_defaults(in_former_form(name, data_options), defaults)
        data["objective"]["options"] = without_defaults(
            data["objective"]["options"], objective_option_defaults(self.objective.name)
        )
        data["model"] = model_options_identity(self.objective.name, data["model"])
        return data


_CACHE_OPTIONS = frozenset({"cache", "cache_dir"})


class AdaptConfig(Strict):
    """How θ_p becomes a downstream classifier (the paper's 32x32 recipe by default)."""

    small_images: bool = Field(True, description="3x3/1 stem conv and no max-pool")
    keep_stem: bool = Field(False, description="load the stem conv instead of re-initialising it")


@register_run_kind
class PretrainRun(RunConfig):
    """θ_p trained here: ``backbone`` on ``recipe``'s data with its objective."""

    kind: Literal["pretrain"] = "pretrain"
    rank: ClassVar[int] = 0
    backbone: BackboneConfig
    recipe: Recipe

    def training_recipe(self) -> Recipe:
        return self.recipe

    def trainings(self) -> int:
        return 1

    def theta_backbone(self, study_backbone: BackboneConfig) -> BackboneConfig:
        return self.backbone

    @property
    def trains_theta_p(self) -> bool:
        return True

    def seed_entropy(self) -> tuple[int, ...]:
        return (self.recipe.train.seed,)

    def summary(self) -> dict[str, object]:
        return {"pretraining": self.recipe.objective.name, "task": self.recipe.data.name}


@register_run_kind
class ImportRun(RunConfig):
    kind: Literal["import"] = "import"
    rank: ClassVar[int] = 0
    path: str = Field(description="checkpoint file; any format cvlth.models.checkpoints reads")
    source: CheckpointSource = "auto"

    def normalize_identity(self, data: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint is identified by its content (sha256), not its path: moving the file
        recomputes nothing. A file not present here (``--plan`` elsewhere) keeps its path."""
        try:
            digest = file_digest(str(checkpoint_file(self.path)))
        except CheckpointError:  # a world checkpoint this cvlth lacks: refused when the run is planned
            digest = None
        if digest is not None:
            data["path"] = f"sha256:{digest}"
        return data

    def summary(self) -> dict[str, object]:
        return {"pretraining": self.path}

    def imported_theta(self) -> ImportRun:
        return self


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str | None:
    """sha256 of a file's content (cached per path, size and mtime); None if it is not a regular file
    (a FIFO would block the read, ``/dev/zero`` never end it; the import refuses them by name)."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    if not S_ISREG(stat.st_mode):
        return None
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _DIGESTS[key] = sha.hexdigest()
    return _DIGESTS[key]


Pretrained = Annotated[PretrainRun | ImportRun, Field(discriminator="kind")]


@register_run_kind
class ImpRun(RunConfig):
    """Iterative magnitude pruning: ``rounds`` levels, each removing ``fraction`` of what is left.

    ``stage="upstream"`` prunes on the pre-training task (recipe = the pre-training's, with its heads)
    and, as the paper does, prunes θ_p once before the first training round, so K levels take
    K-1 trainings (K with ``train_last_level``, which the study sets for upstream IMP). ``stage="downstream"`` trains a new task head from the start (K trainings).
    Every round starts from the rewind point: θ_p (``pretrained``), a random init θ_0 (``init``),
    or the weights after ``rewind_fraction`` of the first round (``early``, the paper's θ_5%).
    """

    kind: Literal["imp"] = "imp"
    rank: ClassVar[int] = 1  # the longest runs: started first
    finds_masks: ClassVar[bool] = True
    pretrained: Pretrained
    stage: Literal["upstream", "downstream"]
    recipe: Recipe
    rounds: int = Field(ge=1, le=40)
    fraction: float = Field(0.2, gt=0, lt=1)
    rewind: Literal["pretrained", "init", "early"] = "pretrained"
    rewind_fraction: float = Field(0.05, gt=0, lt=1)
    heads: HeadPolicy = Field(
        "reference",
        description="how each IMP round starts the objective's heads (projection MLPs, MoCo's queue): "
        "reference = as the paper's code (a head θ_p has is rewound with the backbone, a head it lacks "
        "keeps training across rounds, MoCo's queue carries across rounds); rewind = all rewound; "
        "carry = all kept from the previous round",
    )
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    seed: int = Field(0, ge=0)
    reshuffle_rounds: bool = Field(
        True,
        description="each IMP round reads the epochs after the previous round's (its own data order "
        "and augmentations), as the reference code's one continuous loader; false repeats round 0's",
    )
    train_last_level: bool = Field(
        False,
        description="train the last level's mask once more, so that every level has a trained round "
        "(upstream IMP: Fig. 2 up to the last sparsity, as the paper)",
    )

    def dependencies(self) -> list[RunConfig]:
        return [self.pretrained]

    def theta_backbone(self, study_backbone: BackboneConfig) -> BackboneConfig:
        return self.pretrained.theta_backbone(study_backbone)

    def untrained_test_evaluations(self) -> int:
        return int(self.stage == "upstream")  # θ_p on the pre-training task: Fig. 2's dense reference

    @property
    def trains_theta_p(self) -> bool:
        return self.stage == "upstream"

    def training_recipe(self) -> Recipe:
        return self.recipe

    def trainings(self) -> int:
        """Rounds trained: upstream IMP prunes θ_p before its first round; the last level trains only
        with ``train_last_level``."""
        return self.rounds - (self.stage == "upstream") + self.train_last_level

    def classifier_adapt(self) -> AdaptConfig | None:
        """Downstream IMP trains a new classifier on a classification task (upstream IMP keeps θ_p's)."""
        if self.stage != "downstream" or self.recipe.objective.name in DENSE_OBJECTIVES:
            return None
        return self.adapt

    @property
    def fresh_start(self) -> bool:
        """Whether the tickets start from a random init (θ_0, or θ_5% captured while training from it)
        rather than from θ_p."""
        return self.rewind in ("init", "early")

    def seed_entropy(self) -> tuple[int, ...]:
        return (self.seed, self.recipe.train.seed)

    def summary(self) -> dict[str, object]:
        return {
            "finder": f"imp {self.stage}, rewind {self.rewind}",
            "task": self.recipe.data.name,
            "level": f"1..{self.rounds}",
            "seed": self.seed,
        }

    @property
    def label(self) -> str:
        """The finder's method as the study's tables name it."""
        return f"imp-{self.stage}"

    def normalize_identity(self, data: dict[str, Any]) -> dict[str, Any]:
        """Runs computed before ``train_last_level`` or ``reshuffle_rounds`` existed did neither, and runs whose
        objective has no heads (or that rewind or carry them all) are what they were before head
        policies existed: their hashes stay."""
        if not data.get("train_last_level"):
            data.pop("train_last_level", None)
        if not data.get("reshuffle_rounds"):  # what IMP did before rounds reshuffled
            data.pop("reshuffle_rounds", None)
        policy = data.pop("heads")
        objective = self.recipe.objective.name
        # MoCo's rounds now start from a loaded queue (θ_p's or the previous round's), not a random
        # one: every policy is a new identity there
        if objective in OBJECTIVES_WITH_HEADS and (policy == "reference" or objective == "moco"):
            data["heads"] = policy
        else:
            data["rewind_heads"] = policy != "carry"
        return data

    @model_validator(mode="after")
    def _upstream_rules(self) -> ImpRun:
        if self.stage == "upstream" and self.rewind != "pretrained":
            raise ValueError("upstream IMP rewinds to θ_p: rewind 'init' and 'early' are for downstream IMP")
        return self


@register_run_kind
class BaselineRun(RunConfig):
    """Masks without training: global magnitude of θ_p (``omp``) or uniformly random (``random``)."""

    kind: Literal["baseline"] = "baseline"
    rank: ClassVar[int] = 2
    pretrained: Pretrained
    method: Literal["omp", "random"]
    rounds: int = Field(ge=1, le=40)
    fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0)

    def dependencies(self) -> list[RunConfig]:
        return [self.pretrained]

    finds_masks: ClassVar[bool] = True
    fresh_start: ClassVar[bool] = False  # its tickets start from θ_p

    def theta_backbone(self, study_backbone: BackboneConfig) -> BackboneConfig:
        return self.pretrained.theta_backbone(study_backbone)

    def summary(self) -> dict[str, object]:
        return {"finder": self.method, "level": f"1..{self.rounds}", "seed": self.seed}

    @property
    def label(self) -> str:
        """The finder's method as the study's tables name it."""
        return self.method


Finder = Annotated[ImpRun | BaselineRun, Field(discriminator="kind")]

#: ``ticket``: the mask itself; ``complement``: the paper's m^c = 1 - m (every weight the ticket
#: prunes, so its sparsity is 1 - s); ``complement_matched``: the weights it prunes, subsampled per
#: layer to the ticket's kept count where possible; ``random``: the paper's m_r, a global random mask
#: of the ticket's sparsity; ``random_layerwise``: random with the ticket's per-layer counts (an
#: extension); ``perturbed``: ``perturb_fraction`` of its kept entries swapped with as many pruned ones.
MaskVariant = Literal["ticket", "complement", "complement_matched", "random", "random_layerwise", "perturbed"]


@register_run_kind
class TransferRun(RunConfig):
    """Fine-tune a ticket on a downstream task: the mask ``finder`` found at ``level``. ``finder=None``
    (level 0) is the dense baseline.

    The weights are the finder's rewind point: θ_p, except for downstream IMP rewound to θ_0 or
    θ_5%. The task head is new, drawn from ``seed``. ``variant`` fine-tunes a perturbation of the
    ticket's mask instead (the paper's sensitivity analysis, see :func:`vary_mask`).
    """

    kind: Literal["transfer"] = "transfer"
    rank: ClassVar[int] = 3
    fine_tunes_on_task: ClassVar[bool] = True
    pretrained: Pretrained
    # the run that found the ticket (its config: a run is named by what it is); stored run.json files
    # from before this name say `ticket`
    finder: Finder | None = Field(None, validation_alias=AliasChoices("finder", "ticket"))
    level: int = Field(0, ge=0)
    variant: MaskVariant = "ticket"
    perturb_fraction: float = Field(0.1, gt=0, lt=1)
    task: Recipe
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> TransferRun:
        if self.finder is None:
            if self.level != 0 or self.variant != "ticket":
                raise ValueError("the dense model (finder: null) has level 0 and variant 'ticket'")
            return self
        if not 1 <= self.level <= self.finder.rounds:
            raise ValueError(f"level must be in 1..{self.finder.rounds} (the ticket finder's rounds)")
        if self.finder.pretrained != self.pretrained:
            raise ValueError("the finder ran on another pre-training than `pretrained`")
        return self

    def normalize_identity(self, data: dict[str, Any]) -> dict[str, Any]:
        data["ticket"] = data.pop("finder")  # its name when the first transfers were hashed
        if self.variant != "perturbed":
            data.pop("perturb_fraction")  # only a perturbed mask reads it
        # `random` was layer-matched until it became the paper's global m_r: the layer-matched runs
        # keep their hashes under their new name, the global ones get their own.
        if self.variant == "random_layerwise":
            data["variant"] = "random"
        elif self.variant == "random":
            data["variant"] = "random_global"
        return data

    fresh_start: ClassVar[bool] = False  # its model is built from θ_p (a ticket's rewind weights go in after)

    def dependencies(self) -> list[RunConfig]:
        return [self.pretrained] if self.finder is None else [self.finder]

    def theta_backbone(self, study_backbone: BackboneConfig) -> BackboneConfig:
        return self.pretrained.theta_backbone(study_backbone)

    def training_recipe(self) -> Recipe:
        return self.task

    def trainings(self) -> int:
        return 1

    def classifier_adapt(self) -> AdaptConfig | None:
        return None if self.task.objective.name in DENSE_OBJECTIVES else self.adapt

    def seed_entropy(self) -> tuple[int, ...]:
        """(``seed``, the task's ``train.seed``), and a ticket's finder seed when it is not 0: every
        (finder seed, seed) pair fine-tunes with its own head, batches and mask-variant draws, while
        finder seed 0 (every ticket before finder seeds existed) keeps the streams it always had."""
        finder_seed = self.finder.seed if self.finder is not None else 0
        return (self.seed, self.task.train.seed, *((finder_seed,) if finder_seed else ()))

    def progress_details(self, level: int, seed: int | None, variant: str) -> list[str]:
        if self.finder is None:
            parts = ["dense"]
        else:  # the ticket finder's own pruning fraction, not the default 20%
            parts = [f"level {level} ({level_sparsity(level, self.finder.fraction):.1%})"]
        parts.append(f"seed {seed}")
        if variant != "ticket":
            parts.append(f"[{variant} mask]")
        return parts

    def summary(self) -> dict[str, object]:
        variant = "" if self.variant == "ticket" else f" ({self.variant})"
        finder = "" if self.finder is None else self.finder.summary()["finder"].split(",")[0]
        return {
            "finder": finder,
            "task": self.task.data.name,
            "level": f"{self.level}{variant}",
            "seed": self.seed,
        }


def dependencies(run: RunConfig) -> list[RunConfig]:
    """The runs whose results ``run`` reads (direct dependencies only)."""
    return run.dependencies()


def training_epochs(run: RunConfig) -> int:
    """Epochs of training a run does (IMP: one training per round)."""
    recipe = run.training_recipe()
    return 0 if recipe is None else run.trainings() * recipe.train.epochs


def training_data(run: RunConfig) -> DataRef | None:
    """The dataset a run trains on (None: it trains nothing)."""
    recipe = run.training_recipe()
    return None if recipe is None else recipe.data


#: The run kinds in their one order (:attr:`RunConfig.rank`, then name): plan, tables, scheduler.
def kind_order() -> tuple[str, ...]:
    return tuple(sorted(RUN_KINDS, key=lambda kind: (RUN_KINDS[kind].rank, kind)))
