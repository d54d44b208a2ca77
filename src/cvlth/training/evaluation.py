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
    *,
    last: bool = False,
) -> dict[str, Any]:
    """Evaluate the bare model (not the DDP wrapper: no collectives, every rank sees all data).

    The test split is evaluated only when validation improves on every earlier epoch (or there is
    no validation split): the result reports test at the best-validation epoch only, and on the
    CPU study's detector a test image costs about a third of a training image (~75 vs ~26 img/s).
    An objective that reports its last test evaluation beside its best one
    (``best_without_validation``: segmentation) also gets the ``last`` epoch's.
    """
    model.eval()
    for module in extra.values():
        module.eval()
    record: dict[str, Any] = {"epoch": epoch}
    if val_data is not None:
        record["val"] = objective.evaluate(model, val_data)
    final = last and getattr(objective, "best_without_validation", False)
    if test_data is not None and (final or _improves(record, history, objective.selection)):
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


#: How a run's reported test metrics were chosen (``reported.rule``).
AT_BEST_VALIDATION = "test at the best-validation epoch"
BEST_TEST = "best test evaluation (no validation split)"
LAST_TEST = "last test evaluation (no validation split)"


def summarize(
    history: list[dict[str, Any]],
    selection: tuple[str, str],
    *,
    steps: int,
    epochs: int,
    best_without_validation: bool = False,
) -> dict[str, Any]:
    """The result: final metrics, the test metrics at the best-validation epoch, and ``reported``:
    the test metrics a study compares (with the rule that chose them) -- those at the
    best-validation epoch, or without a validation split the last test evaluation, or the best one
    when ``best_without_validation`` (the paper's segmentation rule). ``test_final`` is the last
    evaluation's test metrics, when it has them."""
    result: dict[str, Any] = {"epochs": epochs, "steps": steps, "history": history}
    if not history:
        return result
    name, direction = selection
    best = best_record(history, selection)
    validated = any("val" in record for record in history)
    reported, rule = best, AT_BEST_VALIDATION if validated else LAST_TEST
    if not validated and best_without_validation:
        reported, rule = best_test_record(history, selection), BEST_TEST
    result.update(
        final=history[-1],
        best_epoch=best["epoch"],
        selection={"metric": f"val.{name}", "mode": direction},
        best_val=best.get("val"),
        test_at_best_val=best.get("test"),
        reported={"rule": rule, "epoch": reported["epoch"], "test": reported.get("test")},
    )
    if "test" in history[-1]:
        result["test_final"] = history[-1]["test"]
    return result


def best_test_record(history: list[dict[str, Any]], selection: tuple[str, str]) -> dict[str, Any]:
    """The evaluation with the best test metric (the first one wins a tie); the last if none is scored."""
    name, direction = selection
    scored = [r for r in history if "test" in r and math.isfinite(r["test"].get(name, math.nan))]
    if not scored:
        return history[-1]
    pick = max if direction == "max" else min
    return pick(scored, key=lambda r: r["test"][name])
