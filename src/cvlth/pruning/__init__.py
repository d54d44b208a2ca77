"""Pruning: strategies that compute masks, the training-time enforcer, and the IMP loop.

>>> from cvlth import pruning
>>> mask = pruning.magnitude(model, fraction=0.2)             # one-shot: prune 20% of the weights
>>> mask = pruning.magnitude(model, fraction=0.2, mask=mask)  # next IMP step: 20% of the remaining ones
>>> from cvlth.pruning.imp import imp   # the whole IMP loop (module and function share the name)

Which weights are prunable lives in :mod:`cvlth.scope` (below :mod:`cvlth.masks`, which this package
builds on); its names are re-exported here.
"""

from cvlth.pruning.api import magnitude
from cvlth.pruning.enforcer import MaskEnforcer
from cvlth.pruning.strategies import (
    STRATEGIES,
    get_strategy,
    global_magnitude,
    layerwise_magnitude,
    level_sparsity,
    one_shot_magnitude,
    random_global,
    random_like,
)
from cvlth.scope import (
    DEFAULT_SCOPE,
    Scope,
    iter_prunable,
    prunable_parameters,
    prunable_state,
    strip_wrappers,
)

__all__ = [
    "DEFAULT_SCOPE",
    "STRATEGIES",
    "MaskEnforcer",
    "Scope",
    "get_strategy",
    "global_magnitude",
    "iter_prunable",
    "layerwise_magnitude",
    "level_sparsity",
    "magnitude",
    "one_shot_magnitude",
    "prunable_parameters",
    "prunable_state",
    "random_global",
    "random_like",
    "strip_wrappers",
]
