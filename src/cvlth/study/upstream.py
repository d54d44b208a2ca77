"""Fig. 2's dense row: θ_p itself, untrained, on its own pre-training task.

Upstream IMP evaluates every ticket on the pre-training task's test split after its round's
training (``rounds[k].test_at_best_val`` of the IMP result). The dense reference of that figure is
θ_p evaluated the same way -- same objective (with the pre-training's heads), same test batches --
but without any training: :func:`evaluate_on_pretraining`. Its metric is the objective's selection
metric: top-1 ``accuracy`` for supervised pre-training, the Eq. 2 ``retrieval_accuracy`` for SimCLR
and MoCo. The evaluation is deterministic (fixed batches and, for SSL, fixed evaluation views), so
it is done once: its standard deviation is 0 and the matching threshold is the value itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from cvlth.data.classification import DatasetSplits
from cvlth.data.source import BatchSource
from cvlth.objectives.features import feature_dim
from cvlth.objectives.registry import build_objective
from cvlth.study.runs import Recipe


def evaluate_on_pretraining(
    model: nn.Module,
    heads: Mapping[str, Mapping[str, torch.Tensor]],
    recipe: Recipe,
    data: DatasetSplits,
    test_batches: BatchSource,
    device: str = "cpu",
) -> dict[str, Any]:
    """Test metrics of ``model`` (θ_p with its pre-training ``fc``) under ``recipe``'s objective.

    ``heads``: the objective's heads saved with θ_p (projection, MoCo query/key heads); ``model`` is
    copied, never changed. Returns ``{"test": {metric: value, ...}, "metric": <selection metric>}``.
    """
    model = copy.deepcopy(model)
    objective = build_objective(
        recipe.objective, feature_dim=feature_dim(model), data=data, seed=recipe.train.seed
    )
    for name, module in objective.modules().items():
        if name in heads:
            module.load_state_dict(heads[name])
    bind = getattr(objective, "bind", None)  # as the training loop does before its evaluations
    if bind is not None:
        bind(model, None)
    modules = [model, *objective.modules().values()]
    for module in modules:
        module.to(device)
        module.eval()
    with torch.no_grad():
        test = objective.evaluate(model, test_batches)
    return {"test": test, "metric": objective.selection[0]}
