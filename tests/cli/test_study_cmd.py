"""What `cvlth study` prints: the matching table (extreme and universal matching sparsity per row)
and, with --plan, finished runs told apart from damaged ones."""

import os
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from cvlth.cli import run_cli
from cvlth.cli.study_cmd import matching_rich_table
from cvlth.results.matching import PRETRAINING_TASK, matching
from cvlth.store import RunFolder, Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand
from study_fixtures import DIGITS_TASK, SUPERVISED_PRETRAINING, TINY_BACKBONE


def test_printed_table_holds_extreme_and_universal_sparsity() -> None:
    # a: matches at 0.2 and 0.36 on task one, only at 0.2 on task two -> universal 0.2.
    results = [
        matching("s/a", "one", [0.90, 0.92], {0.2: [0.95], 0.36: [0.93]}),
        matching("s/a", "two", [0.80, 0.80], {0.2: [0.81], 0.36: [0.70]}),
        matching("s/a", PRETRAINING_TASK, [0.5], {0.2: [0.6]}),
    ]
    console = Console(record=True, width=120)
    console.print(matching_rich_table(results))
    lines = [line for line in console.export_text().splitlines() if line.startswith("│ s/a")]
    cells = [[cell.strip() for cell in line.strip("│").split("│")] for line in lines]
    assert cells[0] == ["s/a", "one", "0.9100±0.0141", "36.00%", "20.00%"]
    assert cells[1] == ["s/a", "two", "0.8000±0.0000", "20.00%", "20.00%"]
    assert cells[2] == ["s/a", PRETRAINING_TASK, "0.5000±0.0000", "20.00%", ""]  # Fig. 2 rows: no universal


# --- `cvlth study --plan` tells damaged runs from done ones ----------------------------------------

PLAN_STUDY = {
    "name": "damage",
    "backbone": TINY_BACKBONE,
    "pretrainings": {"supervised": SUPERVISED_PRETRAINING},
    "tasks": {"digits": DIGITS_TASK},
    "finders": [{"name": "omp", "method": "omp"}],
    "rounds": 1,
    "seeds": [0],
}
WEIGHTS = bytes(range(256)) * 8  # 2,048 bytes


def _finish(store: Store, run) -> Path:
    """Finish ``run`` in ``store`` by hand (no training): it wrote weights.bin; return that file."""

    def work(folder: RunFolder) -> dict:
        (folder.path / "weights.bin").write_bytes(WEIGHTS)
        return {"ok": 1}

    store.execute(run, work)
    return store.run_dir(run).path / "weights.bin"


def _plan(config: Path, store: Path, capsys, *extra: str) -> tuple[dict[str, list[str]], str]:
    """The plan's table rows (run kind -> cells) and its whole output, on a wide console."""
    assert run_cli(["study", str(config), "--plan", "--store", str(store), *extra]) == 0
    out = capsys.readouterr().out
    rows = {}
    for line in out.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│┃").split("│" if "│" in line else "┃")]
        if len(cells) > 4:
            rows[cells[0]] = cells
    return rows, " ".join(out.split())  # rich wraps long lines: compare text with single spaces


