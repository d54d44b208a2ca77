"""Run a whole study: execute its DAG in the store, then write the matching table.

The study's own folder, ``<store>/studies/<name>/``, holds ``study.yaml`` (what was run),
``matching.json`` and ``matching.md`` (downstream tasks, Fig. 2's pre-training task, universal
sparsity), ``claims.json`` (the paper's claims checked), ``tickets.json``, ``perturbation.json`` and the report. Everything else lives in the runs' folders, so a killed
study resumes by running the same command again.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvlth.atomic import atomic_write_text
from cvlth.errors import ConfigError
from cvlth.masks import Mask
from cvlth.models.task_models import TASK_MODEL_NAMES
from cvlth.pruning.strategies import level_sparsity
from cvlth.registry import Registry
from cvlth.results.claims import check_claims
from cvlth.results.matching import (
    PRETRAINING_TASK,
    MatchingResult,
    SeedStats,
    beside_markdown,
    matching,
    matching_markdown,
)
from cvlth.results.outputs import (
    BESIDE_FILE,
    CLAIMS_FILE,
    MATCHING_FILE,
    PERTURBATION_FILE,
    TICKETS_FILE,
    MatchingEntry,
    PerturbationCurve,
    PerturbationPoint,
    TicketEntry,
    TicketLevel,
    matching_entries,
    write_entries,
)
from cvlth.run_files import mask_path
from cvlth.runs.execute import Context, ensure
from cvlth.runs.recorded_data import refuse_stale_runs
from cvlth.store import Store
from cvlth.study.claim_inputs import claim_inputs, mask_facts
from cvlth.study.config import FINAL_SUFFIX, StudyConfig, study_to_yaml
from cvlth.study.parallel import run_parallel
from cvlth.study.plan import PlannedRun, expand
from cvlth.study.ray_executor import run_on_ray
from cvlth.study.resources import ExecutorSettings
from cvlth.study.speed import write_speed
from cvlth.training.scalar_logs import RunLogging


@dataclass(frozen=True)
class StudyOutcome:
    folder: Path
    matching: list[MatchingResult]
    runs: int
    computed: int
    seconds: float


def study_folder(study: StudyConfig, store: Store) -> Path:
    return Path(store.root) / "studies" / study.name


def run_study(
    study: StudyConfig,
    store: Store,
    *,
    device: str = "cpu",
    quiet: bool = False,
    log: Callable[[str], None] = print,
    workers: int = 1,
    threads: int | None = None,
    executor: str = "local",
    address: str | None = None,
    retries: int = 0,
) -> StudyOutcome:
    """Run every planned run not done yet, then the tables.

    Every run computes with ``threads`` intra-op threads (default: this process's, i.e. torch's
    default: the cores, or ``OMP_NUM_THREADS``),
    serially, on ``workers`` processes (see :mod:`cvlth.study.parallel`) or, with ``executor="ray"``,
    as Ray tasks (:mod:`cvlth.study.ray_executor`): the same numbers either way. On workers or Ray a
    failed run starts again up to ``retries`` times. Every training writes the scalar logs the
    study's ``logging`` asks for (:mod:`cvlth.training.scalar_logs`).
    """
    planned = expand(study)  # validates the whole study first: nothing is written for a refused one
    how = Execution(
        device=device,
        quiet=quiet,
        log=log,
        workers=workers,
        threads=threads or torch.get_num_threads(),
        address=address,
        retries=retries,
        settings=study.executor,
        logging=RunLogging.for_study(
            tensorboard=study.logging.tensorboard,
            mlflow=study.logging.mlflow,
            store_root=store.root,
            study=study.name,
        ),
    )
    run_all = STUDY_EXECUTORS.lookup(executor)
    start = time.perf_counter()
    folder = study_folder(study, store)
    refuse_stale_runs([item.run for item in planned], store)  # no result computed on other data
    atomic_write_text(folder / "study.yaml", study_to_yaml(study))
    computed = run_all(planned, store, how)
    results = [store.result(item.run) for item in planned]
    table = matching_table(study, planned, results)
    write_matching(folder, table, study.task_groups, beside_tables(study, planned, results))
    tickets = ticket_index(study, planned, store)
    write_entries(folder / TICKETS_FILE, tickets)
    curves = None
    if study.perturbation is not None:
        curves = perturbation_curves(study, planned, results)
        write_entries(folder / PERTURBATION_FILE, curves)
    write_claims(folder, study, table, curves, tickets, store)
    if study.speed is not None:
        write_speed(folder, study, tickets, store, log if not quiet else lambda _: None)
    return StudyOutcome(folder, table, len(planned), computed, time.perf_counter() - start)


@dataclass(frozen=True)
class Execution:
    """How a study's runs are computed (none of it changes a number)."""

    device: str
    quiet: bool
    log: Callable[[str], None]
    workers: int
    threads: int
    address: str | None
    retries: int
    settings: ExecutorSettings
    logging: RunLogging = RunLogging()  # TensorBoard / MLflow logs of every training


