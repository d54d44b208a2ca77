"""A study is checked in full by `--plan` and before its first run: every error a run would meet later
(a name, an option, a non-finite number, a seed, a checkpoint that does not fit the images) is one
message at once, never a traceback after hours of runs."""

import copy
from pathlib import Path

import pytest
import yaml

from cvlth.cli import run_cli
from cvlth.errors import ConfigError
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.runs.adaptation import input_adaptations
from cvlth.runs.kinds import AdaptConfig, ImportRun, ImpRun, PretrainRun, Recipe, TransferRun
from cvlth.study.config import StudyConfig, builtin_study_path, load_study
from cvlth.study.plan import expand
from study_fixtures import DIGITS_TASK, TINY, TINY_BACKBONE


def study_with(change) -> dict:
    study = copy.deepcopy(TINY)
    change(study)
    return study


def run_study_cli(tmp_path: Path, study: dict, capsys, plan: bool) -> tuple[int, str]:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study))
    store = tmp_path / "store"
    code = run_cli(["study", str(config), "--store", str(store), "--quiet", *(["--plan"] if plan else [])])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    if not plan:  # refused before the first run: nothing was computed
        assert not [p for p in store.glob("*/*/config.yaml")]
    return code, err


def _set(path: str, value):
    def change(study: dict) -> None:
        *parents, last = path.split(".")
        node = study
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return change


CASES = {
    "unknown task dataset": (
        _set("tasks.digits.data.name", "world_digitz"),
        "tasks.digits.data.name: unknown dataset 'world_digitz'",
        "world_digits",  # the hint lists the real names
    ),
    "unknown finder objective": (
        _set("finders.1.objective", {"name": "simclear"}),
        "finders.imp-task.objective.name: unknown objective 'simclear'",
        "supervised, simclr, moco, detection, segmentation",
    ),
    "unknown pre-training objective": (
        _set("pretrainings.supervised.recipe.objective", {"name": "mocov2"}),
        "pretrainings.supervised.recipe.objective.name: unknown objective 'mocov2'",
        "moco",
    ),
    "unknown data option": (
        _set("tasks.digits.data.options.max_trian", 10),
        "tasks.digits.data.options: dataset world_digits has no option 'max_trian'",
        # world_digits' loader takes image_size and seed; the study adds the subset options
        "its options are: image_size, seed, max_train, max_val, max_test",
    ),
    "subset option on per-image samples": (
        _set("tasks.digits.data", {"name": "world_scenes", "options": {"max_train": 10}}),
        "tasks.digits.data.options: dataset world_scenes has no option 'max_train'",
        "train_size, val_size, test_size, canvas_size, max_objects, object_sizes, source, seed\n",
    ),
    "unknown objective option": (
        _set("tasks.digits.objective.options.flips", False),
        "tasks.digits.objective.options: objective supervised has no option 'flips'",
        "its options are: augment, padding, flip, label_smoothing",
    ),
    "infinite lr": (
        _set("tasks.digits.optim.lr", float("inf")),
        "tasks.digits.optim.lr: input should be a finite number (got inf)",
        "",
    ),
    "nan weight decay": (
        _set("pretrainings.supervised.recipe.optim.weight_decay", float("nan")),
        "pretrainings.supervised.recipe.optim.weight_decay: input should be a finite number (got nan)",
        "",
    ),
    "negative seed": (_set("seeds", [0, -1]), "seeds.1: must be >= 0 (got -1)", ""),
    "repeated seed": (_set("seeds", [0, 0]), "seeds: seed 0 is listed more than once", ""),
    "repeated finder seed": (
        _set("finders.4.seeds", [1, 2, 1]),
        "finders.4.seeds: seed 1 is listed more than once",
        "",
    ),
    "negative finder seed": (_set("finders.0.seeds", [-2]), "finders.0.seeds.0: must be >= 0 (got -2)", ""),
    "streamed SSL views from centre crops": (
        lambda study: study["pretrainings"]["supervised"]["recipe"].update(
            data={"name": "imagefolder", "options": {"streaming": True, "train_crop": "center"}},
            objective={"name": "simclr"},
        ),
        "pretrainings.supervised.recipe: objective 'simclr' on streamed imagefolder draws its two views from the "
        "full image, but `train_crop: center` centre-crops the training images first",
        "remove `train_crop: center` from pretrainings.supervised.recipe.data.options",
    ),
    "omp with two seeds": (
        _set("finders.3.seeds", [0, 1]),
        "finder 'omp': omp draws nothing at random, so its seeds [0, 1] would all compute the same masks",
        "give it one seed (or none)",
    ),
}


