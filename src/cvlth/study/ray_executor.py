"""Execute a study's runs as Ray tasks (``cvlth study --executor ray [--address ADDR]``).

The scheduling is :func:`cvlth.study.parallel.schedule`'s, the one ``--workers`` uses: a run
becomes a Ray task once every run it reads is done, asking for the resources the study's
``executor`` setting names for it (:mod:`cvlth.study.resources`). A run is submitted only when the
cluster has room for it next to the runs in flight, so nothing waits in Ray's queue and after a
failure no new run starts. Every task computes with the study's ``threads`` intra-op threads, so
the numbers equal a serial study's, and goes through :meth:`cvlth.store.Store.execute` (lock,
result written last) in a store every node sees: a killed driver (Ray then ends its tasks)
resumes by running the same command again.

Ray is imported here only, never by ``import cvlth``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Hashable
from typing import Any

from cvlth.config import RunConfig
from cvlth.errors import ConfigError
from cvlth.store import Store
from cvlth.study.parallel import schedule
from cvlth.study.plan import PlannedRun
from cvlth.study.resources import ExecutorSettings

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_contexts: dict[tuple[str, str, int], Any] = {}  # per Ray worker process: its Context (dataset cache)


def _execute_on_node(run: RunConfig, store_root: str, device: str, threads: int) -> float:
    """The body of a Ray task: compute one run (its dependencies are done) in the shared store."""
    import torch

    from cvlth.study.execute import Context, ensure

    torch.set_num_threads(threads)  # Ray reuses worker processes: set it for every run
    key = (store_root, device, threads)
    if key not in _contexts:
        _contexts[key] = Context(
            store=Store(store_root), device=device, quiet=True, log=lambda _: None, threads=threads
        )
    start = time.perf_counter()
    ensure(run, _contexts[key])
    return time.perf_counter() - start


class RayBackend:
    """Runs as Ray tasks on the cluster ``ray.init`` connected to."""

    def __init__(self, ray: Any, store: Store, device: str, threads: int, settings: ExecutorSettings) -> None:
        self.ray, self.device, self.threads, self.settings = ray, device, threads, settings
        self.store_root = str(store.root.resolve())
        self.asked: dict[Hashable, tuple[float, float]] = {}  # (cpus, gpus) of each run in flight
        self.task = ray.remote(_execute_on_node)
        self.env = {"env_vars": {name: str(threads) for name in _THREAD_VARIABLES}}
        self.description = f"Ray ({self._capacity_text()}), {threads} thread(s) per run"

    def _asks(self, item: PlannedRun) -> tuple[float, float]:
        resources = self.settings.for_run(item.task, item.pretraining)
        return (resources.cpus or float(self.threads), resources.gpus)

    def _capacity_text(self) -> str:
        total = self.ray.cluster_resources()
        return f"{total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs"

    def has_room(self, item: PlannedRun, running: Collection[Hashable]) -> bool:
        cpus, gpus = self._asks(item)
        total = self.ray.cluster_resources()  # re-read: nodes join and leave
        in_use = [sum(asked[i] for asked in self.asked.values()) for i in (0, 1)]
        fits = cpus + in_use[0] <= total.get("CPU", 0) and gpus + in_use[1] <= total.get("GPU", 0)
        if not fits and not self.asked:
            raise ConfigError(
                f"a run asks for {cpus:g} CPUs and {gpus:g} GPUs but the Ray cluster has only "
                f"{self._capacity_text()}",
                hint="lower the study's `executor: {resources: ...}` (or --threads), or add nodes",
            )
        return fits

    def submit(self, item: PlannedRun) -> Hashable:
        cpus, gpus = self._asks(item)
        ref = self.task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0, runtime_env=self.env).remote(
            item.run, self.store_root, self.device, self.threads
        )
        self.asked[ref] = (cpus, gpus)
        return ref

    def wait_any(self, running: Collection[Hashable]) -> list[tuple[Hashable, float | BaseException]]:
        finished, _ = self.ray.wait(list(running), num_returns=1)
        outcomes: list[tuple[Hashable, float | BaseException]] = []
        for ref in finished:
            del self.asked[ref]
            try:
                outcomes.append((ref, float(self.ray.get(ref))))
            except self.ray.exceptions.RayTaskError as error:
                outcomes.append((ref, error.cause if error.cause is not None else error))  # the run's own
            except self.ray.exceptions.RayError as error:  # the worker or its node died
                outcomes.append((ref, error))
        return outcomes

    def abort(self, running: Collection[Hashable]) -> None:
        for ref in running:
            self.ray.cancel(ref, force=True)


def run_on_ray(
    planned: list[PlannedRun],
    store: Store,
    *,
    settings: ExecutorSettings,
    threads: int,
    address: str | None = None,
    device: str = "cpu",
    retries: int = 0,
    log: Callable[[str], None] = print,
    describe: Callable[[PlannedRun], str] = lambda item: item.run.kind,
) -> int:
    """Compute every planned run not done yet as Ray tasks; returns how many (see
    :func:`cvlth.study.parallel.schedule`). Uses the Ray this process is connected to, else joins
    the cluster at ``address``, else starts a local one on this machine's cores."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed", hint="pip install 'ray[default]==2.60.0'"
        ) from error
    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            local = {} if address else {"include_dashboard": False}  # settings only a new cluster takes
            ray.init(address=address, logging_level="warning", **local)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(
                f"cannot reach a Ray cluster at {address or 'this machine'}: {error}",
                hint="start one with `ray start --head` (then --address HOST:6379), or drop --address",
            ) from error
    try:
        backend = RayBackend(ray, store, device, threads, settings)
        return schedule(planned, store, backend, retries=retries, log=log, describe=describe)
    finally:
        if connected_here:
            ray.shutdown()
