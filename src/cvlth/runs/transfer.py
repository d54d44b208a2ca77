"""The ``transfer`` run: fine-tune a ticket (or, at level 0, the dense θ_p) on a downstream task with
one seed; a perturbation-analysis transfer fine-tunes a variant of the ticket's mask.
"""

from __future__ import annotations

from typing import Any

from cvlth.pruning.variants import vary_mask
from cvlth.runs.context import RUN_EXECUTORS, Context, run_seeds
from cvlth.runs.finders import load_ticket_mask, ticket_start
from cvlth.runs.kinds import TransferRun
from cvlth.runs.pretrain import load_pretrained
from cvlth.runs.training import logged_adaptations, run_objective, task_model, train_run
from cvlth.store import RunFolder


@RUN_EXECUTORS.register("transfer")
def execute_transfer(run: TransferRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    theta = load_pretrained(run.pretrained, ctx)
    data = ctx.dataset(run.task.data)
    seeds = run_seeds(run)
    adaptations = logged_adaptations(run, theta, data, ctx)
    model = task_model(run, theta, data, seeds)
    mask = None
    if run.finder is not None:
        mask = vary_mask(
            load_ticket_mask(run.finder, run.level, ctx), run.variant, seeds.mask, run.perturb_fraction
        )
        start = ticket_start(run.finder, ctx)
        if start is not None:  # the finder's rewind point (θ_0 or θ_5%), not θ_p
            model.load_state_dict(start, strict=False)
    objective = run_objective(run.task.objective, model, data, seeds.objective)
    result = train_run(model, objective, data, run.task, folder, ctx, mask=mask, seeds=seeds)
    return {
        "level": run.level,
        "sparsity": 0.0 if mask is None else mask.sparsity,
        "seed": run.seed,
        "adaptations": adaptations,
        **result,
    }
