"""What each run of a study asks a cluster for (``cvlth study --executor ray``).

A study-level setting, never part of a run: changing it reschedules runs but changes no run's hash,
so every run already in the store is reused (like ``task_levels``, it only shapes the plan)::

    executor:
      resources: {cpus: 8, gpus: 1}               # every run
      tasks: {voc_detection: {cpus: 16, gpus: 1}}  # runs on that downstream task
      pretrainings: {moco: {cpus: 8, gpus: 1}}     # its pre-training and upstream IMP
"""

from __future__ import annotations

from pydantic import Field

from cvlth.config import Strict


class RunResources(Strict):
    cpus: float | None = Field(None, gt=0, description="CPU cores (default: the study's --threads)")
    gpus: float = Field(0, ge=0, description="GPUs (a fraction shares one)")


class ExecutorSettings(Strict):
    resources: RunResources = Field(default_factory=RunResources)
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
