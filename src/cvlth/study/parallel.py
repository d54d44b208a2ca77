"""Execute a study's runs on several worker processes (``cvlth study --workers N``).

One scheduler, :func:`schedule`, serves every executor through a :class:`Backend` (submit a run,
wait for any): the process pool here, Ray's tasks in :mod:`cvlth.study.ray_executor`.
The parent process only schedules: a run is handed to a worker once every run it depends on is
done, ticket searches (IMP first: its chains of rounds are the longest) before transfers, so the
long runs start early and the tail stays short. Each worker is a fresh (spawned) process that runs
one run at a time with ``threads`` torch threads: by default as many as a serial study uses (this
process's count: the cores, or ``OMP_NUM_THREADS``), because CPU kernels reduce in an order that depends on the thread count, and a run's
numbers must not depend on how it was scheduled. So on N cores, ``--workers 2`` oversubscribes them
unless ``--threads`` is lowered (idle OpenMP threads wait passively, so it does not collapse);
the numbers then equal a serial study run with the same ``--threads``.

Why processes: one run of a small model cannot use many cores (much of a detection step is serial
Python in torchvision, and small convolutions split poorly across threads), so on a machine with
more cores than one run uses, several runs at once finish the study sooner. On 2 cores it gains
little: a one-thread run of the CPU study takes 1.7-2.1x as long as a two-thread run (measured:
detection IMP 340 vs 203 s, segmentation IMP 247 vs 117 s), so two workers are only ~1.1x as
fast (``benchmarks/study_workers.py --upstream 2000 --scenes 200``: 97.7 vs 108.3 s, 15 runs).
Every run still goes through :meth:`cvlth.store.Store.execute` (lock, result written last), so a killed parallel study resumes
like a serial one, and results do not depend on the worker count: each run seeds itself from its
config and computes with the same thread count (recorded in its result and checkpoints).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Protocol

import torch

from cvlth.config import RunConfig
from cvlth.run_identity import config_hash
from cvlth.runs.execute import Context, ensure
from cvlth.runs.kinds import dependencies
from cvlth.store import Store
from cvlth.study.plan import PlannedRun
from cvlth.training.scalar_logs import RunLogging

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_worker_context = None  # the Context of this worker process, set by _start_worker


@contextlib.contextmanager
def _worker_environment(threads: int) -> Iterator[None]:
    """Thread settings the spawned workers inherit; OpenMP reads them when torch is imported.

    Passive waiting keeps idle OpenMP threads from spinning on cores another worker needs.
    """
    saved = dict(os.environ)
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _exit_with_parent(parent: int) -> None:
    """End this worker once the study process is gone (e.g. killed), instead of computing for nobody.

    ``parent`` is the study's pid, passed in rather than read here: a worker still starting up
    when the study dies has already been re-parented.
    """
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # the run in progress resumes from its checkpoint next time


def _start_worker(parent: int, store_root: str, device: str, threads: int, logging: RunLogging) -> None:
    global _worker_context
    # Ctrl-C reaches the whole process group; the study process alone handles it and stops the
    # workers (a worker's own KeyboardInterrupt would print its traceback and race the shutdown).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    # No progress bars: several processes would draw over each other; the parent logs each run.
    _worker_context = Context.for_worker(store_root, device, threads, logging)


def _execute_in_worker(run: RunConfig) -> float:
    start = time.perf_counter()
    ensure(run, _worker_context)
    return time.perf_counter() - start


def _ready(pending: dict[str, PlannedRun], waiting_on: dict[str, set[str]], running: set[str]) -> list[str]:
    """Hashes of the pending runs whose dependencies are all done, in scheduling order.

    The sort is stable: within a kind, runs keep the plan's order.
    """
    ready = [key for key in pending if not waiting_on[key] and key not in running]
    return sorted(ready, key=lambda key: pending[key].run.rank)  # the kinds' one order (RunConfig.rank)


class Backend(Protocol):
    """Where the scheduler's runs compute: worker processes here, or a Ray cluster."""

    description: str  # for the first log line, e.g. "2 workers x 1 thread(s)"

    def has_room(self, item: PlannedRun, running: Collection[Hashable]) -> bool:
        """Whether ``item`` can start now, next to the runs in flight."""
        ...

    def submit(self, item: PlannedRun) -> Hashable:
        """Start computing the run; returns a handle for :meth:`wait_any`."""
        ...

    def wait_any(self, running: Collection[Hashable]) -> list[tuple[Hashable, float | BaseException]]:
        """Block until at least one run in flight ends; each with its seconds or its error."""
        ...

    def abort(self, running: Collection[Hashable]) -> None:
        """Stop the runs in flight at once (Ctrl-C); they resume from their checkpoints."""
        ...


