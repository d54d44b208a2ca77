"""A run kind is one unit: a toy kind registered in two places (its config class and its executor)
is planned, run, reused, resumed after a failure and described like cvlth's own (the recipe of
docs/architecture.md's "a run kind")."""

from typing import Any, ClassVar, Literal

import pytest

from cvlth.cli import run_cli
from cvlth.config import RunConfig
from cvlth.store import RunFolder, Store
from cvlth.study.context import RUN_EXECUTORS, Context, run_seeds
from cvlth.study.execute import ensure
from cvlth.study.plan import PlannedRun, summarize_plan
from cvlth.study.run_kinds import ImportRun, kind_order, register_run_kind

THETA = ImportRun(path="world:supervised", source="cvlth")
FAIL_ONCE: set[int] = set()


# --- the toy kind: place 1, its config and everything the study asks of it ----------------------
@register_run_kind
class CountRun(RunConfig):
    """Counts the prunable tensors of θ_p (a stand-in for any computation on another run's result)."""

    kind: Literal["toy-count"] = "toy-count"
    rank: ClassVar[int] = 2
    pretrained: ImportRun
    seed: int = 0

    def dependencies(self) -> list[RunConfig]:
        return [self.pretrained]

    def summary(self) -> dict[str, object]:
        return {"finder": "toy count", "seed": self.seed}


# --- place 2: its executor -------------------------------------------------------------------------
@RUN_EXECUTORS.register("toy-count")
def execute_count(run: CountRun, folder: RunFolder, ctx: Context) -> dict[str, Any]:
    from cvlth.run_files import THETA_P
    from cvlth.scope import prunable_state
    from cvlth.study.context import run_folder
    from cvlth.study.run_pretrain import load_pretrained

    if run.seed in FAIL_ONCE:
        FAIL_ONCE.discard(run.seed)
        raise RuntimeError("killed")
    assert (run_folder(ctx, run.pretrained) / THETA_P).is_file()  # its dependency ran first
    theta = load_pretrained(run.pretrained, ctx)
    draw = int(run_seeds(run).init)  # its random streams derive from its seed like every kind's
    return {"tensors": len(prunable_state(theta.state_dict)), "draw": draw}


def test_a_toy_run_kind_is_planned_run_reused_resumed_and_described(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps narrow tables
    store = Store(tmp_path)
    runs = [CountRun(pretrained=THETA, seed=seed) for seed in (0, 1)]
    planned = [PlannedRun(THETA, "supervised"), *(PlannedRun(run, "supervised", "toy") for run in runs)]
    assert kind_order().index("toy-count") > kind_order().index("imp")  # one ordering, by rank

    summary = summarize_plan(planned, store)
    assert summary.total["toy-count"] == 2 and summary.runs_left == 3

    FAIL_ONCE.add(1)
    ctx = Context(store=store, quiet=True, log=lambda _: None)
    first = ensure(runs[0], ctx)  # computes its dependency (the import) first
    assert first["tensors"] == 16 + 3  # a ResNet-18: its block convs and 3 downsamples (not the stem)
    with pytest.raises(RuntimeError, match="killed"):
        ensure(runs[1], ctx)
    assert not store.is_done(runs[1])
    second = ensure(runs[1], ctx)  # run again: it resumes and finishes
    assert second["draw"] != first["draw"]  # its own seed, its own streams
    assert summarize_plan(planned, store).runs_left == 0
    assert ensure(runs[0], ctx) == first  # finished work is reused, not recomputed

    assert run_cli(["runs", "--store", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "toy-count" in out and "toy count" in out
