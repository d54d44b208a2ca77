"""Execute a study's runs on several worker processes (``cvlth study --workers N``).

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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import torch

from cvlth.config import RunConfig, config_hash
from cvlth.store import Store
from cvlth.study.execute import Context, ensure
from cvlth.study.plan import PlannedRun
from cvlth.study.run_kinds import dependencies

# Scheduling priority by run kind: runs that others wait on first, longest chains (IMP) first.
_KIND_RANK = {"pretrain": 0, "import": 0, "imp": 1, "baseline": 2, "transfer": 3}
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


def _start_worker(parent: int, store_root: str, device: str, threads: int) -> None:
    global _worker_context
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    torch.set_num_threads(threads)
    # No progress bars: several processes would draw over each other; the parent logs each run.
    _worker_context = Context(
        store=Store(store_root), device=device, quiet=True, log=lambda _: None, threads=threads
    )


def _execute_in_worker(run: RunConfig) -> float:
    start = time.perf_counter()
    ensure(run, _worker_context)
    return time.perf_counter() - start


def _ready(pending: dict[str, PlannedRun], waiting_on: dict[str, set[str]], running: set[str]) -> list[str]:
    """Hashes of the pending runs whose dependencies are all done, in scheduling order.

    The sort is stable: within a kind, runs keep the plan's order.
    """
    ready = [key for key in pending if not waiting_on[key] and key not in running]
    return sorted(ready, key=lambda key: _KIND_RANK.get(pending[key].run.kind, 9))


def run_parallel(
    planned: list[PlannedRun],
    store: Store,
    *,
    workers: int,
    device: str = "cpu",
    threads: int | None = None,
    log: Callable[[str], None] = print,
    describe: Callable[[PlannedRun], str] = lambda item: item.run.kind,
) -> int:
    """Compute every planned run that is not done yet on ``workers`` processes; returns how many.

    After a failure no new run starts; the runs in flight finish (their results are kept) and the
    first error is raised again here, after naming the run it came from.
    """
    pending = {config_hash(item.run): item for item in planned if not store.is_done(item.run)}
    if not pending:
        return 0
    waiting_on = {
        key: {config_hash(dep) for dep in dependencies(item.run)} & pending.keys()
        for key, item in pending.items()
    }
    threads = threads or torch.get_num_threads()
    total, computed = len(pending), 0
    failures: list[tuple[PlannedRun, BaseException]] = []
    log(f"{total} runs to compute on {workers} workers x {threads} thread(s)")
    with (
        _worker_environment(threads),
        ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(os.getpid(), str(store.root), device, threads),
        ) as pool,
    ):
        running: dict[Future[float], str] = {}
        try:
            while pending:
                if not failures:
                    for key in _ready(pending, waiting_on, set(running.values())):
                        if len(running) >= workers:
                            break
                        log(f"start: {describe(pending[key])}")
                        running[pool.submit(_execute_in_worker, pending[key].run)] = key
                if not running:
                    break  # after a failure: what is left waits on it
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    key = running.pop(future)
                    item = pending.pop(key)
                    error = future.exception()
                    if error is not None:
                        failures.append((item, error))
                        log(f"FAILED: {describe(item)}: {error}")
                        continue
                    computed += 1
                    log(f"[{computed}/{total}] done in {future.result():.1f} s: {describe(item)}")
                    for waits in waiting_on.values():
                        waits.discard(key)
        except BaseException:  # Ctrl-C: stop at once; killed runs resume from their checkpoints
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    if failures:
        item, error = failures[0]
        log(f"stopped after a failure in: {describe(item)} (finished runs are kept; rerun to resume)")
        raise error
    return computed
