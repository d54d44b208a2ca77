"""What every run of a study shares while it computes: the :class:`Context` (store, device, dataset
cache), where a run's folder is, the seeds a run draws from, and the registry of the functions that
compute each run kind (``RUN_EXECUTORS``: ``(run, folder, ctx) -> result dict``, one module per kind:
:mod:`~cvlth.runs.pretrain`, :mod:`~cvlth.runs.finders`, :mod:`~cvlth.runs.transfer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvlth.config import DataRef, RunConfig
from cvlth.data.cache import DatasetCache
from cvlth.data.classification import DatasetSplits
from cvlth.data.samples import SampleSplits
from cvlth.registry import Registry
from cvlth.seeds import RunSeeds, derive_seeds
from cvlth.store import RunFolder, Store
from cvlth.training.scalar_logs import RunLogging

AnySplits = DatasetSplits | SampleSplits
EVAL_BATCH_SIZE = 512


@dataclass
class Context:
    """What every executor shares: the store, the device, the scalar logs every training writes
    (TensorBoard / MLflow; none by default), and an in-process dataset cache."""

    store: Store
    device: str = "cpu"
    quiet: bool = False
    threads: int | None = None  # intra-op threads every run computes with (None: torch's default)
    log: Callable[[str], None] = print
    logging: RunLogging = field(default_factory=RunLogging)
    datasets: DatasetCache = field(default_factory=DatasetCache)
    #: The data identities listed in this process (cvlth.runs.recorded_data), like ``datasets``.
    data_identities: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_worker(cls, store_root: Any, device: str, threads: int | None, logging: RunLogging) -> Context:
        """The context of a worker process or Ray task: no progress output (the parent logs each run)."""
        return cls(
            store=Store(store_root),
            device=device,
            quiet=True,
            log=lambda _: None,
            threads=threads,
            logging=logging,
        )

    def dataset(self, ref: DataRef) -> AnySplits:
        return self.datasets.get(ref.name, ref.root, ref.options)


RunExecutor = Callable[[Any, RunFolder, Context], dict[str, Any]]
#: The function that computes each run kind, by the kind's tag.
RUN_EXECUTORS: Registry[RunExecutor] = Registry("run kind")


def run_folder(ctx: Context, run: RunConfig) -> Path:
    return Path(ctx.store.run_dir(run))


def run_seeds(run: RunConfig) -> RunSeeds:
    """A run's seeds, derived from the root entropy its kind names (:meth:`RunConfig.seed_entropy`:
    a pre-training's ``train.seed``, a mask baseline's ``seed``, an IMP run's or a transfer's
    (``seed``, recipe ``train.seed``), so the study's seeds are independent runs)."""
    return derive_seeds(*run.seed_entropy())
