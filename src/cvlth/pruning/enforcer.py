"""Keep pruned weights at exactly zero while a model trains.

After every optimizer step the enforcer multiplies every masked weight by its 0/1 mask in one
fused ``torch._foreach_mul_`` call. There are no forward hooks and no ``weight_orig`` /
``weight_mask`` reparametrisation: the model keeps its plain parameters, so checkpoints are
ordinary state_dicts in which pruned weights are zero.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer

from cvlth.masks import Mask
from cvlth.scope import DEFAULT_SCOPE, Scope, iter_prunable


class MaskEnforcer:
    """Binds a mask to a model's parameters (every copy of each canonical weight).

    Layers the mask keeps whole are skipped, so a dense mask costs nothing. Build the enforcer
    after moving the model to its device; call :meth:`apply` after each optimizer step, or let
    :meth:`attach` register it as an optimizer post-step hook.
    """

    def __init__(self, model: nn.Module, mask: Mask, scope: Scope = DEFAULT_SCOPE) -> None:
        mask.validate(model, scope)
        self.mask = mask
        self._params: list[torch.Tensor] = []
        self._factors: list[torch.Tensor] = []
        for item in iter_prunable(model, scope):
            keep = mask[item.canonical]
            if bool(keep.all()):
                continue
            param = item.parameter
            self._params.append(param)
            self._factors.append(keep.to(device=param.device, dtype=param.dtype))
        self.apply()

    @property
    def masked_tensors(self) -> int:
        return len(self._params)

    @torch.no_grad()
    def apply(self) -> None:
        if self._params:
            torch._foreach_mul_(self._params, self._factors)

    def attach(self, optimizer: Optimizer) -> torch.utils.hooks.RemovableHandle:
        """Re-apply the mask after every ``optimizer.step()``."""
        return optimizer.register_step_post_hook(lambda *_: self.apply())