StudyExecutor = Callable[[list[PlannedRun], Store, Execution], int]
#: ``cvlth study --executor NAME``: computes every planned run not done yet, returns how many.
STUDY_EXECUTORS: Registry[StudyExecutor] = Registry("executor", ConfigError)


@STUDY_EXECUTORS.register("local")
def run_locally(planned: list[PlannedRun], store: Store, how: Execution) -> int:
    """This machine: serially in this process, or on ``how.workers`` worker processes."""
    if how.workers > 1:
        return run_parallel(
            planned,
            store,
            workers=how.workers,
            device=how.device,
            threads=how.threads,
            retries=how.retries,
            log=how.log,
            describe=describe,
            logging=how.logging,
        )
    ctx = Context(
        store=store, device=how.device, quiet=how.quiet, log=how.log, threads=how.threads, logging=how.logging
    )
    computed = 0
    for index, item in enumerate(planned, start=1):
        if not store.is_done(item.run):
            ctx.log(f"[{index}/{len(planned)}] {describe(item)}")
            computed += 1
        ensure(item.run, ctx)
    return computed


@STUDY_EXECUTORS.register("ray")
def run_with_ray(planned: list[PlannedRun], store: Store, how: Execution) -> int:
    """Every run a Ray task on the cluster at ``how.address`` (default: a local Ray)."""
    return run_on_ray(
        planned,
        store,
        settings=how.settings,
        address=how.address,
        threads=how.threads,
        device=how.device,
        retries=how.retries,
        log=how.log,
        describe=describe,
        logging=how.logging,
    )


def describe(item: PlannedRun) -> str:
    run = item.run
    parts = [run.kind, item.pretraining]
    if item.finder:
        parts.append(item.finder)
    if item.finder_seed:  # 0: the finder's only run unless the study gives it seeds
        parts.append(f"(finder seed {item.finder_seed})")
    if item.task:
        parts.append(f"→ {item.task}")
    parts.extend(run.progress_details(item.level, item.seed, item.variant))
    return " ".join(parts)


def metric_of(result: dict[str, Any], metric: str) -> float:
    """The run's reported test metric (``reported``: at the best-validation epoch, the paper's rule;
    without a validation split the last evaluation, or segmentation's best one); ``NAME@final``
    reads the last evaluation's. Results written before ``reported`` existed: at the best-validation
    epoch (then the same)."""
    if metric.endswith(FINAL_SUFFIX):
        metric, test = metric.removesuffix(FINAL_SUFFIX), result.get("test_final") or {}
    else:
        test = (result.get("reported") or {}).get("test") or result.get("test_at_best_val") or {}
    value = test.get(metric)
    return float(value) if value is not None else math.nan


