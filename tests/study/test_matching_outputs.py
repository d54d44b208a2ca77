"""The study's result files (cvlth.results.outputs): the JSON written is the JSON read, key for key."""

import json

import pytest

from cvlth.errors import CvlthError
from cvlth.results.matching import PRETRAINING_TASK, SeedStats, matching
from cvlth.results.outputs import (
    MatchingEntry,
    PerturbationCurve,
    StudyOutputError,
    TicketEntry,
    matching_entries,
    read_entries,
    write_entries,
)


def _ci(mean, std, n):
    """The 95% interval a study writes for a mean (checked against scipy in test_uncertainty.py)."""
    ci = SeedStats(mean, std, n).ci95
    return None if ci is None else list(ci)


# Entries as a study writes them, by hand (key order included: the files are compared as text).
MATCHING = [
    {
        "source": "supervised/imp-up",
        "task": "digits",
        "metric": "accuracy",
        "test_size": 1797,
        "dense": {"mean": 0.75, "std": 0.25, "n": 2, "ci95": _ci(0.75, 0.25, 2)},
        "threshold": 0.5,
        "extreme_matching_sparsity": 0.2,
        "monotone_matching_sparsity": 0.2,
        "undecided": 1,
        "rows": [
            {
                "sparsity": 0.2,
                "mean": 0.81,
                "std": 0.0,
                "n": 2,
                "ci95": [0.81, 0.81],
                "matching": True,
                "decided": True,
                "margin": {"estimate": 0.31, "low": 0.25, "high": 0.37, "method": "paired", "df": 1.0},
            },
            {
                "sparsity": 0.36,
                "mean": 0.4,
                "std": 0.1,
                "n": 2,
                "ci95": _ci(0.4, 0.1, 2),
                "matching": False,
                "decided": False,
                "margin": {"estimate": -0.1, "low": -3.5, "high": 3.3, "method": "welch", "df": 1.7},
            },
        ],
        "universal_matching_sparsity": 0.2,
        "universal_monotone_sparsity": 0.2,
        "universal_tasks": ["digits"],
    },
    {
        "source": "supervised/imp-up",
        "task": PRETRAINING_TASK,
        "metric": "retrieval_accuracy",
        "test_size": None,
        "dense": {"mean": 0.5, "std": 0.0, "n": 1, "ci95": None},
        "threshold": 0.5,
        "extreme_matching_sparsity": None,
        "monotone_matching_sparsity": None,
        "undecided": 1,
        "rows": [
            {
                "sparsity": 0.2,
                "mean": 0.25,
                "std": 0.0,
                "n": 1,
                "ci95": None,
                "matching": False,
                "decided": False,
                "margin": {"estimate": -0.25, "low": None, "high": None, "method": "paired", "df": None},
            }
        ],
    },
]
TICKETS = [
    {
        "source": "moco/imp-task",
        "pretraining": "moco",
        "finder": "imp-task",
        "task": "digits",
        "finder_seed": 0,
        "method": "imp-downstream",
        "run": "runs/imp/abc",
        "levels": {
            "1": {"sparsity": 0.2, "mask": "runs/imp/abc/masks/level-01.safetensors"},
            "2": {"sparsity": 0.36, "mask": "runs/imp/abc/masks/level-02.safetensors"},
        },
    },
    {
        "source": "moco/random",
        "pretraining": "moco",
        "finder": "random",
        "task": None,
        "finder_seed": 3,
        "method": "random",
        "run": "runs/baseline/def",
        "levels": {"1": {"sparsity": 0.2, "mask": "runs/baseline/def/masks/level-01.safetensors"}},
    },
]
PERTURBATION = [
    {
        "source": "moco/imp-task",
        "task": "digits",
        "variant": "complement",
        "points": [
            {"level": 3, "nominal_sparsity": 0.488, "sparsity": 0.512, "mean": 0.5, "std": 0.01, "n": 2},
            {"level": 1, "nominal_sparsity": 0.2, "sparsity": 0.8, "mean": 0.3, "std": 0.0, "n": 1},
        ],
    }
]


@pytest.mark.parametrize(
    ("name", "kind", "data"),
    [
        ("matching.json", MatchingEntry, MATCHING),
        ("tickets.json", TicketEntry, TICKETS),
        ("perturbation.json", PerturbationCurve, PERTURBATION),
    ],
)
def test_files_read_back_and_rewrite_to_the_same_text(tmp_path, name, kind, data):
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    entries = read_entries(path, kind, hint="rerun")
    copy = tmp_path / "copy" / name
    write_entries(copy, entries)
    assert copy.read_text() == path.read_text()


