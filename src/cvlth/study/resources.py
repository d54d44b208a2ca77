"""What each run of a study asks a cluster for (``cvlth study --executor ray``).

A study-level setting, never part of a run: changing it reschedules runs but changes no run's hash,
so every run already in the store is reused (like ``task_levels``, it only shapes the plan)::

    executor:
      resources: {cpus: 8, gpus: 1}               # every run
      tasks: {voc_detection: {cpus: 32, gpus: 4}}  # runs on that task: 4 data-parallel workers
      pretrainings: {moco: {cpus: 8, gpus: 1}}     # its pre-training and upstream IMP

``cpus`` and ``gpus`` are what the whole run gets. A training run (pre-training, IMP, transfer)
with ``workers`` > 1 trains data-parallel: that many processes, each with ``cpus / workers`` cores
and ``gpus / workers`` GPUs (one, or none: gloo on CPU). ``workers`` defaults to one per GPU, so
``gpus: 4`` alone means 4 workers; ``workers: 2`` with no GPU runs 2 CPU processes (gloo). Runs that
do not train (imports, OMP / random baselines) ignore ``workers`` and ask for one worker's share.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, model_validator

from cvlth.config import Strict


@dataclass(frozen=True)
class Placement:
    """What one run asks the cluster for: ``workers`` processes with these resources each."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker


class RunResources(Strict):
    cpus: float | None = Field(
        None, gt=0, description="CPU cores of the whole run (default: --threads per worker)"
    )
    gpus: float = Field(0, ge=0, description="GPUs of the whole run (a fraction below 1 shares one)")
    workers: int | None = Field(
        None, ge=1, description="data-parallel processes of a training run (default: one per GPU)"
    )

    @model_validator(mode="after")
    def _one_gpu_per_worker(self) -> RunResources:
        fix = "each data-parallel worker drives one GPU"
        if self.workers is None:
            if self.gpus > 1 and not float(self.gpus).is_integer():
                raise ValueError(
                    f"gpus: {self.gpus:g}: more than one GPU means one data-parallel worker per GPU "
                    f"({fix}); give a whole number, or a fraction below 1 to share a GPU"
                )
        elif self.gpus > 0 and self.gpus != self.workers and (self.workers > 1 or self.gpus > 1):
            raise ValueError(
                f"workers: {self.workers} with gpus: {self.gpus:g}: {fix}; give gpus: {self.workers} "
                "(or gpus: 0 to train on CPU with gloo)"
            )
        return self

    @property
    def worker_count(self) -> int:
        """Processes of a training run: ``workers``, else one per GPU (at least one)."""
        if self.workers is not None:
            return self.workers
        return max(1, int(self.gpus)) if self.gpus >= 1 else 1

    def placement(self, threads: int, trains: bool) -> Placement:
        """What a run asks for; ``threads`` is the study's intra-op count (the default CPUs per
        worker), ``trains`` whether the run trains (else it runs as one worker)."""
        count = self.worker_count
        cpus_each = self.cpus / count if self.cpus is not None else float(threads)
        return Placement(count if trains else 1, cpus_each, self.gpus / count)


class ExecutorSettings(Strict):
    resources: RunResources = Field(
        default_factory=RunResources, description="what every run asks for unless named below"
    )
    tasks: dict[str, RunResources] = Field(default_factory=dict, description="by downstream task")
    pretrainings: dict[str, RunResources] = Field(
        default_factory=dict, description="by pre-training (upstream runs)"
    )

    def unknown_names(self, tasks: set[str], pretrainings: set[str]) -> list[str]:
        """The entries that name no task or pre-training of the study."""
        return [f"executor.tasks.{t}" for t in self.tasks if t not in tasks] + [
            f"executor.pretrainings.{p}" for p in self.pretrainings if p not in pretrainings
        ]

    def for_run(self, task: str | None, pretraining: str) -> RunResources:
        """A downstream run's task entry, else an upstream run's pre-training entry, else the default."""
        if task is not None:
            return self.tasks.get(task, self.resources)
        return self.pretrainings.get(pretraining, self.resources)
