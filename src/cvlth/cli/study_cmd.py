"""``cvlth study CONFIG [--store DIR] [--plan]``: run (or plan) a whole study."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvlth.cli.app import app, stops_cleanly_on_interrupt
from cvlth.cli.checks import check_device
from cvlth.config import DataRef
from cvlth.data.cache import DatasetCache
from cvlth.errors import CvlthError
from cvlth.report import write_report
from cvlth.results.matching import ALL_TASKS, MatchingResult, universal_matching
from cvlth.runs.kinds import kind_order
from cvlth.store import Store
from cvlth.study.config import StudyConfig, load_study
from cvlth.study.cost_files import choose_measurements
from cvlth.study.costs import cost_lines, estimate_cost
from cvlth.study.plan import PlannedRun, expand, summarize_plan
from cvlth.study.runner import STUDY_EXECUTORS, run_study

StoreOption = Annotated[Path, typer.Option("--store", help="Run store root (default ./runs).")]


@app.command()
@stops_cleanly_on_interrupt
def study(
    config: Annotated[
        Path, typer.Argument(help="Study YAML, or a packaged study: demo, smoke, paper-resnet50.")
    ],
    store: StoreOption = Path("runs"),
    plan: Annotated[
        bool, typer.Option("--plan", help="Print the DAG and what is left; run nothing.")
    ] = False,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="With --plan: hash every file of every finished run (slow on big stores) instead of "
            "checking sizes and modification times.",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, ...")] = "cpu",
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes running independent runs at once (one line per run, no progress "
            "bars). Each uses --threads threads, so the numbers equal a serial study's.",
        ),
    ] = 1,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Intra-op threads every run computes with (default: all cores). Results depend on it "
            "(CPU kernels reduce in a thread-dependent order): a run resumes only with the same count.",
        ),
    ] = None,
    executor: Annotated[
        str,
        typer.Option(
            help="local (this machine: serially, or on --workers processes) or ray (every run a Ray task; "
            "the store must be on a filesystem every node sees).",
        ),
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="With --executor ray: the cluster to join (HOST:6379; default: a local Ray)."),
    ] = None,
    retries: Annotated[
        int, typer.Option(min=0, help="Times a failed run starts again (--workers or --executor ray).")
    ] = 0,
    cost_file: Annotated[
        Path | None,
        typer.Option(help="With --plan: the per-image cost measurement to estimate compute time from."),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard",
            help="Log every training's scalars to TensorBoard (<run>/tensorboard/); default: the study's "
            "`logging: {tensorboard: ...}`. Changes no run and no number.",
        ),
    ] = None,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            "--mlflow/--no-mlflow",
            help="Log every training's scalars to MLflow (file store <store>/mlruns; needs "
            "pip install 'cvlth[mlflow]'); default: the study's `logging: {mlflow: ...}`.",
        ),
    ] = None,
    cost_device: Annotated[
        str | None,
        typer.Option(
            help="With --plan: estimate for the stored measurement of this device (part of its name, "
            "e.g. H100) instead of this machine's --device."
        ),
    ] = None,
) -> None:
    """Run every pre-training, ticket search and transfer of a study, then print the matching table."""
    console = Console()
    STUDY_EXECUTORS.lookup(executor)  # an unknown name fails before anything is read
    if not plan:
        check_device(device)
    study_config = with_logging(load_study(config), tensorboard=tensorboard, mlflow=mlflow)
    run_store = Store(store)
    if plan:
        choice = choose_measurements(device, cost_file, cost_device)  # a bad --cost-file fails first
        planned, damaged = print_plan(console, study_config, run_store, full_hash=verify)
        estimate = estimate_cost(
            planned, run_store, study_config.backbone, choice.measurements, damaged=damaged
        )
        output = str(cost_file) if cost_file is not None else None
        for line in cost_lines(estimate, choice, str(config), device, output, threads):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    outcome = run_study(
        study_config,
        run_store,
        device=device,
        quiet=quiet,
        log=lambda message: console.print(message, markup=False),  # names are the user's: "[/]x"
        workers=workers,
        threads=threads,
        executor=executor,
        address=address,
        retries=retries,
    )
    console.print(matching_rich_table(outcome.matching))
    report = write_study_report(
        outcome.folder, run_store, lambda message: console.print(message, markup=False)
    )
    if report is not None:
        console.print(f"report: {escape(str(report))}")
    console.print(
        f"{outcome.runs} runs ({outcome.computed} computed now) in {outcome.seconds:.0f} s; "
        f"results in {escape(str(outcome.folder))}/ (matching.md, matching.json)"
    )


def with_logging(study_config: StudyConfig, **flags: bool | None) -> StudyConfig:
    """The study with its ``logging`` overridden by the flags given (None: not given)."""
    given = {name: value for name, value in flags.items() if value is not None}
    if not given:
        return study_config
    return study_config.model_copy(update={"logging": study_config.logging.model_copy(update=given)})


def print_plan(
    console: Console, study_config: StudyConfig, run_store: Store, full_hash: bool = False
) -> tuple[list[PlannedRun], set[str]]:
    """The plan's table of runs and what is left (damaged and stale runs named); returns the planned
    runs and the folders (``kind/hash``) of the damaged and stale ones (to do again)."""
    planned = expand(study_config)
    summary = summarize_plan(planned, run_store, train_size=_train_size, full_hash=full_hash)
    damaged = Counter(name.split("/")[0] for name in summary.damaged)
    stale = Counter(name.split("/")[0] for name in summary.stale)
    extra = [*(["damaged"] if damaged else []), *(["stale"] if stale else [])]
    columns = ["run kind", "runs", "done", *extra, "to do"]
    table = Table(
        *columns, "training epochs to do", "training images to do", title=f"study {escape(study_config.name)}"
    )
    for kind in kind_order():
        if summary.total[kind]:
            table.add_row(
                kind,
                str(summary.total[kind]),
                str(summary.done[kind]),
                *([str(damaged[kind])] if damaged else []),
                *([str(stale[kind])] if stale else []),
                str(summary.total[kind] - summary.done[kind]),
                f"{summary.epochs_left[kind]:,}",
                f"{summary.images_left[kind]:,}" if summary.images_left[kind] else "-",
            )
    console.print(table)
    again = [f"{len(summary.damaged)} damaged"] if summary.damaged else []
    again += [f"{len(summary.stale)} stale"] if summary.stale else []
    again_text = f" ({', '.join(again)})" if again else ""
    console.print(
        f"{sum(summary.total.values())} runs, {summary.runs_left} to do{again_text}, "
        f"{sum(summary.epochs_left.values()):,} training epochs to do"
    )
    print_damage(console, summary.damaged, sum(summary.done.values()), run_store, full_hash)
    print_stale(console, summary.stale, run_store)
    if summary.unknown_sizes:
        unknown = escape(", ".join(sorted(summary.unknown_sizes)))
        console.print(f"sizes unknown (data not found here): {unknown}")
    return planned, set(summary.damaged) | set(summary.stale)


MAX_DAMAGED_LISTED = 20


def print_damage(
    console: Console, damaged: dict[str, str], intact: int, run_store: Store, full_hash: bool
) -> None:
    """How the finished runs were checked, the damaged ones (what is wrong) and what to do about them."""
    how = (
        "every file hashed (sha256)"
        if full_hash
        else "sizes and modification times; --verify hashes every file"
    )
    if not damaged:
        if intact:
            console.print(f"{intact} finished runs checked, all intact ({how})", highlight=False)
        return
    console.print(
        f"damaged: {len(damaged)} finished run(s) fail the integrity check ({how}); a study stops at "
        "a damaged run, so they are counted to do:",
        highlight=False,
        soft_wrap=True,
    )
    listed = sorted(damaged)[:MAX_DAMAGED_LISTED]
    for name in listed:
        console.print(f"  {escape(damaged[name])}", highlight=False, soft_wrap=True)  # names the run
    store = escape(str(run_store.root))
    if len(damaged) > len(listed):
        console.print(
            f"  ... and {len(damaged) - len(listed)} more (`cvlth runs --store {store}` lists every one)"
        )
    _print_forget(console, listed, store)


def print_stale(console: Console, stale: dict[str, str], run_store: Store) -> None:
    """The finished runs whose data changed since they started (what changed) and what to do."""
    if not stale:
        return
    console.print(
        f"stale: {len(stale)} finished run(s) were computed on data that changed since they started "
        "(file list, sizes and modification times); `cvlth study` refuses to reuse them, so they are "
        "counted to do:",
        highlight=False,
        soft_wrap=True,
    )
    listed = sorted(stale)[:MAX_DAMAGED_LISTED]
    for name in listed:
        console.print(f"  {escape(stale[name])}", highlight=False, soft_wrap=True)  # names the run
    store = escape(str(run_store.root))
    if len(stale) > len(listed):
        console.print(f"  ... and {len(stale) - len(listed)} more")
    _print_forget(console, listed, store)


def _print_forget(console: Console, listed: list[str], store: str) -> None:
    forget = " ".join(f"--forget {escape(name)}" for name in listed)
    console.print(
        f"recompute: `cvlth runs --store {store} {forget}` deletes their folders; the next "
        "`cvlth study` computes them again",
        highlight=False,
        soft_wrap=True,
    )


def _train_size(ref: DataRef) -> int | None:
    """The training-set size, or None when the dataset is not available here."""
    try:
        return len(DatasetCache().get(ref.name, ref.root, ref.options).train)
    except CvlthError:
        return None


def matching_rich_table(results: list[MatchingResult]) -> Table:
    """The matching table, with each source's universal matching sparsity (all its downstream tasks
    at once) on its downstream rows."""
    universal = {
        u.source: u.universal_matching_sparsity for u in universal_matching(results) if u.group == ALL_TASKS
    }
    table = Table(title="matching tickets (extreme and universal matching sparsity)")
    # Names wrap (fold), never end in "…": at 80 columns imp-mnist, imp-mnist-init and imp-mnist-early
    # must stay three different names.
    table.add_column("ticket source", overflow="fold", min_width=16)
    table.add_column("task", overflow="fold")
    for name in ("dense", "extreme", "universal"):
        table.add_column(name, no_wrap=True)
    for r in results:
        row_universal = "" if r.on_pretraining_task else _percent(universal.get(r.source))
        table.add_row(
            escape(r.source),
            escape(r.task),
            f"{r.dense.mean:.4f}±{r.dense.std:.4f}",
            _percent(r.extreme_matching_sparsity),
            row_universal,
        )
    return table


def _percent(sparsity: float | None) -> str:
    return "none" if sparsity is None else f"{sparsity:.2%}"


def write_study_report(folder: Path, store: Store, log: Callable[[str], None]) -> Path | None:
    """The study's report. A failure it can explain (a CvlthError, a disk error) is logged, not raised:
    every result is already saved. Anything else is a bug and fails the command."""
    try:
        return write_report(folder, Path(store.root))
    except (CvlthError, OSError) as error:
        log(
            f"could not write the report ({type(error).__name__}: {error}); retry with `cvlth report {folder}`"
        )
        return None