def matching_table(
    study: StudyConfig,
    planned: list[PlannedRun],
    results: list[dict[str, Any]],
    metrics: Mapping[str, str] | None = None,
) -> list[MatchingResult]:
    """Matching per (ticket source, task): Fig. 2's rows on the pre-training task first, then the
    downstream tasks, each as its transfers' mean against the dense transfers'. A ticket's mean at a
    sparsity is over every finder seed x every study seed (its ``n``); the dense mean over the seeds.

    ``metrics`` (task -> metric) matches those tasks only, in those metrics, without Fig. 2's rows
    (:func:`beside_tables`); by default every task in its headline metric."""
    metric_of_task = metrics.get if metrics is not None else study.task_metric
    dense: dict[tuple[str, str], list[float]] = defaultdict(list)
    dense_keys: dict[tuple[str, str], list[Any]] = defaultdict(list)
    tickets: dict[tuple[str, str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    ticket_keys: dict[tuple[str, str, str], dict[float, list[Any]]] = defaultdict(lambda: defaultdict(list))
    sizes: dict[str, set[int | None]] = defaultdict(set)
    for item, result in zip(planned, results, strict=True):
        if not item.run.fine_tunes_on_task or item.variant != "ticket" or metric_of_task(item.task) is None:
            continue
        value = metric_of(result, metric_of_task(item.task))
        sizes[item.task].add(result.get("test_size"))
        if item.finder is None:
            dense[(item.pretraining, item.task)].append(value)
            dense_keys[(item.pretraining, item.task)].append(item.seed)
        else:
            sparsity = round(level_sparsity(item.level, study.fraction), 6)
            tickets[(item.pretraining, item.finder, item.task)][sparsity].append(value)
            ticket_keys[(item.pretraining, item.finder, item.task)][sparsity].append(_pairing_key(item))
    table = pretraining_task_table(study, planned, results) if metrics is None else []
    task_specific = {f.name for f in study.finders if f.method == "imp" and f.stage == "downstream"}
    for (pretraining, finder, task), values in tickets.items():
        table.append(
            matching(
                f"{pretraining}/{finder}",
                task,
                dense[(pretraining, task)],
                values,
                metric_of_task(task),
                dense_keys=dense_keys[(pretraining, task)],
                ticket_keys=ticket_keys[(pretraining, finder, task)],
                test_size=_one_size(sizes[task]),
                task_specific=finder in task_specific,
                model=TASK_MODEL_NAMES.get(study.tasks[task].objective.name),
            )
        )
    return table


def beside_tables(
    study: StudyConfig, planned: list[PlannedRun], results: list[dict[str, Any]]
) -> list[MatchingResult]:
    """Matching in the metrics read beside each task's headline one (:meth:`StudyConfig.beside_metrics`),
    one table per (source, task, metric)."""
    table: list[MatchingResult] = []
    depth = max((len(study.beside_metrics(task)) for task in study.tasks), default=0)
    for index in range(depth):
        metrics = {t: m[index] for t in study.tasks if len(m := study.beside_metrics(t)) > index}
        table += matching_table(study, planned, results, metrics)
    return sorted(table, key=lambda r: (r.source, r.task))


def _pairing_key(item: PlannedRun) -> Any:
    """What a ticket transfer shares with the dense transfer of the same study seed: everything
    random (data order, augmentation, new parameters) when its ticket's finder seed is 0, which
    adds nothing to its seeds' entropy (:mod:`cvlth.seeds`); nothing otherwise."""
    return item.seed if not item.finder_seed else (item.finder_seed, item.seed)


def _one_size(sizes: set[int | None]) -> int | None:
    """The test split's size, when every run recorded the same one (None: unknown or mixed)."""
    return next(iter(sizes)) if len(sizes) == 1 else None


def pretraining_task_table(
    study: StudyConfig, planned: list[PlannedRun], results: list[dict[str, Any]]
) -> list[MatchingResult]:
    """Fig. 2: every upstream IMP ticket (after its round's training) and θ_p (untrained) on the
    pre-training task's test split, in the objective's Fig. 2 metric (top-1 accuracy, or Eq. 2
    retrieval accuracy on backbone features for SimCLR/MoCo, as the reference code measures it);
    a ticket's mean is over the finder's seeds (IMP runs), and so is θ_p's: each IMP run evaluates it (the same value, unless the objective's heads are new).

    An IMP result written before θ_p was evaluated (no ``dense_upstream``) has no dense reference:
    its source is left out of this table."""
    dense: dict[str, list[float]] = defaultdict(list)
    dense_keys: dict[str, list[int]] = defaultdict(list)
    tickets: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    ticket_keys: dict[str, dict[float, list[int]]] = defaultdict(lambda: defaultdict(list))
    metrics: dict[str, str] = {}
    sizes: dict[str, set[int | None]] = defaultdict(set)
    for item, result in zip(planned, results, strict=True):
        if "dense_upstream" not in result:  # upstream IMP's: θ_p on its own task
            continue
        source = item.source
        metric = metrics.setdefault(source, result["dense_upstream"]["metric"])
        dense[source].append(metric_of({"test_at_best_val": result["dense_upstream"]["test"]}, metric))
        dense_keys[source].append(item.run.seed)  # θ_p and the tickets of one IMP run: a pair
        for trained in result.get("rounds", []):
            if metric not in (trained.get("test_at_best_val") or {}):
                continue  # not measured in that metric (another objective): nothing to compare
            sparsity = round(level_sparsity(trained["trained_with_level"], study.fraction), 6)
            tickets[source][sparsity].append(metric_of(trained, metric))
            ticket_keys[source][sparsity].append(item.run.seed)
            sizes[source].add(trained.get("test_size"))
    return [
        matching(
            source,
            PRETRAINING_TASK,
            dense[source],
            tickets[source],
            metrics[source],
            dense_keys=dense_keys[source],
            ticket_keys=ticket_keys[source],
            test_size=_one_size(sizes[source]),
        )
        for source in dense
        if tickets[source]
    ]


def perturbation_curves(
    study: StudyConfig, planned: list[PlannedRun], results: list[dict[str, Any]]
) -> list[PerturbationCurve]:
    """Per (finder source, task, mask variant): mean ± std of the metric at each level, over every
    finder seed x every study seed.

    Each point sits at the sparsity of the mask actually fine-tuned (the transfer's measured
    ``sparsity``, averaged over seeds; the level's nominal sparsity for results without one): a
    complement is far sparser or denser than its ticket. ``nominal_sparsity`` is the ticket's."""
    listed = set(study.perturbation.finders) if study.perturbation else set()
    values: dict[tuple[str, str, str], dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for item, result in zip(planned, results, strict=True):
        if item.run.fine_tunes_on_task and item.finder in listed:
            nominal = level_sparsity(item.level, study.fraction)
            measured = float(result.get("sparsity", nominal))
            value = metric_of(result, study.task_metric(item.task))
            values[(item.source, item.task, item.variant)][item.level].append((measured, value))
    curves = []
    for (source, task, variant), by_level in sorted(values.items()):
        points = []
        for level in sorted(by_level):
            measured = [s for s, _ in by_level[level]]
            stats = SeedStats.of([v for _, v in by_level[level]])
            points.append(
                PerturbationPoint(
                    level=level,
                    nominal_sparsity=round(level_sparsity(level, study.fraction), 6),
                    sparsity=round(math.fsum(measured) / len(measured), 6),
                    mean=stats.mean,
                    std=stats.std,
                    n=stats.n,
                )
            )
        points.sort(key=lambda p: p.sparsity)
        curves.append(PerturbationCurve(source, task, variant, tuple(points)))
    return curves


def ticket_index(study: StudyConfig, planned: list[PlannedRun], store: Store) -> list[TicketEntry]:
    """Where every ticket's masks are: one entry per finder run (each finder seed its own), masks as
    paths relative to the store."""
    entries = []
    for item in planned:
        if not item.run.finds_masks:
            continue
        folder = Path(store.run_dir(item.run))
        method = item.run.label
        levels = {
            level: TicketLevel(
                level_sparsity(level, study.fraction), str(mask_path(folder, level).relative_to(store.root))
            )
            for level in range(1, study.rounds + 1)
        }
        entries.append(
            TicketEntry(
                source=item.source,
                pretraining=item.pretraining,
                finder=item.finder,
                task=item.task,
                method=method,
                run=str(folder.relative_to(store.root)),
                levels=levels,
                finder_seed=item.run.seed,
            )
        )
    return entries


def write_claims(
    folder: Path,
    study: StudyConfig,
    table: list[MatchingResult],
    curves: list[PerturbationCurve] | None,
    tickets: list[TicketEntry],
    store: Store,
) -> None:
    """claims.json: the paper's claims (SPEC §8) checked on this study's results and masks."""

    def load(ticket: TicketEntry, level: int) -> Mask:
        return Mask.load(Path(store.root) / ticket.levels[level].mask)

    masks = mask_facts(study, tickets, load, release=lambda: None)
    write_entries(folder / CLAIMS_FILE, check_claims(claim_inputs(study, table, curves, masks)))


def write_matching(
    folder: Path,
    table: list[MatchingResult],
    groups: Mapping[str, Sequence[str]] | None = None,
    beside: Sequence[MatchingResult] = (),
) -> None:
    """matching.json: one entry per (source, task); a downstream entry also holds its source's
    universal matching sparsity and the tasks it covers (and per task group ``groups``).
    matching-beside.json: one entry per (source, task, metric read beside the headline one), when
    the study has such tasks (detection, segmentation). matching.md: the same as tables."""
    write_entries(folder / MATCHING_FILE, matching_entries(table, groups))
    text = "# Matching tickets\n\n" + matching_markdown(table, groups)
    if beside:
        write_entries(folder / BESIDE_FILE, [MatchingEntry(result) for result in beside])
        text += "\n## Beside the headline metrics\n\n" + beside_markdown(beside)
    else:
        (folder / BESIDE_FILE).unlink(missing_ok=True)  # a study that no longer has them
    atomic_write_text(folder / "matching.md", text)
