"""A plain training run kind for the tests of the generic run machinery (configs, hashing, the
store): cvlth's own run kinds are the study's (:mod:`cvlth.runs.kinds`). Its fields are those
of the ``train`` kind the store's first runs had, so the pinned hash of ``tests/test_config.py``
stays what it was."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

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
)
from cvlth.runs.kinds import register_run_kind


class BackboneRef(Strict):
    arch: str = "resnet50"
    weights: str | None = Field(None, description="checkpoint path, or None for a random init")
    options: dict[str, Any] = Field(default_factory=dict)


@register_run_kind
class TrainConfig(RunConfig):
    """Train a backbone (plus the objective's heads) on one dataset with one objective."""

    kind: Literal["train"] = "train"
    backbone: BackboneRef = Field(default_factory=BackboneRef)
    data: DataRef
    objective: ObjectiveRef = Field(default_factory=ObjectiveRef)
    optim: OptimConfig = Field(default_factory=SGDConfig)
    schedule: ScheduleConfig = Field(default_factory=ConstantSchedule)
    train: TrainingConfig = Field(default_factory=TrainingConfig)

    def summary(self) -> dict[str, object]:
        return {"task": self.data.name}
