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
from typing import Any

import torch
from torch import nn

from cvlth.data.source import BatchSource
from cvlth.training.objective import Objective, figure2_metric


def evaluate_on_pretraining(
    model: nn.Module, objective: Objective, test_batches: BatchSource, device: str = "cpu"
) -> dict[str, Any]:
    """Test metrics of ``model`` (θ_p with its pre-training ``fc``) under ``objective`` (built with the
    IMP recipe and θ_p's heads loaded). ``model`` is copied, never changed.
    Returns ``{"test": {metric: value, ...}, "metric": <Fig. 2's metric>}`` (the objective's
    :func:`~cvlth.training.objective.figure2_metric`).
    """
    model = copy.deepcopy(model)
    objective.bind(model, None)  # as the training loop does before its evaluations
    for module in [model, *objective.modules().values()]:
        module.to(device)
        module.eval()
    with torch.no_grad():
        test = objective.evaluate(model, test_batches)
    return {"test": test, "metric": figure2_metric(objective)}
