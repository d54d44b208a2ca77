"""train.precision: bf16 / fp16 autocast in the loop, the mask exact in every precision, identity kept."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from cvlth.config import TrainingConfig
from cvlth.objectives.supervised import SupervisedObjective
from cvlth.run_identity import config_hash, identity
from cvlth.training.loop import train
from training_fixtures import TinyNet, half_mask, make_sources, tiny_config


def _fp16_on_cpu() -> str | None:
    """Why fp16 autocast + GradScaler cannot run on this CPU build, or None when it can."""
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            out = F.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 3, 3))
        torch.amp.GradScaler("cpu")
    except (RuntimeError, AssertionError, TypeError) as error:
        return f"this torch ({torch.__version__}) has no fp16 autocast / GradScaler on CPU: {error}"
    return None if out.dtype == torch.float16 else f"CPU autocast gave {out.dtype}, not float16"


class _Blowup(SupervisedObjective):
    """Cross-entropy, multiplied by 1e36 at one step: finite in fp32, infinite once fp16's gradient
    scaler multiplies it by 65,536 — the step the scaler must skip."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step, self.calls = at_step, 0

    def train_step(self, model, batch, generator):
        self.calls += 1
        loss, metrics = super().train_step(model, batch, generator)
        return (loss * 1e36 if self.calls == self.at_step else loss), metrics


def train_tiny(precision: str, objective: SupervisedObjective | None = None, device: str = "cpu"):
    """3 epochs of the tiny masked model; after every step, the pruned weights and the forward's dtype."""
    cfg = tiny_config(checkpoint_every=None)
    training = cfg.train.model_copy(update={"precision": precision})
    torch.manual_seed(0)
    model = TinyNet()
    mask = half_mask(model)
    dtypes: set[torch.dtype] = set()
    model.conv1.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if m.training else None)
    pruned_nonzero: list[int] = []
    weights: list[torch.Tensor] = []

    def check(info) -> None:
        params = dict(model.named_parameters())
        pruned_nonzero.append(
            sum(int((params[n][~m.to(params[n].device)] != 0).sum()) for n, m in mask.items())
        )
        weights.append(model.fc.weight.detach().cpu().clone())

    before = model.fc.weight.detach().clone()
    train_source, val_source, _ = make_sources(training.seed, training.batch_size)
    result = train(
        model,
        objective or SupervisedObjective(),
        train_source,
        training=training,
        optim=cfg.optim,
        schedule=cfg.schedule,
        val_data=val_source,
        mask=mask,
        callbacks=(check,),
        device=device,
        quiet=True,
    )
    return result, dtypes, pruned_nonzero, [before, *weights]


def test_bf16_trains_in_bfloat16_with_the_mask_exact() -> None:
    result, dtypes, pruned_nonzero, weights = train_tiny("bf16")
    assert dtypes == {torch.bfloat16}
    assert pruned_nonzero == [0] * 12  # every one of the 12 steps
    assert all(
        not torch.equal(a, b) for a, b in zip(weights, weights[1:], strict=False)
    )  # each step moved the head
    assert torch.isfinite(torch.tensor(result["final"]["val"]["loss"]))


def test_fp32_stays_float32() -> None:
    _, dtypes, pruned_nonzero, _ = train_tiny("fp32")
    assert dtypes == {torch.float32} and pruned_nonzero == [0] * 12


def test_fp16_scaler_skips_an_overflowing_step_and_keeps_the_mask() -> None:
    reason = _fp16_on_cpu()
    if reason:
        pytest.skip(reason)
    _, dtypes, pruned_nonzero, weights = train_tiny("fp16", _Blowup(at_step=5))
    assert dtypes == {torch.float16}
    assert pruned_nonzero == [0] * 12
    moved = [not torch.equal(a, b) for a, b in zip(weights, weights[1:], strict=False)]
    assert moved == [True] * 4 + [False] + [True] * 7  # step 5 skipped (inf gradients), the rest trained


def test_precision_enters_the_run_identity_only_when_not_fp32() -> None:
    assert "precision" not in identity(TrainingConfig())
    assert identity(TrainingConfig(precision="bf16"))["precision"] == "bf16"
    cfg = tiny_config()
    as_fp32 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "fp32"})})
    as_bf16 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16"})})
    assert config_hash(as_fp32) == config_hash(cfg) != config_hash(as_bf16)
