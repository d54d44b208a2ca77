"""Does ``cvlth study --workers N`` finish a study sooner than one process?

Runs the same small study twice, in fresh temporary stores, in this one process: serially (one
process with all the cores' threads) and on ``--workers`` processes (cores / workers threads each,
passed as ``--threads``: so the parallel numbers are not the serial ones, only the times compare),
and prints both wall times and their ratio. The study is a slice of ``configs/cpu-study.yaml``: its
backbone and supervised pre-training (on ``--upstream`` images), its MNIST and detection tasks
(MNIST on 2000 images, ``--scenes`` detection scenes), OMP and random tickets at one sparsity,
two seeds: 1 pre-training, 2 baselines, 12 transfers.

    PYTHONPATH=src python benchmarks/study_workers.py --workers 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import yaml

from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from cvlth.study.runner import run_study

PACKAGED = Path(__file__).resolve().parents[1] / "src" / "cvlth" / "configs" / "cpu-study.yaml"


def slice_of_cpu_study(upstream: int, scenes: int) -> dict:
    config = yaml.safe_load(PACKAGED.read_text())
    pretraining = config["pretrainings"]["supervised"]
    pretraining["recipe"]["data"]["options"].update(max_train=upstream, max_val=500, max_test=500)
    pretraining["recipe"]["train"]["epochs"] = 2
    tasks = {name: config["tasks"][name] for name in ("mnist", "detection")}
    tasks["mnist"]["data"]["options"].update(max_train=2000, max_val=500, max_test=500)
    tasks["mnist"]["train"]["epochs"] = 2
    tasks["detection"]["data"]["options"].update(train_size=scenes, val_size=50, test_size=100)
    tasks["detection"]["train"].update(epochs=1, eval_every_epochs=1)
    tasks["detection"]["optim"]["lr"] = 0.01  # one short epoch: the study's 0.04 can diverge here
    return {
        "name": "workers-benchmark",
        "backbone": config["backbone"],
        "pretrainings": {"supervised": pretraining},
        "tasks": tasks,
        "finders": [{"name": "omp", "method": "omp"}, {"name": "random", "method": "random"}],
        "rounds": 3,
        "transfer_levels": [3],
        "seeds": [0, 1],
        "adapt": config.get("adapt", {}),
    }


def timed_study(study_path: Path, store: Path, workers: int) -> float:
    start = time.perf_counter()
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    outcome = run_study(
        load_study(study_path), Store(store), quiet=True, log=lambda _: None, workers=workers, threads=threads
    )
    assert outcome.computed == outcome.runs, "the store was not empty"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--upstream", type=int, default=4000, help="pre-training images")
    parser.add_argument("--scenes", type=int, default=400, help="detection training scenes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study_path = Path(tmp) / "study.yaml"
        study_path.write_text(yaml.safe_dump(slice_of_cpu_study(args.upstream, args.scenes)))
        print(f"{len(os.sched_getaffinity(0))} cores; {len(expand(load_study(study_path)))} runs per study")
        serial = timed_study(study_path, Path(tmp) / "serial", workers=1)
        print(f"serial (1 process): {serial:.1f} s", flush=True)
        parallel = timed_study(study_path, Path(tmp) / "parallel", workers=args.workers)
        print(f"{args.workers} workers: {parallel:.1f} s", flush=True)
    print(f"RESULT study_workers_speedup {serial / parallel:.2f}")


if __name__ == "__main__":
    main()
