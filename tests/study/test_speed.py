"""A study's ticket speeds: the ratios of speed.json, its reuse, and the report's speed section."""

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from cvlth.deploy import speed as deploy_speed
from cvlth.masks import Mask
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.pruning.strategies import one_shot_magnitude
from cvlth.report.speed import speed_section
from cvlth.results.claims import SourceInfo
from cvlth.results.outputs import SpeedPoint, StudyOutputError, TicketEntry, TicketLevel, read_entries
from cvlth.scope import prunable_state
from cvlth.store import Store
from cvlth.study.config import StudyConfig
from cvlth.study.speed import SPEED_INPUTS_FILE, write_speed
from study_fixtures import TINY, TINY_BACKBONE

POINT = SpeedPoint(
    source="supervised/imp",
    task=None,
    level=2,
    sparsity=0.36,
    batch=4,
    threads=2,
    seconds={
        "pytorch": {"dense": 0.010, "ticket": 0.011},
        "onnxruntime": {"dense": 0.008, "ticket": 0.009},
        "cvlth-direct": {"ticket": 0.005},
        "cvlth-csr": {"ticket": 0.020},
    },
)


def test_speedups_are_the_fastest_ticket_over_the_fastest_dense_engine():
    assert POINT.fastest("dense") == ("onnxruntime", 0.008)
    assert POINT.speedup == pytest.approx(0.008 / 0.005)
    assert POINT.cvlth_speedup == pytest.approx(0.008 / 0.005)
    without_kernel = SpeedPoint(**{**POINT.__dict__, "seconds": {"pytorch": {"dense": 0.01, "ticket": 0.02}}})
    assert without_kernel.speedup == pytest.approx(0.5) and without_kernel.cvlth_speedup is None
    assert SpeedPoint.from_json(POINT.to_json()) == POINT
    with pytest.raises(ValueError):  # a point with no dense timing has no speed-up
        SpeedPoint.from_json({**POINT.to_json(), "seconds": {"cvlth-csr": {"ticket": 0.02}}})


def _tickets(store: Store) -> list[TicketEntry]:
    """Two global magnitude masks of the tiny backbone at levels 1 and 2, as a study's tickets.json."""
    model = build_backbone(BackboneSpec(**TINY_BACKBONE), 10)
    weights = prunable_state(model.state_dict())
    levels = {}
    for level in (1, 2):
        mask = one_shot_magnitude(weights, 1 - 0.8**level)
        relative = f"runs/imp/x/masks/level_{level}.safetensors"
        (store.root / relative).parent.mkdir(parents=True, exist_ok=True)
        mask.save(store.root / relative)
        levels[level] = TicketLevel(1 - 0.8**level, relative)
    return [TicketEntry("supervised/imp", "supervised", "imp", None, "imp-upstream", "runs/imp/x", levels)]


def test_write_speed_times_every_transferred_level_and_reuses_what_it_measured(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    tickets = _tickets(store)
    study = StudyConfig.model_validate(
        {
            **TINY,
            "rounds": 2,
            "transfer_levels": [1, 2],
            "speed": {"image_size": 8, "batch_sizes": [1, 3], "rounds": 1},
        }
    )
    folder = tmp_path / "study"
    folder.mkdir()
    calls = []
    real = deploy_speed.measure_speed

    def counted(dense, ticket, shape, batches, rounds, **kwargs):
        calls.append((shape, batches, rounds))
        zero = sum(int((p == 0).sum()) for p in ticket.parameters() if p.ndim == 4)
        assert zero > 0 and not any(int((p == 0).sum()) for p in dense.parameters() if p.ndim == 4)
        return real(dense, ticket, shape, batches, rounds, **kwargs)

    monkeypatch.setattr(deploy_speed, "measure_speed", counted)
    points = write_speed(folder, study, tickets, store, log=lambda _: None)
    assert calls == [((1, 8, 8), (1, 3), 1)] * 2
    assert [(p.level, p.batch) for p in points] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for point in points:  # the mask's own sparsity, not the level's nominal one
        mask = Mask.load(store.root / tickets[0].levels[point.level].mask)
        assert point.sparsity == pytest.approx(mask.sparsity, abs=1e-6)
        assert {"dense", "ticket"} <= set(point.seconds["pytorch"]) and "cvlth-csr" in point.seconds
    assert read_entries(folder / "speed.json", SpeedPoint, "") == points

    assert write_speed(folder, study, tickets, store, log=lambda _: None) == points  # reused
    assert len(calls) == 2
    slower = study.model_copy(update={"speed": study.speed.model_copy(update={"rounds": 2})})
    write_speed(folder, slower, tickets, store, log=lambda _: None)  # another setting: measured again
    assert len(calls) == 4
    (folder / SPEED_INPUTS_FILE).write_text("{not json")  # unreadable inputs: measured again, no crash
    write_speed(folder, slower, tickets, store, log=lambda _: None)
    assert len(calls) == 6
    # another version of an engine (here cvlth's own kernels): measured again
    versions = deploy_speed.engine_versions()
    monkeypatch.setattr(deploy_speed, "engine_versions", lambda: {**versions, "cvlth-kernels": "0" * 16})
    write_speed(folder, slower, tickets, store, log=lambda _: None)
    assert len(calls) == 8


def test_engine_versions_follow_the_kernel_sources():
    versions = deploy_speed.engine_versions()
    assert versions["onnxruntime"] == __import__("onnxruntime").__version__
    digest = hashlib.sha256()
    for name in ("sparse_conv.py", "sparse_kernel.cpp"):
        digest.update((Path(deploy_speed.__file__).parent / name).read_bytes())
    assert versions["cvlth-kernels"] == digest.hexdigest()[:16]


def test_a_missing_speed_file_is_named():
    with pytest.raises(StudyOutputError, match="speed.json"):
        read_entries(Path("/nonexistent/speed.json"), SpeedPoint, "run the study")


def test_the_report_plots_speed_up_against_sparsity(tmp_path):
    denser = SpeedPoint(**{**POINT.__dict__, "level": 1, "sparsity": 0.2})
    source = SourceInfo("supervised", "supervised", "imp", "imp", "upstream", "pretrained")
    files = SimpleNamespace(
        speed=[POINT, denser, SpeedPoint(**{**POINT.__dict__, "batch": 1})],
        source={"supervised/imp": source}.__getitem__,
    )
    section = speed_section(files, tmp_path)
    figures = [block for block in section.blocks if hasattr(block, "path")]
    assert [f.path.name for f in figures] == ["speed-batch1.png", "speed-batch4.png"]
    assert all(f.path.is_file() and f.path.stat().st_size > 0 for f in figures)
    table = next(block for block in section.blocks if hasattr(block, "rows") and "batch 4" in block.caption)
    assert [row[1] for row in table.rows] == ["1", "2"]  # by level
    assert table.rows[1][5] == f"{0.008 / 0.005:.2f}×" and table.rows[1][3].endswith("(onnxruntime)")
    assert any("1.60×" in fact for fact in section.facts)
