"""Typed run configs (pydantic v2): optimizers, schedules, the loop's settings, references to what
other modules build, and the run kinds' base, with pydantic's errors rewritten as one ConfigError.

A run is identified by its config alone: :meth:`RunConfig.hash` is :func:`cvlth.run_identity.config_hash`
(canonical JSON over the config's identity), and the run store files the run under
``<store>/<kind>/<hash>/`` (the OpenLTH design). Reading a config file (bounded YAML) is
:mod:`cvlth.config_yaml`.

Run kinds are small subclasses of :class:`RunConfig` with a ``kind: Literal[...]`` field; register
them with :func:`cvlth.runs.kinds.register_run_kind` so ``load_config`` can dispatch on ``kind``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cvlth.config_yaml import parse_yaml
from cvlth.errors import ConfigError
from cvlth.run_identity import config_hash


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable, and float fields
    (lr, weight decay, momentum, ...) must be finite: ``.inf`` and ``.nan`` would train silently to NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- optimizers ---------------------------------------------------------------------------


class SGDConfig(Strict):
    name: Literal["sgd"] = Field("sgd", description="selects SGD")
    lr: float = Field(0.1, gt=0, description="peak learning rate (the schedule scales it per step)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum factor")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty coefficient")
    nesterov: bool = Field(False, description="use Nesterov momentum")


class AdamWConfig(Strict):
    name: Literal["adamw"] = Field("adamw", description="selects AdamW")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (the schedule scales it per step)")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="decay rates of the first and second moment estimates"
    )
    eps: float = Field(1e-8, gt=0, description="term added to the denominator for numerical stability")
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay coefficient")


class LarsConfig(Strict):
    """SGD with layer-wise trust ratios (You et al. 2017), as used for SimCLR pre-training."""

    name: Literal["lars"] = Field("lars", description="selects LARS")
    lr: float = Field(0.3, gt=0, description="peak learning rate (the schedule scales it per step)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum factor")
    weight_decay: float = Field(1e-6, ge=0, description="L2 penalty coefficient (added to the gradient)")
    trust_coefficient: float = Field(
        0.001, gt=0, description="scale of the per-tensor trust ratio |w| / |grad|"
    )
    eps: float = Field(1e-8, gt=0, description="term added to the gradient norm in the trust ratio")


OptimConfig = Annotated[SGDConfig | AdamWConfig | LarsConfig, Field(discriminator="name")]


# --- learning-rate schedules (all stepped per iteration; epochs may be fractional) ------------

_WARMUP = "epochs of linear warm-up from lr / warm-up steps to lr (0: none; may be fractional)"


class ConstantSchedule(Strict):
    name: Literal["constant"] = Field("constant", description="selects a constant learning rate")
    warmup_epochs: float = Field(0.0, ge=0, description=_WARMUP)


class MultiStepSchedule(Strict):
    name: Literal["multistep"] = Field("multistep", description="selects step decay at milestones")
    milestones: tuple[float, ...] = Field(default=(), description="epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0, description="factor the learning rate is multiplied by at each milestone")
    warmup_epochs: float = Field(0.0, ge=0, description=_WARMUP)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if list(value) != sorted(value) or any(m <= 0 for m in value):
            raise ValueError(f"must be positive and increasing (got {list(value)})")
        return value


class CosineSchedule(Strict):
    name: Literal["cosine"] = Field("cosine", description="selects cosine decay after the warm-up")
    final_factor: float = Field(0.0, ge=0, le=1, description="lr at the end, as a fraction of lr")
    warmup_epochs: float = Field(0.0, ge=0, description=_WARMUP)


class PolySchedule(Strict):
    name: Literal["poly"] = Field("poly", description="selects polynomial decay after the warm-up")
    power: float = Field(0.9, gt=0, description="exponent: lr factor is (1 - progress) ** power")
    warmup_epochs: float = Field(0.0, ge=0, description=_WARMUP)


ScheduleConfig = Annotated[
    ConstantSchedule | MultiStepSchedule | CosineSchedule | PolySchedule, Field(discriminator="name")
]


# --- training loop settings ---------------------------------------------------------------


class TrainingConfig(Strict):
    epochs: int = Field(1, ge=1, description="passes over the training split")
    batch_size: int = Field(128, ge=1, description="images per optimiser step (all processes together)")
    seed: int = Field(
        0, ge=0, description="the training seed: the run's random streams derive from it (and the run's seed)"
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="steps between extra checkpoints, besides every epoch end"
    )
    eval_every_epochs: int = Field(
        1, ge=1, description="epochs between val/test evaluations (the last epoch is always evaluated)"
    )
    channels_last: bool = Field(False, description="train in the channels-last memory format")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="torch.autocast dtype of the training forward; fp16 adds a gradient scaler"
    )

    def normalize_identity(self, data: dict[str, Any]) -> dict[str, Any]:
        """fp32 is every run computed before this setting existed: their hashes stay."""
        if data.get("precision") == "fp32":
            del data["precision"]
        return data


# --- references to things other modules build ---------------------------------------------


class DataRef(Strict):
    name: str = Field(description="a registered dataset name (`cvlth datasets` lists them)")
    root: str | None = Field(
        None,
        description="folder holding the dataset's files (default: $CVLTH_DATA/<name>, else ./data/<name>)",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the dataset's options by name (e.g. image_size, val_size, max_train)",
    )


class ObjectiveRef(Strict):
    name: str = Field(
        "supervised", description="the objective: supervised, simclr, moco, detection or segmentation"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="the objective's options by name (e.g. augment, temperature, queue_size)",
    )


# --- run kinds ----------------------------------------------------------------------------

C = TypeVar("C", bound="RunConfig")


class RunConfig(Strict):
    """Base of every run kind. Subclasses narrow ``kind`` to a ``Literal`` and say, in their own
    class, what the study needs to know about them (the defaults: a run that reads no other run and
    trains nothing). Nothing outside a run kind's module asks which kind a run is."""

    kind: str
    #: Scheduling order of the kinds: among runs that may start, lower ranks first (the one ordering
    #: of the plan, its table and the parallel scheduler; the long IMP runs before the mask baselines).
    rank: ClassVar[int] = 9
    #: Whether the run finds ticket masks (one per level), which transfers fine-tune.
    finds_masks: ClassVar[bool] = False
    #: Whether the run fine-tunes on a downstream task: its result is a cell of the matching table.
    fine_tunes_on_task: ClassVar[bool] = False

    @property
    def trains_theta_p(self) -> bool:
        """Whether the run trains θ_p's own network (pre-training, upstream IMP) rather than a task
        model built from it."""
        return False

    def dependencies(self) -> list[RunConfig]:
        """The runs whose results this run reads (direct dependencies only)."""
        return []

    def training_recipe(self) -> Any:
        """The recipe (``cvlth.runs.kinds.Recipe``) this run trains with; None: it trains nothing."""
        return None

    def trainings(self) -> int:
        """How many times the run trains its recipe (IMP: once per round it trains)."""
        return 0

    def untrained_test_evaluations(self) -> int:
        """Test-split evaluations besides its trainings' (upstream IMP evaluates θ_p once, untrained)."""
        return 0

    def theta_backbone(self, study_backbone: Any) -> Any:
        """The architecture of the θ_p this run computes with (``BackboneConfig``): the study's, unless
        the run trains θ_p here (or reads a run that does)."""
        return study_backbone

    def classifier_adapt(self) -> Any:
        """The ``adapt`` settings when this run turns θ_p into a new downstream classifier, else None."""
        return None

    def seed_entropy(self) -> tuple[int, ...]:
        """The root entropy of every random stream of the run (``cvlth.seeds.derive_seeds``)."""
        return (getattr(self, "seed", 0),)

    def summary(self) -> dict[str, object]:
        """What the run is, from its config alone (``cvlth runs``): pretraining, finder, task, level, seed."""
        return {}

    def progress_details(self, level: int, seed: int | None, variant: str) -> list[str]:
        """What the study's progress line adds after the run's kind, names and task (a transfer: its
        level, seed and mask variant; the planned ``level``/``seed``/``variant`` of the run)."""
        return []

    def imported_theta(self) -> RunConfig | None:
        """The import run (``ImportRun``) that this run's θ_p comes from, or None when θ_p is trained
        here. Runs built on θ_p hold it as ``pretrained``."""
        pretrained = getattr(self, "pretrained", None)
        return None if pretrained is None else pretrained.imported_theta()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        return validate_config(cls, parse_yaml(text, "<string>"))

    def hash(self) -> str:
        return config_hash(self)


