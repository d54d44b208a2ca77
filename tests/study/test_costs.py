"""Compute time left from measured per-image costs (`cvlth study --plan`), and the benchmark that
measures them. Expected times are computed by hand from the measurement file's numbers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from cvlth.cli import run_cli
from cvlth.config import DataRef, validate_config
from cvlth.errors import CvlthError
from cvlth.study import cost_files
from cvlth.study.config import StudyConfig, load_study
from cvlth.study.cost_files import choose_measurements, read_measurements, write_measurements
from cvlth.study.costs import (
    SplitSizes,
    cost_lines,
    estimate_cost,
    evaluations,
    hours,
    official_sizes,
    split_sizes,
    study_work_kinds,
    trained_per_epoch,
)
from cvlth.study.plan import expand
from hostile_fixtures import cli_error

UPSTREAM = {"name": "world_upstream", "options": {"max_train": 1000, "max_val": 100, "max_test": 200}}
TASK = {"name": "world_mnist", "options": {"max_train": 500, "max_val": 50, "max_test": 100}}
STUDY = {
    "name": "costs",
    "backbone": {"arch": "resnet18", "width": 8, "stem": "cifar", "in_channels": 1},
    "pretrainings": {"sup": {"recipe": {"data": UPSTREAM, "train": {"epochs": 2, "batch_size": 300}}}},
    "tasks": {"a": {"data": TASK, "train": {"epochs": 3, "batch_size": 128, "eval_every_epochs": 2}}},
    "finders": [{"name": "up", "method": "imp", "stage": "upstream"}, {"name": "omp", "method": "omp"}],
    "rounds": 3,
    "transfer_levels": [3],
    "seeds": [0],
    "adapt": {"small_images": False},
}
SIZES = {
    "world_upstream": SplitSizes(1000, 100, 200, "here"),
    "world_mnist": SplitSizes(500, 50, 100, "here"),
}
# seconds per (training, evaluation) image of the upstream kind and of the task kind
UP_COSTS, TASK_COSTS = (2.0, 0.5), (1.0, 0.4)


def hand_seconds(pretrain_done: bool) -> float:
    tu, eu = UP_COSTS
    ta, ea = TASK_COSTS
    # batch 300 drops 100 of 1,000 images per epoch; evaluation: val 100 + test 200 after each epoch
    pretrain = 900 * 2 * tu + 300 * 2 * eu
    # upstream IMP, 3 levels: θ_p pruned first, then 3 trainings (the last level's too, for Fig. 2);
    # θ_p's own test pass (Fig. 2)
    imp = 3 * (900 * 2 * tu + 300 * 2 * eu) + 200 * eu
    # 3 transfers (dense, IMP ticket, OMP ticket): 500 -> 384 images per epoch at batch 128;
    # evaluated after epoch 2 and after the last (3): 2 x (50 + 100)
    transfer = 384 * 3 * ta + 150 * 2 * ea
    return (0 if pretrain_done else pretrain) + imp + 3 * transfer


class DoneStore:
    """A store in which only the pre-training is done."""

    def is_done(self, run) -> bool:  # noqa: ANN001
        return run.kind == "pretrain"


def _study() -> StudyConfig:
    return validate_config(StudyConfig, copy.deepcopy(STUDY))


def _kinds(study: StudyConfig) -> tuple[str, str]:
    kinds = study_work_kinds(expand(study), study.backbone)
    by_data = {kind.fields["data"]["name"]: key for key, (kind, _) in kinds.items()}
    assert len(kinds) == 2  # pre-training and upstream IMP share their recipe: one kind
    return by_data["world_upstream"], by_data["world_mnist"]


def measurement(path: Path, costs: dict[str, tuple[float, float]], name: str = "Test CPU") -> Path:
    kinds = {
        key: {
            "label": key,
            "measured": "2026-12-01T10:00:00",
            "threads": 2,
            "train": {"seconds_per_image": train, "batch_size": 8, "steps": 3},
            "eval": {"seconds_per_image": evaluate, "batch_size": 8, "images": 24},
        }
        for key, (train, evaluate) in costs.items()
    }
    data = {"format": "cvlth-costs/1", "device": {"type": "cpu", "name": name}, "note": "", "kinds": kinds}
    path.write_text(json.dumps(data))
    return path


def test_evaluation_and_epoch_counts_follow_the_loop():
    assert [evaluations(e, every) for e, every in [(182, 1), (23, 23), (3, 2), (4, 4), (82, 5)]] == [
        182,
        1,
        2,
        1,
        17,
    ]
    assert [trained_per_epoch(n, b) for n, b in [(1000, 300), (500, 128), (100, 128), (256, 128)]] == [
        900,
        384,
        100,
        256,
    ]


def test_hours_are_gpu_hours_on_cuda():
    assert hours(3_600_000, "cuda") == "1,000 GPU-hours" and hours(7200, "cuda") == "2.00 GPU-hours"
    assert hours(90, "cpu") == "0.03 hours (1.5 min)" and hours(36_000, "cpu") == "10.00 hours"


def test_estimate_equals_a_hand_computation(tmp_path):
    study = _study()
    up, task = _kinds(study)
    measured = read_measurements(measurement(tmp_path / "m.json", {up: UP_COSTS, task: TASK_COSTS}))
    estimate = estimate_cost(
        expand(study), DoneStore(), study.backbone, measured, lambda ref: SIZES[ref.name]
    )
    assert estimate.complete and estimate.runs_counted == 1 + 3  # IMP + transfers; pre-training done
    assert estimate.runs_free == 1  # the OMP masks: no training
    assert estimate.seconds == pytest.approx(hand_seconds(pretrain_done=True))


def test_missing_kinds_are_reported_not_guessed(tmp_path):
    study = _study()
    up, task = _kinds(study)
    measured = read_measurements(measurement(tmp_path / "m.json", {up: UP_COSTS}))
    estimate = estimate_cost(
        expand(study), DoneStore(), study.backbone, measured, lambda ref: SIZES[ref.name]
    )
    assert not estimate.complete and list(estimate.missing) == [task] and estimate.missing[task][1] == 3
    tu, eu = UP_COSTS
    assert estimate.seconds == pytest.approx(
        3 * (900 * 2 * tu + 300 * 2 * eu) + 200 * eu
    )  # IMP only (3 rounds)
    choice = choose_measurements("cpu", cost_file=tmp_path / "m.json")
    text = "\n".join(cost_lines(estimate, choice, "s.yaml", "cpu", str(tmp_path / "m.json")))
    assert "at least" in text and "1 of 4 runs to train counted" in text
    assert f"cvlth costs measure s.yaml --device cpu --output {tmp_path / 'm.json'}" in text
    assert "world_mnist" in text and task in text  # the missing kind, named


def test_no_measurement_gives_no_number_but_the_command(tmp_path):
    study = _study()
    estimate = estimate_cost(expand(study), DoneStore(), study.backbone, None, lambda ref: SIZES[ref.name])
    assert estimate.seconds == 0 and estimate.runs_counted == 0 and len(estimate.missing) == 2
    choice = choose_measurements("cuda", stored=[])
    lines = cost_lines(estimate, choice, "paper-resnet50", "cuda")
    assert lines[0] == "compute time left on cuda: unknown: no cuda measurement is stored yet"
    assert lines[1].endswith("cvlth costs measure paper-resnet50 --device cuda")
    assert not any(char.isdigit() for char in lines[0])


def test_unknown_sizes_leave_runs_out(tmp_path):
    study = _study()
    up, task = _kinds(study)
    measured = read_measurements(measurement(tmp_path / "m.json", {up: UP_COSTS, task: TASK_COSTS}))
    sizes = {"world_upstream": SIZES["world_upstream"], "world_mnist": None}
    estimate = estimate_cost(
        expand(study), DoneStore(), study.backbone, measured, lambda ref: sizes[ref.name]
    )
    assert dict(estimate.unknown_sizes) == {"world_mnist": 3} and not estimate.complete
    text = "\n".join(cost_lines(estimate, choose_measurements("cpu", tmp_path / "m.json"), "s", "cpu"))
    assert "not counted: 3 runs on world_mnist (its size is unknown" in text


def test_official_split_sizes_when_the_data_are_not_here():
    def sizes(name: str, **options) -> tuple[int, int, int] | None:
        found = official_sizes(DataRef(name=name, options=options))
        return None if found is None else (found.train, found.val, found.test)

    assert sizes("cifar10", val_split="last") == (45_000, 5_000, 10_000)
    assert sizes("svhn") == (68_257, 5_000, 26_032)  # as the registry describes it
    assert sizes("fashion_mnist", max_train=1000, val_size=100) == (1000, 100, 10_000)
    assert sizes("visda2017", image_size=224) == (147_397, 5_000, 55_388)
    assert sizes("voc_detection") == (16_551, 0, 4_952) and sizes("voc_segmentation") == (1_464, 0, 1_449)
    assert sizes("imagefolder") is None  # ImageNet or not: unknown until the data are here
    absent = split_sizes(DataRef(name="cifar100", root="/nonexistent/cifar100"))
    assert absent is not None and absent.source == "official" and absent.train == 45_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: "not json", "not readable JSON"),
        (lambda d: {**d, "format": "cvlth-costs/0"}, "not a cvlth-costs/1 file"),
        (lambda d: {**d, "device": {"type": "tpu", "name": "x"}}, "device.type must be one of cpu, cuda"),
        (lambda d: {**d, "kinds": []}, "kinds must be an object"),
        (lambda d: _kind(d, train={"seconds_per_image": -1.0}), r"train.seconds_per_image must be positive"),
        (lambda d: _kind(d, eval={}), r"eval.seconds_per_image must be a number \(got None\)"),
        (lambda d: _kind(d, measured="yesterday"), "measured must be an ISO date"),
        (lambda d: _kind(d, threads=0), "threads must be a positive integer"),
    ],
)
def test_malformed_measurement_files_are_refused_clearly(tmp_path, change, message):
    path = measurement(tmp_path / "m.json", {"k": (1.0, 1.0)})
    content = change(json.loads(path.read_text()))
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(CvlthError, match=message) as error:
        read_measurements(path)
    assert str(path) in error.value.message and "cvlth costs measure" in error.value.hint


def _kind(data: dict, **changes) -> dict:
    data["kinds"]["k"].update(changes)
    return data


def test_the_plan_chooses_the_device_s_file(tmp_path, monkeypatch):
    cpu = read_measurements(measurement(tmp_path / "cpu.json", {"k": (1.0, 1.0)}, name="Test CPU"))
    gpu = read_measurements(
        measurement(tmp_path / "gpu.json", {"k": (1.0, 1.0)}, name="NVIDIA H100 80GB HBM3")
    )
    data = json.loads(gpu.path.read_text())
    data["device"]["type"] = "cuda"
    write_measurements(gpu.path, data)
    gpu = read_measurements(gpu.path)
    stored = [cpu, gpu]
    monkeypatch.setattr(cost_files, "cpu_model", lambda: "Other CPU")
    other = choose_measurements("cpu", stored=stored)
    assert other.measurements is None and "no stored measurement for cpu 'Other CPU'" in other.reason
    assert choose_measurements("cpu", cost_device="test", stored=stored).measurements == cpu
    monkeypatch.setattr(cost_files, "cpu_model", lambda: "Test CPU")
    assert choose_measurements("cpu", stored=stored).measurements == cpu
    monkeypatch.setattr(cost_files, "local_device_name", lambda device: None)  # no GPU here
    only = choose_measurements("cuda", stored=stored)
    assert only.measurements == gpu and "the only stored cuda measurement" in only.reason
    assert choose_measurements("cuda", cost_device="h100", stored=stored).measurements == gpu
    assert choose_measurements("cuda", cost_device="a100", stored=stored).measurements is None


def test_plan_prints_the_estimate_and_its_source(tmp_path, capsys):
    study = _study()
    up, task = _kinds(study)
    config = tmp_path / "costs.yaml"
    config.write_text(yaml.safe_dump(STUDY))
    costs = measurement(tmp_path / "m.json", {up: UP_COSTS, task: TASK_COSTS})
    assert (
        run_cli(["study", str(config), "--plan", "--store", str(tmp_path / "s"), "--cost-file", str(costs)])
        == 0
    )
    out = capsys.readouterr().out
    hours = hand_seconds(pretrain_done=False) / 3600
    assert f"compute time left on cpu: {hours:.2f} hours for 5 runs to train" in out
    assert f"per-image costs of cpu 'Test CPU' measured 2026-12-01 by cvlth costs measure ({costs}" in out
    costs.write_text("{}")
    line = cli_error(
        ["study", str(config), "--plan", "--store", str(tmp_path / "s"), "--cost-file", str(costs)], capsys
    )
    assert f"measurement file {costs}: not a cvlth-costs/1 file" in line


@pytest.mark.slow
def test_benchmark_measures_every_kind_and_the_plan_reads_it(tmp_path):
    study = {
        "name": "tiny",
        "backbone": {"arch": "resnet18", "width": 4, "stem": "cifar", "in_channels": 1},
        "pretrainings": {
            "sup": {
                "recipe": {
                    "data": {"name": "world_digits", "options": {"image_size": 8}},
                    "train": {"epochs": 1, "batch_size": 32},
                }
            }  # fmt: skip
        },
        # CIFAR-10 is not here: timed on random 3x32x32 images, sized by its official splits
        "tasks": {
            "cifar": {
                "data": {"name": "cifar10", "root": str(tmp_path / "absent")},
                "train": {"epochs": 1, "batch_size": 16},
            }
        },  # fmt: skip
        "finders": [{"name": "omp", "method": "omp"}],
        "rounds": 1,
        "seeds": [0],
        "adapt": {"small_images": True},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(study))
    output = tmp_path / "measured.json"
    command = ["costs", "measure", str(config), "--steps", "1", "--max-seconds", "1", "--output", str(output)]
    assert run_cli([*command, "--note", "test"]) == 0
    measured = read_measurements(output)
    loaded = validate_config(StudyConfig, study)
    planned = expand(loaded)
    assert set(measured.kinds) == set(study_work_kinds(planned, loaded.backbone))
    by_data = {entry["kind"]["data"]["name"]: entry for entry in measured.kinds.values()}
    assert by_data["world_digits"]["data"] == "real"
    assert by_data["cifar10"]["data"].startswith("synthetic: random 3x32x32 images")
    for entry in measured.kinds.values():
        assert entry["train"]["steps"] == 1 and entry["threads"] >= 1
    estimate = estimate_cost(planned, DoneStore(), loaded.backbone, measured)
    assert estimate.complete and estimate.official_sizes == {"cifar10"}
    train, evaluate = measured.cost(
        next(k for k, e in measured.kinds.items() if e["kind"]["data"]["name"] == "cifar10")
    )
    # cifar10 official: 45,000 train (2,812 batches of 16), 5,000 val + 10,000 test, one evaluation
    per_transfer = 2812 * 16 * train + 15_000 * evaluate
    transfers = sum(1 for p in planned if p.run.kind == "transfer")
    assert estimate.seconds == pytest.approx(transfers * per_transfer)  # the pre-training is "done"


def test_the_stored_measurements_read_and_cover_the_packaged_cpu_studies():
    stored = cost_files.stored_measurements()
    assert stored and all(m.device_type in ("cpu", "cuda") for m in stored)
    assert not [m for m in stored if m.device_type == "cuda"]  # none made yet: no GPU was available
    cpus = [m for m in stored if m.device_type == "cpu"]
    for name in ("demo", "smoke", "cpu-study", "paper-resnet50"):  # re-measure when this fails
        study = load_study(name)
        kinds = set(study_work_kinds(expand(study), study.backbone))
        assert any(kinds <= set(cpu.kinds) for cpu in cpus), name  # on one of the machines measured