@pytest.mark.parametrize("plan", [True, False], ids=["plan", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_invalid_study_is_refused_before_any_run(tmp_path, capsys, case, plan) -> None:
    change, message, hint = CASES[case]
    code, err = run_study_cli(tmp_path, study_with(change), capsys, plan)
    assert code == 2
    assert err.startswith("error: ")
    assert message in err
    assert hint in err


# --- an imported θ_p whose stem does not fit the task's images -------------------------------------


@pytest.fixture
def rgb_checkpoint(tmp_path) -> Path:
    """A 3-channel θ_p (the study's tasks are grayscale)."""
    spec = BackboneSpec(arch="resnet18", width=4, stem="cifar", in_channels=3)
    path = tmp_path / "rgb.pt"
    save_checkpoint(path, build_backbone(spec, 10).state_dict(), spec)
    return path


def imported_study(checkpoint: Path, adapt: dict) -> dict:
    study = copy.deepcopy(TINY)
    study["pretrainings"] = {"rgb": {"import_path": str(checkpoint)}}
    study["finders"] = [{"name": "omp", "method": "omp"}]
    study["adapt"] = adapt
    return study


@pytest.mark.parametrize("adapt", [{"small_images": False}, {"small_images": True, "keep_stem": True}])
def test_imported_checkpoint_with_other_channels_is_refused_at_plan(
    tmp_path, capsys, rgb_checkpoint, adapt
) -> None:
    code, err = run_study_cli(tmp_path, imported_study(rgb_checkpoint, adapt), capsys, plan=True)
    assert code == 2
    assert f"pre-training 'rgb' ({rgb_checkpoint}) → task 'digits'" in err
    assert "θ_p's stem takes 3-channel images, world_digits has 1-channel images" in err


def test_imported_checkpoint_whose_stem_is_rebuilt_plans(tmp_path, rgb_checkpoint) -> None:
    study = StudyConfig.model_validate(imported_study(rgb_checkpoint, {"small_images": True}))
    assert len(expand(study)) == 1 + 2 + 1 + 2  # θ_p, dense x 2 seeds, omp, its level-3 ticket x 2 seeds


def test_missing_checkpoint_is_not_checked_at_plan(tmp_path) -> None:
    study = StudyConfig.model_validate(imported_study(tmp_path / "later.pt", {"small_images": False}))
    assert expand(study)  # the import run reports it when it runs (e.g. the file is on another machine)


# --- the adaptations a run makes, for its log and result ---------------------------------------------

DIGITS = Recipe.model_validate(DIGITS_TASK)
THETA = ImportRun(path="theta.pt")


def transfer(adapt: AdaptConfig, task: Recipe = DIGITS) -> TransferRun:
    return TransferRun(pretrained=THETA, task=task, adapt=adapt)


def test_adaptations_say_what_changes() -> None:
    rebuilt = transfer(AdaptConfig(small_images=True))
    assert input_adaptations(rebuilt, theta_channels=1, image_channels=3) == [
        "stem conv re-initialised as a 3x3 stride-1 conv, max-pool removed (adapt.small_images)",
        "stem built for 3 input channels (world_digits) instead of θ_p's 1",
    ]
    assert input_adaptations(rebuilt, 1, 1) == [
        "stem conv re-initialised as a 3x3 stride-1 conv, max-pool removed (adapt.small_images)"
    ]
    kept = transfer(AdaptConfig(small_images=True, keep_stem=True))
    assert input_adaptations(kept, 3, 3) == ["max-pool removed (adapt.small_images)"]
    assert input_adaptations(transfer(AdaptConfig(small_images=False)), 3, 3) == []


def test_adaptations_refuse_what_cannot_be_adapted() -> None:
    dense = Recipe.model_validate(
        {**DIGITS_TASK, "data": {"name": "world_scenes"}, "objective": {"name": "detection"}}
    )
    upstream = ImpRun(pretrained=THETA, stage="upstream", recipe=DIGITS, rounds=2)
    pretrain = PretrainRun(backbone=TINY_BACKBONE, recipe=DIGITS)
    for run in (
        transfer(AdaptConfig(small_images=False)),
        transfer(AdaptConfig(small_images=True, keep_stem=True)),
        transfer(AdaptConfig(small_images=True), task=dense),  # dense tasks load θ_p's stem
        upstream,
        pretrain,
    ):
        with pytest.raises(ConfigError, match="θ_p's stem takes 3-channel images, .* has 1-channel images"):
            input_adaptations(run, 3, 1)
        assert input_adaptations(run, 1, 1) == (
            ["max-pool removed (adapt.small_images)"]
            if run.kind == "transfer" and run.adapt.keep_stem
            else []
        )


def test_valid_studies_pass_every_check() -> None:
    planned = expand(StudyConfig.model_validate(TINY))  # no false alarm on the shared tiny study
    assert len(planned) == 1 + 2 + 5 * (1 + 2)  # θ_p, dense x 2 seeds, 5 finders x (finder + 2 seeds)


def test_a_study_too_large_to_plan_is_refused_before_building_runs() -> None:
    from cvlth.errors import ConfigError
    from cvlth.study.config import StudyConfig
    from cvlth.study.plan import MAX_PLANNED_RUNS, expand
    from study_fixtures import TINY

    huge = TINY | {"seeds": list(range(900)), "rounds": 30, "transfer_levels": [1]}
    huge["tasks"] = {f"t{i}": TINY["tasks"]["digits"] for i in range(20)}
    # 18,001 θ_p + dense; per finder 20 tasks x 1 level x 900 seeds = 18,000 transfers + its tickets
    # (1, or 20 for the two downstream IMP finders): 18,001 + 3 x 18,001 + 2 x 18,020 = 108,044.
    with pytest.raises(ConfigError, match=f"up to 108,044 runs.*at most {MAX_PLANNED_RUNS:,}"):
        expand(StudyConfig.model_validate(huge))  # refused from its sizes, before building a run


@pytest.mark.parametrize(
    ("pretraining", "option", "value", "shipped"),
    [("moco", "queue_size", None, 4096), ("moco", "dim", 64, 128), ("simclr", "projection_dim", 64, 128)],
)
def test_world_heads_that_do_not_fit_the_upstream_objective_are_refused_at_plan(
    pretraining, option, value, shipped, tmp_path
):
    """The demo's zoo θ_p bring their heads (MoCo: and its 4,096-key queue) into upstream IMP."""
    config = yaml.safe_load(builtin_study_path("demo").read_text())
    options = config["pretrainings"][pretraining]["upstream"]["objective"]["options"]
    if value is None:
        options.pop(option)  # the default, 65,536
    else:
        options[option] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=rf"{option} .*trained with {option} {shipped}") as error:
        expand(load_study(path))
    assert f"`{option}: {shipped}`" in error.value.hint
