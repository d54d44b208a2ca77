"""``cvlth speed``: latency of a dense model and of its ticket on every engine present, side by side.

Engines: PyTorch eager (always), ONNX Runtime (``pip install onnxruntime``), DeepSparse (only when
the user installed it: end-of-life since 2025, not an open-source licence; cvlth never installs it)
and cvlth's own sparse paths (:mod:`cvlth.deploy.sparse_conv`, the ticket only: a dense model has
nothing to skip): ``cvlth-direct``, the C++ kernel (where it compiles), and ``cvlth-csr``. Every (engine, model) is warmed up, then timed in interleaved rounds -- one call of
each per round, in a new order each round, so that a slow moment of the machine and the threads an
engine leaves spinning hit them all alike -- and the median per (engine, model) is reported with the
thread count.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cvlth.deploy.export import export_onnx
from cvlth.deploy.sparse_conv import direct_available, sparsify

Runner = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class Timing:
    engine: str
    model: str  # dense or ticket
    batch: int
    seconds: float  # median latency of one batch

    @property
    def images_per_second(self) -> float:
        return self.batch / self.seconds


def engines(
    dense: nn.Module, ticket: nn.Module, image_shape: tuple[int, int, int], threads: int, folder: Path
) -> dict[tuple[str, str], Runner]:
    """A callable per (engine, model) this machine has."""
    runners: dict[tuple[str, str], Runner] = {}
    for label, model in (("dense", dense), ("ticket", ticket)):
        runners[("pytorch", label)] = _torch_runner(model.eval())
    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    if onnxruntime is not None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Timed side by side, one session's spinning threads would slow the next session's run
        # (seen: a ticket 2x slower than its dense model when timed right after it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for label, model in (("dense", dense), ("ticket", ticket)):
            path = export_onnx(model, folder / f"{label}.onnx", image_shape).path
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            runners[("onnxruntime", label)] = lambda x, s=session: s.run(None, {"images": x.numpy()})
    deepsparse = _deepsparse_runners(dense, ticket, image_shape, folder)
    runners.update(deepsparse)
    runners[("cvlth-csr", "ticket")] = _torch_runner(sparsify(ticket, engine="csr"))
    if direct_available():
        runners[("cvlth-direct", "ticket")] = _torch_runner(sparsify(ticket, engine="direct"))
    return runners


def _torch_runner(model: nn.Module) -> Runner:
    def run(x: torch.Tensor) -> object:
        with torch.inference_mode():
            return model(x)

    return run


def engine_versions() -> dict[str, str | None]:
    """What each engine is, for a cache of timings: the installed versions of ONNX Runtime and
    DeepSparse (None: absent) and a digest of cvlth's own kernel sources (its timings change with
    them, not with cvlth's version)."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in ("onnxruntime", "deepsparse"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    digest = hashlib.sha256()
    for name in ("sparse_conv.py", "sparse_kernel.cpp"):
        digest.update((Path(__file__).parent / name).read_bytes())
    versions["cvlth-kernels"] = digest.hexdigest()[:16]
    return versions


def _deepsparse_runners(
    dense: nn.Module, ticket: nn.Module, image_shape: tuple[int, int, int], folder: Path
) -> dict[tuple[str, str], Runner]:
    try:
        from deepsparse import compile_model  # type: ignore[import-not-found]
    except ImportError:
        return {}
    runners: dict[tuple[str, str], Runner] = {}
    for label, model in (("dense", dense), ("ticket", ticket)):
        path = folder / f"{label}.onnx"
        if not path.is_file():
            export_onnx(model, path, image_shape)
        runners[("deepsparse", label)] = _StaticBatchEngine(compile_model, str(path))
    return runners


class _StaticBatchEngine:
    """One DeepSparse engine per batch size, compiled at its first call (a warm-up call of
    :func:`measure_speed`, never timed). With a dynamic batch (``batch_size=None``) DeepSparse disables
    its optimized runtime ("Detected dynamic input images dim 0") and runs the graph like ONNX Runtime:
    measured 2026-12-03 on ResNet-50 at 90 %, its ticket and dense model took the same 573 ms."""

    def __init__(self, compile_model: Callable[..., Any], path: str) -> None:
        self._compile, self._path = compile_model, path
        self._engines: dict[int, Any] = {}

    def __call__(self, x: torch.Tensor) -> object:
        batch = int(x.shape[0])
        if batch not in self._engines:
            self._engines[batch] = self._compile(self._path, batch_size=batch)
        return self._engines[batch].run([x.numpy()])


def measure_speed(
    dense: nn.Module,
    ticket: nn.Module,
    image_shape: tuple[int, int, int],
    batches: tuple[int, ...] = (1, 16),
    rounds: int = 10,
    warmup: int = 2,
    log: Callable[[str], None] = lambda _: None,
) -> list[Timing]:
    """Median latency of every (engine, model) at each batch size, interleaved (see the module doc)."""
    threads = torch.get_num_threads()
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="cvlth-speed-") as tmp:
        runners = engines(dense, ticket, image_shape, threads, Path(tmp))
        log(f"engines: {', '.join(sorted({e for e, _ in runners}))}; {threads} threads")
        for batch in batches:
            images = torch.randn(batch, *image_shape, generator=torch.Generator().manual_seed(batch))
            for run in runners.values():
                for _ in range(warmup):
                    run(images)
            seconds: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
            order = list(runners.items())
            for round_index in range(rounds):
                # A fresh order each round: at a millisecond scale an engine's run is slowed by the
                # threads the engine before it leaves spinning (PyTorch's OpenMP), so a fixed order
                # would favour whichever model always comes after the same engine.
                random.Random(round_index).shuffle(order)
                for key, run in order:
                    start = time.perf_counter()
                    run(images)
                    seconds[key].append(time.perf_counter() - start)
            for (engine, model), values in seconds.items():
                timings.append(Timing(engine, model, batch, statistics.median(values)))
                log(f"batch {batch}: {engine} {model} {statistics.median(values) * 1e3:.1f} ms")
    return timings


CVLTH_ENGINES = ("cvlth-direct", "cvlth-csr")


def speedups(
    timings: list[Timing], batch: int, ticket_engines: tuple[str, ...] | None = None
) -> tuple[float, str, str]:
    """The ticket on its fastest engine (among ``ticket_engines``; default: any) against the fastest
    dense engine, at ``batch``: the ratio and both engines' names."""
    at = [t for t in timings if t.batch == batch]
    dense = min((t for t in at if t.model == "dense"), key=lambda t: t.seconds)
    tickets = [
        t for t in at if t.model == "ticket" and (ticket_engines is None or t.engine in ticket_engines)
    ]
    ticket = min(tickets, key=lambda t: t.seconds)
    return dense.seconds / ticket.seconds, ticket.engine, dense.engine
