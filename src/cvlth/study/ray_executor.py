"""Execute a study's runs as Ray tasks (``cvlth study --executor ray [--address ADDR]``).

The scheduling is :func:`cvlth.study.parallel.schedule`'s, the one ``--workers`` uses: a run
becomes a Ray task once every run it reads is done, asking for the resources the study's
``executor`` setting names for it (:mod:`cvlth.study.resources`). A run is submitted only when the
cluster has room for it next to the runs in flight, so nothing waits in Ray's queue and after a
failure no new run starts. Every task computes with the study's ``threads`` intra-op threads, so
the numbers equal a serial study's, and goes through :meth:`cvlth.store.Store.execute` (lock,
result written last) in a store every node sees: a killed driver (Ray then ends its tasks)
resumes by running the same command again.

A training run whose setting asks for several workers (``executor: {resources: {gpus: 4}}``, see
:mod:`cvlth.study.resources`) trains data-parallel: its task starts one Ray actor per worker in a
placement group (PACK: on as few nodes as fit), gives them torchrun's variables (``MASTER_ADDR``,
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; the GPUs of the workers on one node visible to each of
them, so NCCL can use the links between them) and runs the run's one training loop on each, which
joins the process group (NCCL on GPU, gloo on CPU) as under torchrun. Rank 0 goes through
:meth:`~cvlth.store.Store.execute` (lock, result last); the others compute beside it. When one rank
fails, the others are ended and the run fails once, to be retried like any run. Ray Train's
``TorchTrainer`` would do the same with the ``ray[train]`` extra (pyarrow, 55 MB), its own
retries and its own results folder next to the store's, so plain actors are used instead.

Ray is imported here only, never by ``import cvlth``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Collection, Hashable
from typing import TYPE_CHECKING, Any

from cvlth.config import RunConfig
from cvlth.errors import ConfigError
from cvlth.store import Store
from cvlth.study.parallel import schedule
from cvlth.study.plan import PlannedRun
from cvlth.study.resources import ExecutorSettings, Placement
from cvlth.training.scalar_logs import RunLogging, scalar_logging

if TYPE_CHECKING:
    from cvlth.runs.execute import Context
    from cvlth.training.distributed import DistEnv

_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
TRAINING_KINDS = frozenset({"pretrain", "imp", "transfer"})  # what trains data-parallel; others: 1 process
_contexts: dict[
    tuple[str, str, int, RunLogging], Any
] = {}  # per Ray worker process: its Context (dataset cache)


def _execute_on_node(
    run: RunConfig, store_root: str, device: str, threads: int, logging: RunLogging
) -> float:
    """The body of a Ray task: compute one run (its dependencies are done) in the shared store."""
    import torch

    from cvlth.runs.execute import Context, ensure

    torch.set_num_threads(threads)  # Ray reuses worker processes: set it for every run
    key = (store_root, device, threads, logging)
    if key not in _contexts:
        _contexts[key] = Context.for_worker(store_root, device, threads, logging)
    start = time.perf_counter()
    ensure(run, _contexts[key])
    return time.perf_counter() - start


# --- data-parallel runs ------------------------------------------------------------------------

Where = tuple[str, str, list[str]]  # a worker's node id, node IP and the GPU ids Ray gave it


def rank_environments(where: list[Where], port: int) -> list[dict[str, str]]:
    """torchrun's variables for each rank (in the order of ``where``): rank 0's node is the master;
    a node's ranks are its local ranks in rank order and all see the node's workers' GPUs, listed
    in that order, so local rank ``i`` drives ``cuda:i``."""
    by_node: dict[str, list[int]] = {}
    for rank, (node, _, _) in enumerate(where):
        by_node.setdefault(node, []).append(rank)
    environments = []
    for rank, (node, _, _) in enumerate(where):
        local = by_node[node]
        environment = {
            "MASTER_ADDR": where[0][1],
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(len(where)),
            "LOCAL_RANK": str(local.index(rank)),
            "LOCAL_WORLD_SIZE": str(len(local)),
        }
        gpus = [gpu for other in local for gpu in where[other][2]]
        if gpus:
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        environments.append(environment)
    return environments


def execute_rank(run: RunConfig, ctx: Context, env: DistEnv) -> None:
    """One rank's part of a data-parallel run (its dependencies are done).

    Rank 0 computes through :meth:`cvlth.store.Store.execute` (lock, ``config.yaml``, result written
    last) and tells the others whether the run is still to compute; they compute in the same
    folder without its lock. The training loop writes only on rank 0; the run's own artefacts (θ_p,
    masks, rewind weights) are the same on every rank and written by each, atomically; a barrier
    lets every rank finish before rank 0 writes the result.
    """
    from cvlth.runs.execute import RUN_EXECUTORS
    from cvlth.runs.execute import compute as compute_checked
    from cvlth.training import distributed

    compute_run = RUN_EXECUTORS[run.kind]
    if not env.is_writer:
        if distributed.agree(False, env):  # rank 0's answer
            compute_run(run, ctx.store.run_dir(run), ctx)
            distributed.barrier(env)
        return
    started = False

    def compute(folder: Any) -> dict[str, Any]:
        nonlocal started
        started = distributed.agree(True, env)
        result = compute_checked(run, folder, ctx)  # records or checks the run's data first
        distributed.barrier(env)
        return result

    with scalar_logging(ctx.logging):  # only rank 0 writes the logs, like metrics.jsonl
        ctx.store.execute(run, compute, drop_train_state=True)
    if not started:  # done already (e.g. by another study on the same store)
        distributed.agree(False, env)


class _Rank:
    """One data-parallel worker (a Ray actor in the run's placement group)."""

    def where(self) -> Where:
        import ray

        node = ray.get_runtime_context().get_node_id()
        return node, ray.util.get_node_ip_address(), [str(gpu) for gpu in ray.get_gpu_ids()]

    def free_port(self) -> int:
        with socket.socket() as probe:
            probe.bind(("", 0))
            return int(probe.getsockname()[1])

    def execute(
        self,
        run: RunConfig,
        store_root: str,
        device: str,
        threads: int,
        environment: dict[str, str],
        logging: RunLogging,
    ) -> float:
        os.environ.update(environment)  # before CUDA starts: CUDA_VISIBLE_DEVICES
        import torch

        from cvlth.runs.execute import Context
        from cvlth.training import distributed

        torch.set_num_threads(threads)
        on_gpu = device.startswith("cuda")
        env = distributed.init_from_env(backend="nccl" if on_gpu else "gloo")
        try:
            local_device = f"cuda:{env.local_rank}" if on_gpu else device
            ctx = Context.for_worker(store_root, local_device, threads, logging)
            start = time.perf_counter()
            execute_rank(run, ctx, env)
            return time.perf_counter() - start
        finally:
            distributed.close(env)


def _execute_data_parallel(
    run: RunConfig,
    store_root: str,
    device: str,
    threads: int,
    placement: Placement,
    runtime_env: dict[str, Any],
    logging: RunLogging,
) -> float:
    """The body of a data-parallel run's Ray task (which asks for nothing itself): its workers as
    actors in a placement group, ended with it; rank 0's seconds, or the first rank's error."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundle = {"CPU": placement.cpus_per_worker}
    if placement.gpus_per_worker:
        bundle["GPU"] = placement.gpus_per_worker
    group = placement_group([bundle] * placement.workers, strategy="PACK")
    worker = ray.remote(_Rank)
    ranks = [
        worker.options(
            num_cpus=placement.cpus_per_worker,
            num_gpus=placement.gpus_per_worker,
            scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index),
            runtime_env=runtime_env,
            max_restarts=0,
        ).remote()
        for index in range(placement.workers)
    ]
    try:
        where = ray.get([rank.where.remote() for rank in ranks])
        port = ray.get(ranks[0].free_port.remote())
        environments = rank_environments(where, port)
        refs = [
            rank.execute.remote(run, store_root, device, threads, environment, logging)
            for rank, environment in zip(ranks, environments, strict=True)
        ]
        seconds, pending = 0.0, list(refs)
        while pending:  # the first failure ends the run: the other ranks would wait for it
            finished, pending = ray.wait(pending, num_returns=1)
            try:
                value = ray.get(finished[0])
            except ray.exceptions.RayTaskError as error:
                raise (error.cause if error.cause is not None else error) from None
            if finished[0] == refs[0]:
                seconds = value
        return seconds
    finally:
        for rank in ranks:
            ray.kill(rank)
        remove_placement_group(group)


class RayBackend:
    """Runs as Ray tasks on the cluster ``ray.init`` connected to."""

    def __init__(
        self,
        ray: Any,
        store: Store,
        device: str,
        threads: int,
        settings: ExecutorSettings,
        logging: RunLogging | None = None,
    ) -> None:
        self.ray, self.device, self.threads, self.settings = ray, device, threads, settings
        self.logging = logging or RunLogging()
        self.store_root = str(store.root.resolve())
        self.asked: dict[Hashable, tuple[float, float]] = {}  # (cpus, gpus) of each run in flight
        self.task = ray.remote(_execute_on_node)
        self.group_task = ray.remote(_execute_data_parallel)
        self.env = {"env_vars": {name: str(threads) for name in _THREAD_VARIABLES}}
        self.description = f"Ray ({self._capacity_text()}), {threads} thread(s) per run"

    def _placement(self, item: PlannedRun) -> Placement:
        resources = self.settings.for_run(item.task, item.pretraining)
        return resources.placement(self.threads, trains=item.run.kind in TRAINING_KINDS)

    def _asks(self, item: PlannedRun) -> tuple[float, float]:
        placement = self._placement(item)
        return (placement.cpus, placement.gpus)

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
                hint="lower the study's `executor: {resources: ...}` (cpus, gpus, workers; or --threads), "
                "or add nodes",
            )
        return fits

    def submit(self, item: PlannedRun) -> Hashable:
        placement = self._placement(item)
        if placement.workers > 1:
            ref = self.group_task.options(num_cpus=0, max_retries=0).remote(
                item.run, self.store_root, self.device, self.threads, placement, self.env, self.logging
            )
        else:
            ref = self.task.options(
                num_cpus=placement.cpus, num_gpus=placement.gpus, max_retries=0, runtime_env=self.env
            ).remote(item.run, self.store_root, self.device, self.threads, self.logging)
        self.asked[ref] = (placement.cpus, placement.gpus)
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
    logging: RunLogging | None = None,
) -> int:
    """Compute every planned run not done yet as Ray tasks, each training writing the scalar logs
    ``logging`` asks for; returns how many (see
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
        if address:
            check_reachable(address)
        try:
            local = {} if address else {"include_dashboard": False}  # settings only a new cluster takes
            ray.init(address=address, logging_level="warning", **local)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ConfigError(
                f"cannot reach a Ray cluster at {address or 'this machine'}: {error}",
                hint="start one with `ray start --head` (then --address HOST:6379), or drop --address",
            ) from error
    try:
        backend = RayBackend(ray, store, device, threads, settings, logging)
        return schedule(planned, store, backend, retries=retries, log=log, describe=describe)
    finally:
        if connected_here:
            ray.shutdown()


#: Seconds to wait for a TCP connection to ``--address``: ray.init itself retries for minutes.
CONNECT_TIMEOUT = 5.0


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Refuse a ``HOST:PORT`` address where nothing accepts a TCP connection, in ``timeout``
    seconds (``ray.init`` would wait minutes); other forms (``auto``, ``ray://...``) pass."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot reach a Ray cluster at {address}: no answer in {timeout:g} s ({error})",
            hint="start one with `ray start --head` (then --address HOST:6379), or drop --address",
        ) from None
