"""Typed run configs (pydantic v2), YAML in and out, and the canonical hash that names a run.

A run is identified by its config alone: :func:`config_hash` turns a validated config into a short
hex string over canonical JSON (sorted keys, defaults included, floats normalised), and the run
store files the run under ``<store>/<kind>/<hash>/`` (the OpenLTH design).

Run kinds are small subclasses of :class:`RunConfig` with a ``kind: Literal[...]`` field; register
them with :func:`cvlth.study.run_kinds.register_run_kind` so ``load_config`` can dispatch on ``kind``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cvlth.errors import ConfigError

HASH_LENGTH = 16


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, instances are immutable, and float fields
    (lr, weight decay, momentum, ...) must be finite: ``.inf`` and ``.nan`` would train silently to NaN."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- optimizers ---------------------------------------------------------------------------


class SGDConfig(Strict):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    nesterov: bool = False


class AdamWConfig(Strict):
    name: Literal["adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.01, ge=0)


class LarsConfig(Strict):
    """SGD with layer-wise trust ratios (You et al. 2017), as used for SimCLR pre-training."""

    name: Literal["lars"] = "lars"
    lr: float = Field(0.3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-6, ge=0)
    trust_coefficient: float = Field(0.001, gt=0)
    eps: float = Field(1e-8, gt=0)


OptimConfig = Annotated[SGDConfig | AdamWConfig | LarsConfig, Field(discriminator="name")]


# --- learning-rate schedules (all stepped per iteration; epochs may be fractional) ------------


class ConstantSchedule(Strict):
    name: Literal["constant"] = "constant"
    warmup_epochs: float = Field(0.0, ge=0)


class MultiStepSchedule(Strict):
    name: Literal["multistep"] = "multistep"
    milestones: tuple[float, ...] = Field(default=(), description="epochs at which lr *= gamma")
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if list(value) != sorted(value) or any(m <= 0 for m in value):
            raise ValueError(f"must be positive and increasing (got {list(value)})")
        return value


class CosineSchedule(Strict):
    name: Literal["cosine"] = "cosine"
    final_factor: float = Field(0.0, ge=0, le=1, description="lr at the end, as a fraction of lr")
    warmup_epochs: float = Field(0.0, ge=0)


class PolySchedule(Strict):
    name: Literal["poly"] = "poly"
    power: float = Field(0.9, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)


ScheduleConfig = Annotated[
    ConstantSchedule | MultiStepSchedule | CosineSchedule | PolySchedule, Field(discriminator="name")
]


# --- training loop settings ---------------------------------------------------------------


class TrainingConfig(Strict):
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)
    checkpoint_every_steps: int | None = Field(None, ge=1, description="besides every epoch end")
    eval_every_epochs: int = Field(1, ge=1)
    channels_last: bool = False
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="torch.autocast dtype of the training forward; fp16 adds a gradient scaler"
    )

    def normalize_identity(self, data: dict[str, Any]) -> dict[str, Any]:
        """fp32 is every run computed before this setting existed: their hashes stay."""
        if data.get("precision") == "fp32":
            del data["precision"]
        return data


# --- references to things other modules build ---------------------------------------------


class BackboneRef(Strict):
    arch: str = "resnet50"
    weights: str | None = Field(None, description="checkpoint path, or None for a random init")
    options: dict[str, Any] = Field(default_factory=dict)


class DataRef(Strict):
    name: str
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ObjectiveRef(Strict):
    name: str = "supervised"
    options: dict[str, Any] = Field(default_factory=dict)


# --- run kinds ----------------------------------------------------------------------------

C = TypeVar("C", bound="RunConfig")


class RunConfig(Strict):
    """Base of every run kind. Subclasses narrow ``kind`` to a ``Literal``."""

    kind: str

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        return validate_config(cls, parse_yaml(text, "<string>"))

    def hash(self) -> str:
        return config_hash(self)


class TrainConfig(RunConfig):
    """Train a backbone (plus the objective's heads) on one dataset with one objective."""

    kind: Literal["train"] = "train"
    backbone: BackboneRef = Field(default_factory=BackboneRef)
    data: DataRef
    objective: ObjectiveRef = Field(default_factory=ObjectiveRef)
    optim: OptimConfig = Field(default_factory=SGDConfig)
    schedule: ScheduleConfig = Field(default_factory=ConstantSchedule)
    train: TrainingConfig = Field(default_factory=TrainingConfig)


# --- validation, error messages ---------------------------------------------------------------


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


#: Bounds on what a config file may hold, far above any real study (the packaged ones are < 5 kB and
#: < 500 nodes). A few lines of YAML aliases ("billion laughs") or a list of a million seeds would
#: otherwise be expanded in memory before validation could say anything.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 10_000
MAX_CONFIG_DEPTH = 50
#: Seeds multiply every run of a study: 9,500 seeds (within the node bound) take ~2 min to plan.
MAX_LIST_ITEMS = 1_000


def read_config_text(file: Path, what: str, hint: str | None = None) -> str:
    """A config file's text; one that is too large is refused from its size, before it is read."""
    try:
        size = file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{file}: refused: {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a {what} may have",
                hint="is this the right file?",
            )
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {file}: {exc.strerror}", hint=hint) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not a text file ({exc.reason})", hint="is this the right file?") from exc


