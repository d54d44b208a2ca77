"""The Objective protocol: what turns a batch into a loss, and a model into evaluation metrics.

The training loop knows nothing about tasks. An objective (supervised cross-entropy, SimCLR,
MoCo, detection, segmentation) implements three things:

* ``modules()``: extra trainable modules it owns (heads, projection MLPs), by name; the loop puts
  their parameters in the optimizer and their state in every checkpoint;
* ``train_step(model, batch, generator)``: augment the raw batch on the device with ``generator``
  (the loop derives it from (seed, step), so resume is exact) and return ``(loss, metrics)``;
* ``evaluate(model, batches)``: metrics over a whole :class:`~cvlth.data.source.BatchSource`.

``selection`` names the validation metric that picks the best epoch and whether higher is better;
``figure2_metric`` the test metric that compares θ_p with its upstream tickets on the pre-training
task (Fig. 2): the selection metric, unless the objective names another (SimCLR and MoCo: Eq. 2 on
backbone features, which does not depend on a projection head). ``best_without_validation``: with no
validation split, a run reports its best test evaluation (the paper's segmentation number: the
reference keeps the best mIoU over its evaluations on VOC val) rather than its last one.

Two hooks, no-ops in :class:`ObjectiveBase` (which every objective of cvlth extends), that the loop
calls around training:

* ``bind(model, mask)``: once per :func:`~cvlth.training.loop.train` call, before ``modules()`` is
  read and before the optimizer and the DDP wrapper are built (MoCo copies the key encoder here;
  SSL objectives freeze the unused ``fc``); ``mask`` is the run's mask or ``None``;
* ``after_step(model)``: after every optimizer step *and* the mask enforcement, with the bare model
  (MoCo's EMA update of the key encoder).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from cvlth.data.source import BatchSource
from cvlth.errors import CvlthError


@runtime_checkable
class Objective(Protocol):
    #: (metric name, "max" or "min"): the validation metric that chooses the best epoch.
    selection: tuple[str, Literal["max", "min"]]

    def modules(self) -> dict[str, nn.Module]:
        """Extra trainable modules by name (``{}`` when the objective has none)."""
        ...

    def train_step(
        self, model: nn.Module, batch: Any, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """The scalar loss to minimise, and metrics to log (tensors are read with ``float()``)."""
        ...

    def evaluate(self, model: nn.Module, batches: BatchSource) -> dict[str, float]:
        """Metrics over every batch of epoch 0 of ``batches`` (the model is in eval mode)."""
        ...

    def bind(self, model: nn.Module, mask: Any) -> Any:
        """Start a training of ``model`` (under ``mask``, or None)."""
        ...

    def after_step(self, model: nn.Module) -> None:
        """After every optimizer step and the mask enforcement."""
        ...


class ObjectiveBase:
    """The hooks' defaults: an objective with no modules of its own and nothing to do around steps."""

    selection: tuple[str, Literal["max", "min"]]
    #: The pre-training task's metric for Fig. 2 (None: the selection metric).
    figure2_metric: str | None = None
    #: Without a validation split, report the best test evaluation (True) or the last one (False).
    best_without_validation: bool = False

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def bind(self, model: nn.Module, mask: Any = None) -> Any:
        return None

    def after_step(self, model: nn.Module) -> None:
        return None


#: SimCLR's head name, and the name an imported projection head (MoCo v2 / SimCLR ``fc.0``/``fc.2``) is
#: saved under; MoCo loads it into its query and key heads alike, as the reference code does.
def figure2_metric(objective: Objective) -> str:
    """The metric Fig. 2 compares θ_p and its upstream tickets in (see the module docstring)."""
    return getattr(objective, "figure2_metric", None) or objective.selection[0]


PROJECTION = "projection"
_PROJECTION_ALIASES = frozenset({"query_head", "key_head"})


def head_states(objective: Objective) -> dict[str, dict[str, torch.Tensor]]:
    """The state of each module the objective owns, by name."""
    return {name: module.state_dict() for name, module in objective.modules().items()}


def head_state(heads: Mapping[str, Any], name: str) -> Any:
    """The state saved for the objective's module ``name`` (a projection head saved once as
    ``projection`` stands for MoCo's query and key heads), or None."""
    return heads.get(name, heads.get(PROJECTION) if name in _PROJECTION_ALIASES else None)


def load_heads(objective: Objective, heads: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Load each module the objective has from ``heads`` (a projection head saved once as
    ``projection`` goes into MoCo's query and key heads); modules not in ``heads`` keep their init."""
    for name, module in objective.modules().items():
        state = head_state(heads, name)
        if state is None:
            continue
        try:
            module.load_state_dict(state)
        except RuntimeError as error:
            raise CvlthError(
                f"θ_p's {name} does not fit the objective's: {str(error).splitlines()[0]}",
                hint="set the objective's head size options (e.g. MoCo `dim`, SimCLR `projection_dim`) "
                "to the checkpoint's",
            ) from error
