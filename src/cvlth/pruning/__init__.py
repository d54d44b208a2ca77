"""Pruning: the prunable scope, strategies that compute masks, and the training-time enforcer.

>>> from cvlth import pruning
>>> mask = pruning.magnitude(model, sparsity=0.2)             # one-shot global magnitude
>>> mask = pruning.magnitude(model, sparsity=0.2, mask=mask)  # next IMP step (20% of the rest)
>>> from cvlth.pruning.imp import imp   # the whole IMP loop (module and function share the name)

Names are resolved lazily so that ``cvlth.masks`` can import ``cvlth.pruning.scope`` without a cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_SCOPE": "scope",
    "Scope": "scope",
    "iter_prunable": "scope",
    "prunable_parameters": "scope",
    "prunable_state": "scope",
    "strip_wrappers": "scope",
    "MaskEnforcer": "enforcer",
    "STRATEGIES": "strategies",
    "get_strategy": "strategies",
    "global_magnitude": "strategies",
    "imp_sparsity": "strategies",
    "layerwise_magnitude": "strategies",
    "one_shot_magnitude": "strategies",
    "random_global": "strategies",
    "random_like": "strategies",
    "magnitude": "api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cvlth.pruning' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cvlth.pruning.{_EXPORTS[name]}"), name)