class _Refused(yaml.YAMLError):
    """A config file is valid YAML but exceeds a bound, or repeats a key."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint or (
            f"a config may hold at most {MAX_CONFIG_NODES:,} values with every alias expanded "
            f"and {MAX_CONFIG_DEPTH} levels of nesting; is this the right file?"
        )


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-1`` as a float (YAML 1.2), not as a string, refuses duplicate
    keys, and bounds nesting depth and the node count with every alias expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._composed += 1
        if self._composed > MAX_CONFIG_NODES:
            raise _Refused(f"more than {MAX_CONFIG_NODES:,} YAML nodes (values, keys, lists, mappings)")
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _Refused(f"nested deeper than {MAX_CONFIG_DEPTH} levels ({_line(self.peek_event())})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_sequence_node(self, anchor: Any) -> yaml.SequenceNode:
        node = super().compose_sequence_node(anchor)
        if len(node.value) > MAX_LIST_ITEMS:
            raise _Refused(
                f"the list at {_line(node)} has {len(node.value):,} items, more than {MAX_LIST_ITEMS:,}",
                hint=f"a config list (seeds, levels, finders, ...) may hold at most {MAX_LIST_ITEMS:,} items",
            )
        return node

    def construct_document(self, node: yaml.Node) -> Any:
        # Aliases share one node, so the file's own size says nothing about what they expand to.
        _expanded_size(node, {}, set())
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _Refused(
                    f"duplicate key {key!r} at line {line} (first at line {first_line[key]})",
                    hint="YAML would keep only the last value silently; delete or merge one of them",
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _line(item: Any) -> str:
    return f"line {item.start_mark.line + 1}"


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded; refuses past MAX_CONFIG_NODES or a cycle."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _Refused(f"an alias refers to a mapping or list that contains it ({_line(node)})")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        children = (
            node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        )
        for child in children:
            size += _expanded_size(child, sizes, open_nodes)
            if size > MAX_CONFIG_NODES:
                raise _Refused(
                    f"its aliases expand to more than {MAX_CONFIG_NODES:,} YAML nodes "
                    f"(a mapping or list at {_line(node)} is repeated too often)"
                )
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    size = len(text.encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where}: refused: {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config may have",
            hint="a study or run config is a few kilobytes; is this the right file?",
        )
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError(f"{where}: refused: {exc}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a config must be a YAML mapping, got {type(data).__name__}")
    return data


# --- canonical hash -----------------------------------------------------------------------


#: Part of every hash: bumped when what a config means changes (2: independent seeds per run, θ_5%
#: from θ_0, exact complement, identity normalisation), so older stores are not silently reused.
IDENTITY_VERSION = 2


def canonical_json(cfg: BaseModel) -> str:
    """Sorted keys, defaults included, every float written as ``repr(float(x))``, over the config's
    *identity* (see :func:`identity`)."""
    return json.dumps(_canonical(identity(cfg)), sort_keys=True, separators=(",", ":"))


def config_hash(cfg: BaseModel) -> str:
    """First 16 hex digits of sha256 over :func:`canonical_json`: stable across runs and machines."""
    text = f"cvlth-identity/{IDENTITY_VERSION}\n{canonical_json(cfg)}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def identity(value: Any) -> Any:
    """What a config *is*, as plain data: its fields, recursively, after each model's
    ``normalize_identity(data)`` hook (if it has one) removed what does not change the run — an
    option at its default value, a field the run does not use, a file's path instead of its content."""
    if isinstance(value, BaseModel):
        data = {name: identity(getattr(value, name)) for name in type(value).model_fields}
        normalize = getattr(value, "normalize_identity", None)
        return normalize(data) if normalize is not None else data
    if isinstance(value, dict):
        return {key: identity(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [identity(item) for item in value]
    return value


def without_defaults(options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``options`` minus the entries equal to their default (``[0.3, 1.0]`` equals ``(0.3, 1.0)``)."""
    return {
        key: value
        for key, value in options.items()
        if key not in defaults or _canonical(identity(value)) != _canonical(identity(defaults[key]))
    }


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"float:{value!r}"
        # A tagged string keeps 0.1 / 1e-1 / 0.10 equal and 1 (int) distinct from 1.0 in free dicts.
        return f"float:{float(value)!r}"
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ConfigError(f"config value {value!r} of type {type(value).__name__} cannot be hashed")