@pytest.fixture
def plan_store(tmp_path, monkeypatch) -> tuple[Path, Path, Path, Path]:
    """A study whose pre-training and OMP baseline have finished (by hand): config, store, and each
    run's weights.bin. Dataset sizes are not read (they do not matter here)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr("cvlth.cli.study_cmd._train_size", lambda ref: None)
    config = tmp_path / "damage.yaml"
    config.write_text(yaml.safe_dump(PLAN_STUDY))
    store = Store(tmp_path / "store")
    planned = expand(load_study(config))
    pretrain = next(p.run for p in planned if p.run.kind == "pretrain")
    baseline = next(p.run for p in planned if p.run.kind == "baseline")
    return config, store.root, _finish(store, pretrain), _finish(store, baseline)


def test_plan_counts_intact_finished_runs_as_done(plan_store, capsys) -> None:
    config, store, _, _ = plan_store
    rows, out = _plan(config, store, capsys)
    header = rows["run kind"]
    assert "damaged" not in header  # no damage, no column
    assert rows["pretrain"][header.index("done")] == "1" and rows["pretrain"][header.index("to do")] == "0"
    assert rows["baseline"][header.index("done")] == "1"
    assert (
        "2 finished runs checked, all intact (sizes and modification times; --verify hashes every file)"
        in out
    )


def test_plan_shows_a_truncated_artefact_as_damaged_to_do_with_what_to_run(plan_store, capsys) -> None:
    config, store, intact, truncated = plan_store
    truncated.write_bytes(WEIGHTS[:100])
    rows, out = _plan(config, store, capsys)
    header = rows["run kind"]
    assert header[:5] == ["run kind", "runs", "done", "damaged", "to do"]
    assert rows["pretrain"][1:5] == ["1", "1", "0", "0"]  # the intact run stays done
    assert rows["baseline"][1:5] == ["1", "0", "1", "1"]  # the damaged one is to do again
    run = f"baseline/{truncated.parent.name}"
    assert "(1 damaged)" in out
    assert (
        f"run {run} is damaged: {truncated} changed after the run finished "
        "(it is 100 bytes, 2,048 when the run finished)"
    ) in out
    assert f"recompute: `cvlth runs --store {store} --forget {run}` deletes their folders" in out
    assert f"pretrain/{intact.parent.name}" not in out


def test_plan_hashes_an_edited_artefact_whose_mtime_moved(plan_store, capsys) -> None:
    config, store, _, edited = plan_store
    info = edited.stat()
    edited.write_bytes(bytes(reversed(WEIGHTS)))  # same size, other bytes
    os.utime(edited, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # written a second later
    rows, out = _plan(config, store, capsys)
    assert rows["baseline"][1:5] == ["1", "0", "1", "1"]
    assert f"{edited} changed after the run finished (its sha256 differs)" in out


def test_verify_hashes_what_keeps_its_size_and_mtime(plan_store, capsys) -> None:
    config, store, _, flipped = plan_store
    info = flipped.stat()
    flipped.write_bytes(b"\xff" + WEIGHTS[1:])
    os.utime(flipped, ns=(info.st_atime_ns, info.st_mtime_ns))  # a bit flipped under the file system
    rows, _ = _plan(config, store, capsys)
    assert rows["baseline"][2] == "1"  # the quick check trusts size and mtime (documented)
    rows, out = _plan(config, store, capsys, "--verify")
    assert rows["baseline"][1:5] == ["1", "0", "1", "1"]
    assert f"{flipped} changed after the run finished (its sha256 differs)" in out
    assert "every file hashed (sha256)" in out


# --- study, finder, task and pre-training names are safe single path components ---------------------


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("study", ".."),
        ("study", "."),
        ("study", ".hidden"),
        ("study", "a/b"),
        ("study", "x" * 256),
        ("task", "[/]x"),
        ("task", ".."),
        ("pretraining", "../up"),
        ("finder", ".."),
    ],
)
def test_unsafe_names_are_refused_at_plan(tmp_path: Path, capsys, where: str, name: str) -> None:
    from hostile_fixtures import file_hashes

    study = {**PLAN_STUDY, "finders": [{"name": "omp", "method": "omp"}]}
    if where == "study":
        study["name"] = name
    elif where == "task":
        study["tasks"] = {name: DIGITS_TASK}
    elif where == "pretraining":
        study["pretrainings"] = {name: SUPERVISED_PRETRAINING}
    else:
        study["finders"] = [{"name": name, "method": "omp"}]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    store = tmp_path / "store"
    store.mkdir()
    (store / "keep.png").write_bytes(b"\x89PNG")
    before = file_hashes(tmp_path)
    capsys.readouterr()
    assert run_cli(["study", str(path), "--plan", "--store", str(store)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.startswith("error: ") and "invalid StudyConfig (1 error)" in captured.err
    assert "not a usable name" in captured.err or "at most 255 characters" in captured.err, captured.err
    assert file_hashes(tmp_path) == before
    assert sorted(p.name for p in store.iterdir()) == ["keep.png"]


def test_matching_table_at_80_columns_never_cuts_names_into_ambiguity() -> None:
    dense = [0.90, 0.92]
    names = [
        "supervised/imp-mnist",
        "supervised/imp-mnist-init",
        "supervised/imp-mnist-early",
        "supervised/omp",
    ]
    results = [matching(name, "mnist-with-a-long-task-name", dense, {0.2: [0.95]}) for name in names]
    console = Console(record=True, width=80)
    console.print(matching_rich_table(results))
    text = console.export_text()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    # the first column's lines, joined, hold every name whole (folded names continue on the next line)
    first_cells = [line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│")]
    joined = "".join(first_cells)
    for name in names:
        assert name in joined.replace(" ", ""), (name, text)