def schedule(
    planned: list[PlannedRun],
    store: Store,
    backend: Backend,
    *,
    retries: int = 0,
    log: Callable[[str], None] = print,
    describe: Callable[[PlannedRun], str] = lambda item: item.run.kind,
) -> int:
    """Compute every planned run that is not done yet on ``backend``; returns how many.

    A run starts once every run it reads is done. A failed run starts again up to ``retries``
    times; after that no new run starts, the runs in flight finish (their results are kept) and
    its error is raised again here, after naming the run it came from.
    """
    pending = {config_hash(item.run): item for item in planned if not store.is_done(item.run)}
    if not pending:
        return 0
    waiting_on = {
        key: {config_hash(dep) for dep in dependencies(item.run)} & pending.keys()
        for key, item in pending.items()
    }
    total, computed = len(pending), 0
    failed_attempts: dict[str, int] = {}
    failures: list[tuple[PlannedRun, BaseException]] = []
    log(f"{total} runs to compute on {backend.description}")
    running: dict[Hashable, str] = {}
    try:
        while pending:
            if not failures:
                for key in _ready(pending, waiting_on, set(running.values())):
                    if backend.has_room(pending[key], running):
                        log(f"start: {describe(pending[key])}")
                        running[backend.submit(pending[key])] = key
            if not running:
                break  # after a failure: what is left waits on it
            for handle, outcome in backend.wait_any(running):
                key = running.pop(handle)
                item = pending[key]
                if isinstance(outcome, BaseException):
                    failed_attempts[key] = failed_attempts.get(key, 0) + 1
                    if failed_attempts[key] <= retries and not failures:
                        log(f"retry {failed_attempts[key]}/{retries} of {describe(item)} after: {outcome}")
                        continue  # still pending: it starts again in the next round
                    del pending[key]
                    failures.append((item, outcome))
                    log(f"FAILED: {describe(item)}: {outcome}")
                    continue
                del pending[key]
                computed += 1
                log(f"[{computed}/{total}] done in {outcome:.1f} s: {describe(item)}")
                for waits in waiting_on.values():
                    waits.discard(key)
    except BaseException:  # Ctrl-C: stop at once; killed runs resume from their checkpoints
        backend.abort(running)
        raise
    if failures:
        item, error = failures[0]
        log(f"stopped after a failure in: {describe(item)} (finished runs are kept; rerun to resume)")
        raise error
    return computed


class _PoolBackend:
    """Spawned worker processes, each running one run at a time."""

    def __init__(self, pool: ProcessPoolExecutor, workers: int, threads: int) -> None:
        self.pool, self.workers = pool, workers
        self.description = f"{workers} workers x {threads} thread(s)"

    def has_room(self, item: PlannedRun, running: Collection[Hashable]) -> bool:
        return len(running) < self.workers

    def submit(self, item: PlannedRun) -> Future[float]:
        # The pool spawns its workers here; ignored signals stay ignored in the child, so Ctrl-C
        # cannot interrupt a worker even while it imports torch, before its initializer runs.
        with _ignoring_interrupts():
            return self.pool.submit(_execute_in_worker, item.run)

    def wait_any(self, running: Collection[Hashable]) -> list[tuple[Hashable, float | BaseException]]:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)  # type: ignore[arg-type]
        return [(future, future.exception() or future.result()) for future in finished]

    def abort(self, running: Collection[Hashable]) -> None:
        """Terminate the workers (the runs in flight resume from their checkpoints next time).

        ``shutdown`` alone would wait for the runs in flight to finish; a repeated Ctrl-C while
        waiting left the pool's threads half shut down. Further Ctrl-Cs are ignored until the
        workers are gone.
        """
        with _ignoring_interrupts():
            # Python 3.14 has ProcessPoolExecutor.terminate_workers(); before it, the pool's own table.
            processes = list((getattr(self.pool, "_processes", None) or {}).values())
            for process in processes:
                process.terminate()
            for process in processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
            self.pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """SIGINT ignored inside (main thread only: elsewhere signals cannot be set, nor arrive)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_parallel(
    planned: list[PlannedRun],
    store: Store,
    *,
    workers: int,
    device: str = "cpu",
    threads: int | None = None,
    retries: int = 0,
    log: Callable[[str], None] = print,
    describe: Callable[[PlannedRun], str] = lambda item: item.run.kind,
    logging: RunLogging | None = None,
) -> int:
    """Compute every planned run that is not done yet on ``workers`` processes; returns how many
    (see :func:`schedule`). ``logging``: the scalar logs every training writes."""
    threads = threads or torch.get_num_threads()
    with (
        _worker_environment(threads),
        ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(), str(store.root), device, threads, logging or RunLogging()),
        ) as pool,
    ):
        backend = _PoolBackend(pool, workers, threads)
        return schedule(planned, store, backend, retries=retries, log=log, describe=describe)
