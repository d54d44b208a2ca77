"""Optimizers and learning-rate schedules built from their configs.

Every schedule is a pure function of the iteration (``lr_factor``) wrapped in a ``LambdaLR`` that is
stepped once per optimizer step, so its whole state is the step count kept in the checkpoint.
Epoch-valued settings (warm-up, milestones) may be fractional: they are converted with the number of
steps per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from cvlth.config import (
    AdamWConfig,
    ConstantSchedule,
    CosineSchedule,
    LarsConfig,
    MultiStepSchedule,
    OptimConfig,
    PolySchedule,
    ScheduleConfig,
    SGDConfig,
)


def build_optimizer(params: Iterable[torch.nn.Parameter] | Iterable[dict], cfg: OptimConfig) -> Optimizer:
    """The optimizer of ``cfg`` over ``params``: parameters, or parameter groups (dicts with
    ``params`` and their own ``lr``; every schedule scales each group's own lr)."""
    params = list(params)
    if isinstance(cfg, SGDConfig):
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
    if isinstance(cfg, AdamWConfig):
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if isinstance(cfg, LarsConfig):
        return Lars(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            trust_coefficient=cfg.trust_coefficient,
            eps=cfg.eps,
        )
    raise TypeError(f"no optimizer for config {cfg!r}")


def lr_factor(cfg: ScheduleConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The multiplier of the base learning rate for optimizer step ``step`` (0-based)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    epoch = step / steps_per_epoch
    if isinstance(cfg, ConstantSchedule):
        return 1.0
    if isinstance(cfg, MultiStepSchedule):
        return cfg.gamma ** sum(1 for milestone in cfg.milestones if epoch >= milestone)
    progress = (step - warmup) / max(1, total_steps - warmup)
    if isinstance(cfg, CosineSchedule):
        return cfg.final_factor + (1 - cfg.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    if isinstance(cfg, PolySchedule):
        return (1 - min(progress, 1.0)) ** cfg.power
    raise TypeError(f"no schedule for config {cfg!r}")


def build_scheduler(optimizer: Optimizer, cfg: ScheduleConfig, steps_per_epoch: int, epochs: int) -> LambdaLR:
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    factor = partial(lr_factor, cfg, steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs)
    return LambdaLR(optimizer, lr_lambda=factor)


class Lars(Optimizer):
    """SGD with momentum and a per-tensor trust ratio; biases and BN (1-d tensors) are not adapted."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, eps=eps
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if param.ndim > 1:
                    grad = grad.add(param, alpha=group["weight_decay"])
                    weight_norm, grad_norm = param.norm(), grad.norm()
                    trust = group["trust_coefficient"] * weight_norm / (grad_norm + group["eps"])
                    ratio = torch.where((weight_norm > 0) & (grad_norm > 0), trust, torch.ones_like(trust))
                    grad = grad.mul(ratio)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
