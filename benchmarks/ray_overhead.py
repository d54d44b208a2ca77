"""What does ``cvlth study --executor ray`` add per run? The scheduler and Ray's round trip, alone.

Schedules ``--runs`` independent trivial runs (distinct pre-training configs whose task does
nothing) through :func:`cvlth.study.parallel.schedule` and the Ray backend on a local Ray with
``--cpus`` CPUs, one CPU per run, and prints the wall time per run: the fixed cost a real run
(minutes to hours) pays for being a Ray task. Ray's own start-up is timed apart.

    PYTHONPATH=src python benchmarks/ray_overhead.py --runs 200 --cpus 2
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ray

from cvlth.store import Store
from cvlth.study.config import builtin_study_path, load_study
from cvlth.study.parallel import schedule
from cvlth.study.plan import PlannedRun, expand
from cvlth.study.ray_executor import RayBackend
from cvlth.study.resources import ExecutorSettings


def _nothing(run, store_root: str, device: str, threads: int) -> float:  # noqa: ANN001
    return 0.0


def trivial_runs(count: int) -> list[PlannedRun]:
    """``count`` distinct pre-training runs (epochs 1..count): the no-op task writes nothing, so the
    store never sees them done and a second pass schedules them all again."""
    base = next(
        item for item in expand(load_study(builtin_study_path("smoke"))) if item.run.kind == "pretrain"
    )
    recipe = base.run.recipe
    return [
        PlannedRun(
            base.run.model_copy(
                update={
                    "recipe": recipe.model_copy(
                        update={"train": recipe.train.model_copy(update={"epochs": n})}
                    )
                }
            ),
            base.pretraining,
        )
        for n in range(1, count + 1)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    planned = trivial_runs(args.runs)
    start = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="warning")
    started = time.perf_counter() - start
    try:
        with tempfile.TemporaryDirectory() as root:
            store = Store(root)
            backend = RayBackend(ray, store, "cpu", 1, ExecutorSettings())
            backend.task = ray.remote(_nothing)
            schedule(planned, store, backend, log=lambda _: None)  # warm-up: starts Ray's workers
            start = time.perf_counter()
            computed = schedule(planned, store, backend, log=lambda _: None)
            seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    assert computed == args.runs
    print(f"ray start-up: {started:.2f} s")
    print(
        f"RESULT ray scheduling overhead: {1000 * seconds / args.runs:.1f} ms per run "
        f"({args.runs} trivial runs in {seconds:.2f} s on {args.cpus} CPUs)"
    )


if __name__ == "__main__":
    main()
