"""Model-level convenience API (``cvlth.pruning.magnitude(model, fraction)``)."""

from __future__ import annotations

from torch import nn

from cvlth.masks import Mask
from cvlth.pruning.strategies import global_magnitude
from cvlth.scope import DEFAULT_SCOPE, Scope, prunable_parameters


def magnitude(
    model: nn.Module,
    fraction: float,
    mask: Mask | None = None,
    scope: Scope = DEFAULT_SCOPE,
    wrapper: str | None = None,
) -> Mask:
    """Globally prune ``fraction`` of the weights that ``mask`` still keeps in ``model`` (all of its
    prunable weights when ``mask`` is None): its sparsity is then ``1 - (1 - fraction) * density``."""
    return global_magnitude(prunable_parameters(model, scope, wrapper), fraction, mask)
