"""Model-level convenience API (``cvlth.pruning.magnitude(model, sparsity)``)."""

from __future__ import annotations

from torch import nn

from cvlth.masks import Mask
from cvlth.pruning.scope import DEFAULT_SCOPE, Scope, prunable_parameters
from cvlth.pruning.strategies import global_magnitude


def magnitude(
    model: nn.Module,
    sparsity: float,
    mask: Mask | None = None,
    scope: Scope = DEFAULT_SCOPE,
    wrapper: str | None = None,
) -> Mask:
    """Globally prune ``sparsity`` of the weights that ``mask`` still keeps in ``model``."""
    return global_magnitude(prunable_parameters(model, scope, wrapper), sparsity, mask)
