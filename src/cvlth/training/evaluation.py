"""Evaluation at the end of an epoch and the result of a run: the test metrics at the epoch with the
best validation metric (the paper's model selection), by the objective's ``selection``."""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from cvlth.data.source import BatchSource
from cvlth.training.objective import Objective


def evaluate_epoch(
    net: nn.Module,
    model: nn.Module,
    extra: dict[str, nn.Module],
    objective: Objective,
    epoch: int,
    val_data: BatchSource | None,
    test_data: BatchSource | None,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Evaluate the bare model (not the DDP wrapper: no collectives, every rank sees all data).

    The test split is evaluated only when validation improves on every earlier epoch (or there is
    no validation split): the result reports test at the best-validation epoch only, and on the
    CPU study's detector a test image costs about a third of a training image (~75 vs ~26 img/s).
    """
    model.eval()
    for module in extra.values():
        module.eval()
    record: dict[str, Any] = {"epoch": epoch}
    if val_data is not None:
        record["val"] = objective.evaluate(model, val_data)
    if test_data is not None and _improves(record, history, objective.selection):
        record["test"] = objective.evaluate(model, test_data)
    net.train()
    return record


def _improves(record: dict[str, Any], history: list[dict[str, Any]], selection: tuple[str, str]) -> bool:
    """Whether ``record`` would become the epoch :func:`summarize` reports."""
    return best_record([*history, record], selection) is record


def best_record(history: list[dict[str, Any]], selection: tuple[str, str]) -> dict[str, Any]:
    """The best-validation evaluation (the first one wins a tie); the last one if none is scored."""
    name, direction = selection
    scored = [r for r in history if "val" in r and math.isfinite(r["val"].get(name, math.nan))]
    if not scored:
        return history[-1]
    pick = max if direction == "max" else min
    return pick(scored, key=lambda r: r["val"][name])


def summarize(
    history: list[dict[str, Any]], selection: tuple[str, str], *, steps: int, epochs: int
) -> dict[str, Any]:
    """The result: final metrics and the test metrics at the best-validation epoch (the paper's)."""
    result: dict[str, Any] = {"epochs": epochs, "steps": steps, "history": history}
    if not history:
        return result
    name, direction = selection
    best = best_record(history, selection)
    result.update(
        final=history[-1],
        best_epoch=best["epoch"],
        selection={"metric": f"val.{name}", "mode": direction},
        best_val=best.get("val"),
        test_at_best_val=best.get("test"),
    )
    return result
