"""The inference speed of a study's tickets (``speed.json``): what their sparsity buys.

For every ticket finder run (finder seed 0) and every transferred level, the study's classifier with
the ticket's mask applied is timed against the dense classifier on every engine present
(:func:`cvlth.deploy.speed.measure_speed`: interleaved rounds, medians). The latency depends on the
architecture and on which weights are zero, not on their values, so one dense model serves every
ticket. The timings are kept with what they were measured on (``speed-inputs.json``) and reused while
that stays the same; another machine, thread count, setting, set of masks or engine version (cvlth's
own kernels included) measures again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cvlth.atomic import atomic_write_text
from cvlth.masks import load_mask
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.results.outputs import SPEED_FILE, SpeedPoint, TicketEntry, read_entries, write_entries
from cvlth.store import Store
from cvlth.study.config import StudyConfig
from cvlth.study.cost_files import cpu_model

SPEED_INPUTS_FILE = "speed-inputs.json"
#: Classes of the timed classifier's head (a small head: the backbone is what a mask thins out).
TIMED_CLASSES = 10


def speed_levels(study: StudyConfig) -> list[int]:
    """Every level some task fine-tunes a ticket at."""
    levels = set(study.transfer_levels)
    for task_levels in study.task_levels.values():
        levels.update(task_levels)
    return sorted(levels)


def speed_inputs(study: StudyConfig, tickets: list[TicketEntry]) -> dict[str, Any]:
    """What the timings depend on; a change of any of it measures again."""
    from cvlth.deploy.speed import engine_versions

    assert study.speed is not None
    levels = speed_levels(study)
    return {
        "speed": study.speed.model_dump(mode="json"),
        "backbone": study.backbone.model_dump(mode="json"),
        "masks": sorted(t.levels[level].mask for t in timed_tickets(tickets) for level in levels),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "engines": engine_versions(),
    }


def timed_tickets(tickets: list[TicketEntry]) -> list[TicketEntry]:
    """One finder run per ticket source (finder seed 0): another seed's mask times the same."""
    return [ticket for ticket in tickets if ticket.finder_seed == 0]


def ticket_speeds(
    study: StudyConfig, tickets: list[TicketEntry], store: Store, log: Callable[[str], None] = print
) -> list[SpeedPoint]:
    """Time every ticket at every transferred level against the dense classifier (see module doc)."""
    from cvlth.deploy.speed import measure_speed

    assert study.speed is not None
    spec = BackboneSpec(**study.backbone.model_dump())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dense = build_backbone(spec, TIMED_CLASSES).eval()
    shape = (spec.in_channels, study.speed.image_size, study.speed.image_size)
    points = []
    for ticket in timed_tickets(tickets):
        for level in speed_levels(study):
            mask = load_mask(Path(store.root) / ticket.levels[level].mask)[0]
            model = build_backbone(spec, TIMED_CLASSES)
            model.load_state_dict(dense.state_dict())
            with torch.no_grad():
                mask.apply(model)
            log(f"speed: {ticket.label} level {level} ({mask.sparsity:.2%})")
            timings = measure_speed(
                dense, model.eval(), shape, tuple(study.speed.batch_sizes), study.speed.rounds
            )
            for batch in study.speed.batch_sizes:
                seconds: dict[str, dict[str, float]] = {}
                for timing in timings:
                    if timing.batch == batch:
                        seconds.setdefault(timing.engine, {})[timing.model] = timing.seconds
                points.append(
                    SpeedPoint(
                        source=ticket.source,
                        task=ticket.task,
                        level=level,
                        sparsity=round(mask.sparsity, 6),
                        batch=batch,
                        threads=torch.get_num_threads(),
                        seconds=seconds,
                    )
                )
    return points


def write_speed(
    folder: Path,
    study: StudyConfig,
    tickets: list[TicketEntry],
    store: Store,
    log: Callable[[str], None] = print,
) -> list[SpeedPoint]:
    """speed.json, reused when it was measured on the same inputs (:func:`speed_inputs`)."""
    inputs = speed_inputs(study, tickets)
    inputs_path, speed_path = folder / SPEED_INPUTS_FILE, folder / SPEED_FILE
    if inputs_path.is_file() and speed_path.is_file():
        try:
            same = json.loads(inputs_path.read_text()) == inputs
        except (OSError, ValueError):
            same = False  # unreadable: measure again
        if same:
            return read_entries(speed_path, SpeedPoint, "delete speed.json to measure again")
    points = ticket_speeds(study, tickets, store, log)
    write_entries(speed_path, points)
    atomic_write_text(inputs_path, json.dumps(inputs, indent=2))  # after the timings: a kill re-measures
    return points