# --- validation, error messages ---------------------------------------------------------------


#: A name that is also a folder or file name (a study, a task, a finder, a pre-training): one safe
#: path component, never ``.``/``..``, hidden or with a separator or markup, at most 255 bytes.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
NAME_RULE = "letters, digits, `_`, `-` and `.`, not starting with `.` or `-`, at most 255 characters"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=255, description=NAME_RULE)]


def validate_config(cls: type[C], data: Any) -> C:
    """``cls.model_validate(data)`` with pydantic's errors rewritten as one ConfigError."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        lines = [format_error(err) for err in exc.errors()]
        head = f"invalid {cls.__name__} ({len(lines)} error{'s' * (len(lines) > 1)}):"
        raise ConfigError("\n  ".join([head, *lines])) from None


def format_error(err: Any) -> str:
    """One pydantic error dict as ``field.path: must be ... (got X)``."""
    loc = [str(part) for part in err["loc"]]
    ctx = err.get("ctx") or {}
    kind = err["type"]
    got = err.get("input")
    if kind == "union_tag_invalid":
        loc.append(str(ctx.get("discriminator", "name")).strip("'"))
        return f"{'.'.join(loc)}: must be one of {ctx['expected_tags']} (got {ctx['tag']!r})"
    if kind == "union_tag_not_found":
        field = str(ctx.get("discriminator", "name")).strip("'")
        choices = _VARIANTS.get(loc[-1] if loc else "", set())
        allowed = f" (one of {', '.join(repr(c) for c in sorted(choices))})" if choices else ""
        return f"{'.'.join(loc)}.{field}: required, to choose the variant{allowed}"
    # Tagged unions put the tag in the path (optim.sgd.lr); the user wrote optim.lr.
    loc = [part for part in loc if not _is_union_tag(part)]
    path = ".".join(loc) or "<root>"
    if kind == "missing":
        return f"{path}: required"
    if kind == "extra_forbidden":
        return f"{path}: unknown field (check the spelling; extra fields are not allowed)"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == NAME_PATTERN:
        return f"{path}: not a usable name: {NAME_RULE} (got {got!r})"
    if kind == "literal_error":
        return f"{path}: must be one of {ctx['expected'].replace(' or ', ', ')} (got {got!r})"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{path}: must be {bounds[kind]} {limit} (got {got!r})"
    message = err["msg"].removeprefix("Value error, ")
    message = message[0].lower() + message[1:]
    return f"{path}: {message}" if "(got" in message else f"{path}: {message} (got {got!r})"


def _tags_of(union: Any) -> set[str]:
    members = get_args(get_args(union)[0])
    return {member.model_fields["name"].default for member in members}


_VARIANTS = {"optim": _tags_of(OptimConfig), "schedule": _tags_of(ScheduleConfig)}
_UNION_TAGS = set().union(*_VARIANTS.values())


def _is_union_tag(part: str) -> bool:
    return part in _UNION_TAGS
