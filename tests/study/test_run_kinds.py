"""A run kind is one unit: a toy kind registered in two places (its config class and its executor)
is planned, run, reused, resumed after a failure and described like cvlth's own (the recipe of
docs/architecture.md's "a run kind")."""

import ast
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from cvlth.cli import run_cli
from cvlth.config import RunConfig
from cvlth.runs.context import RUN_EXECUTORS, Context, run_seeds
from cvlth.runs.execute import ensure
from cvlth.runs.kinds import RUN_KINDS, ImportRun, kind_order, register_run_kind
from cvlth.store import RunFolder, Store
from cvlth.study.plan import PlannedRun, summarize_plan

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
    from cvlth.runs.context import run_folder
    from cvlth.runs.pretrain import load_pretrained
    from cvlth.scope import prunable_state

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


# --- nothing outside a run kind's own modules asks which kind a run is ---------------------------
SRC = Path(__file__).resolve().parents[2] / "src" / "cvlth"
#: The run kinds' own modules: their configs (and the base class) and their executors.
RUN_KIND_MODULES = {
    "config.py",
    "runs/kinds.py",
    "runs/pretrain.py",
    "runs/finders.py",
    "runs/training.py",
    "runs/transfer.py",
}


def kind_branches(source: str, classes: set[str], kinds: set[str]) -> list[int]:
    """Lines of ``source`` that branch on a run kind: ``isinstance(x, <a run kind class>)`` or a
    comparison of a ``.kind`` attribute with a run kind's tag."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "isinstance"
            and len(node.args) == 2
        ):
            named = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
            named |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
            if named & classes:
                lines.append(node.lineno)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            reads_kind = any(isinstance(o, ast.Attribute) and o.attr == "kind" for o in operands)
            tags = {c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)}
            if reads_kind and tags & kinds:
                lines.append(node.lineno)
    return lines


def test_no_module_outside_the_run_kinds_branches_on_a_run_kind():
    kinds = set(RUN_KINDS)
    classes = {RUN_KINDS[kind].__name__ for kind in kinds}
    assert {"ImpRun", "TransferRun"} <= classes and {"imp", "transfer"} <= kinds
    # the check sees both spellings of the question
    made_up = (
        'if isinstance(run, (ImportRun, TransferRun)):\n    pass\nif item.run.kind != "imp":\n    pass\n'
    )
    assert kind_branches(made_up, classes, kinds) == [1, 3]
    assert kind_branches('if run.finds_masks and item.kind == "ticket":\n    pass\n', classes, kinds) == []

    offences = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        if module not in RUN_KIND_MODULES:
            offences += [f"{module}:{line}" for line in kind_branches(path.read_text(), classes, kinds)]
    assert not offences, f"ask the run kind (a method or ClassVar of RunConfig) instead: {offences}"