def test_typed_fields():
    up, fig2 = (MatchingEntry.from_json(e) for e in MATCHING)
    assert up.result.threshold == 0.5 and up.result.extreme_matching_sparsity == 0.2
    assert up.universal_tasks == ("digits",) and fig2.universal_tasks is None
    assert fig2.result.on_pretraining_task and fig2.result.metric == "retrieval_accuracy"
    task, random = (TicketEntry.from_json(e) for e in TICKETS)
    assert task.label == "moco/imp-task→digits" and random.label == "moco/random (seed 3)"
    assert (task.finder_seed, random.finder_seed) == (0, 3)
    assert (
        task.levels[2].mask == "runs/imp/abc/masks/level-02.safetensors" and task.levels[2].sparsity == 0.36
    )
    (curve,) = (PerturbationCurve.from_json(e) for e in PERTURBATION)
    assert [(p.level, p.sparsity, p.n) for p in curve.points] == [(3, 0.512, 2), (1, 0.8, 1)]


def test_matching_entries_carry_universal_on_downstream_tasks_only():
    down = matching("s/f", "digits", [0.8, 0.84], {0.2: [0.83], 0.36: [0.70]})
    other = matching("s/f", "shapes", [0.5], {0.2: [0.4], 0.36: [0.6]})
    fig2 = matching("s/f", PRETRAINING_TASK, [0.5], {0.2: [0.6]})
    entries = [e.to_json() for e in matching_entries([fig2, down, other])]
    assert "universal_tasks" not in entries[0]
    # digits matches at 20% only (threshold 0.82 - 0.028), shapes at 36% only: no common sparsity
    assert entries[1]["universal_tasks"] == entries[2]["universal_tasks"] == ["digits", "shapes"]
    assert entries[1]["universal_matching_sparsity"] is None
    assert entries[1]["universal_monotone_sparsity"] is None


def test_older_matching_files_without_intervals_are_read(tmp_path):
    """matching.json written before intervals: no test size (shown as ?), Welch margins from the summaries."""
    path = tmp_path / "matching.json"
    keep = ("sparsity", "mean", "std", "n", "matching")
    older = {
        key: value for key, value in MATCHING[0].items() if key in ("source", "task", "metric", "threshold")
    }
    older["dense"] = {"mean": 0.75, "std": 0.25, "n": 2}
    older["rows"] = [{key: row[key] for key in keep} for row in MATCHING[0]["rows"]]
    path.write_text(json.dumps([older]))
    (entry,) = read_entries(path, MatchingEntry, hint="rerun")
    assert entry.result.test_size is None
    assert [row.margin.method for row in entry.result.rows] == ["welch", "welch"]
    assert entry.result.rows[0].margin.low is not None and not entry.result.rows[0].decided  # wide: n=2


def test_older_perturbation_files_without_levels_are_read(tmp_path):
    path = tmp_path / "perturbation.json"
    point = {"sparsity": 0.2, "mean": 0.5, "std": 0.0, "n": 1}
    path.write_text(json.dumps([{"source": "a/b", "task": "t", "variant": "ticket", "points": [point]}]))
    ((only,),) = (c.points for c in read_entries(path, PerturbationCurve, hint="rerun"))
    assert (only.level, only.nominal_sparsity, only.sparsity) == (None, None, 0.2)


def test_older_tickets_files_without_finder_seeds_are_read(tmp_path):
    path = tmp_path / "tickets.json"
    older = {key: value for key, value in TICKETS[0].items() if key != "finder_seed"}
    path.write_text(json.dumps([older]))
    (only,) = read_entries(path, TicketEntry, hint="rerun")
    assert only.finder_seed == 0 and only.label == "moco/imp-task→digits"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "tickets.json not found"),
        ("{not json", "tickets.json is not readable JSON"),
        ('{"a": 1}', "tickets.json is malformed: expected a list of ticket finder runs"),
        (json.dumps([TICKETS[0], {"source": "x"}]), "tickets.json is malformed: entry 1: KeyError"),
        (json.dumps([{**TICKETS[0], "levels": []}]), "tickets.json is malformed: entry 0: AttributeError"),
    ],
)
def test_bad_files_are_user_errors_naming_the_file(tmp_path, text, message):
    path = tmp_path / "tickets.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(StudyOutputError) as caught:
        read_entries(path, TicketEntry, hint="run the study again")
    assert isinstance(caught.value, CvlthError)
    assert message in str(caught.value) and "run the study again" in str(caught.value)
