"""Execute the study's run kinds in the run store: each is computed once, resumed if killed.

:func:`ensure` computes a run's dependencies first, then the run itself through
:meth:`cvlth.store.Store.execute` (lock, ``config.yaml``, ``result.json`` written last) with the
function :data:`~cvlth.runs.context.RUN_EXECUTORS` registers for its kind — one module per kind:

* ``pretrain`` / ``import``: :mod:`cvlth.runs.pretrain` (θ_p);
* ``imp`` / ``baseline``: :mod:`cvlth.runs.finders` (masks per level);
* ``transfer``: :mod:`cvlth.runs.transfer` (fine-tuning one ticket with one seed).

Artefacts passed between runs are files in their run folders, named in :mod:`cvlth.run_files`.
Every random choice of a run derives from its seeds (:func:`~cvlth.runs.context.run_seeds`, see
:mod:`cvlth.seeds`), and each result records them under ``seeds``.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from cvlth.config import RunConfig

# The run-kind modules register their executors in RUN_EXECUTORS when imported.
from cvlth.runs import finders, pretrain, transfer  # noqa: F401
from cvlth.runs.context import RUN_EXECUTORS, Context
from cvlth.runs.kinds import dependencies
from cvlth.runs.recorded_data import record_or_check
from cvlth.store import RunFolder
from cvlth.training.scalar_logs import scalar_logging

__all__ = ["RUN_EXECUTORS", "Context", "compute", "ensure"]


def ensure(run: RunConfig, ctx: Context) -> dict[str, Any]:
    """The run's result, computing its dependencies and then the run itself if not done yet."""
    folder = ctx.store.run_dir(run)
    if folder.is_done():
        return folder.read_result()
    for dependency in dependencies(run):
        ensure(dependency, ctx)
    if ctx.threads is not None:
        torch.set_num_threads(ctx.threads)
    start = time.perf_counter()
    with scalar_logging(ctx.logging):  # reaches every training of the run, IMP's rounds too
        result = ctx.store.execute(run, lambda f: compute(run, f, ctx), drop_train_state=True)
    ctx.log(f"  {run.kind} {folder.name} finished in {time.perf_counter() - start:.1f} s")
    return result


def compute(run: RunConfig, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    """Compute ``run`` in ``folder`` (under its lock) with its kind's executor, once its data are
    recorded, or found unchanged when it resumes (:func:`~cvlth.runs.recorded_data.record_or_check`)."""
    record_or_check(run, folder, ctx.store, ctx.data_identities)
    return RUN_EXECUTORS[run.kind](run, folder, ctx)
