"""Study config validation and DAG expansion (no training)."""

import pytest
import torch

from cvlth.config import validate_config
from cvlth.errors import ConfigError
from cvlth.masks import Mask
from cvlth.pruning.variants import restricted_complement, vary_mask
from cvlth.runs.kinds import ImportRun, ImpRun, PretrainRun, TransferRun, dependencies
from cvlth.store import Store
from cvlth.study.config import StudyConfig, load_study
from cvlth.study.plan import expand, summarize_plan
from cvlth.zoo.files import checkpoint_file

BASE = {
    "name": "plan",
    "backbone": {"arch": "resnet18", "width": 8, "stem": "cifar", "in_channels": 1},
    "pretrainings": {"sup": {"recipe": {"data": {"name": "world_upstream"}}}},
    "tasks": {"a": {"data": {"name": "world_mnist"}}, "b": {"data": {"name": "world_digits"}}},
    "finders": [
        {"name": "up", "method": "imp", "stage": "upstream"},
        {"name": "task", "method": "imp", "stage": "downstream", "tasks": ["a"]},
        {"name": "omp", "method": "omp"},
    ],
    "rounds": 4,
    "transfer_levels": [2, 4],
    "seeds": [0, 1],
}


def _study(**changes) -> StudyConfig:
    return validate_config(StudyConfig, {**BASE, **changes})


def test_expansion_counts_and_dependency_order():
    planned = expand(_study())
    kinds = [p.run.kind for p in planned]
    # pretrain 1; dense 2 tasks x 2 seeds; up & omp: 2 levels x 2 tasks x 2 seeds; task: 2 levels x 1 task x 2 seeds
    assert kinds.count("pretrain") == 1
    assert kinds.count("imp") == 2 and kinds.count("baseline") == 1
    assert kinds.count("transfer") == 4 + 8 + 8 + 4
    seen: set[str] = set()
    for item in planned:  # every dependency comes earlier in the list
        for dep in dependencies(item.run):
            assert f"{dep.kind}/{dep.hash()}" in seen
        seen.add(f"{item.run.kind}/{item.run.hash()}")
    task_specific = [p for p in planned if p.finder == "task" and p.run.kind == "transfer"]
    assert {p.task for p in task_specific} == {"a"}  # a task-specific mask stays on its task


def test_finder_tasks_limit_where_tickets_are_transferred():
    finders = [*BASE["finders"], {"name": "rnd", "method": "random", "tasks": ["b"]}]
    planned = expand(_study(finders=finders))
    assert {p.task for p in planned if p.finder == "rnd" and p.run.kind == "transfer"} == {"b"}
    assert {p.task for p in planned if p.finder == "up" and p.run.kind == "transfer"} == {"a", "b"}


def test_finder_levels_limit_which_levels_are_transferred():
    finders = [
        {"name": "omp", "method": "omp", "tasks": ["a"]},
        {"name": "dense", "method": "omp", "tasks": ["b"], "levels": [4]},
    ]
    planned = expand(_study(finders=finders))
    levels = {(p.finder, p.task, p.level) for p in planned if p.run.kind == "transfer" and p.finder}
    assert levels == {("omp", "a", 2), ("omp", "a", 4), ("dense", "b", 4)}  # omp: the study's levels
    omp = [p.run for p in planned if p.finder in ("omp", "dense") and p.run.kind == "baseline"]
    assert len({run.hash() for run in omp}) == 1  # the same masks: computed once, listed twice


def test_task_levels_and_finder_levels_both_narrow_the_grid():
    finders = [
        {"name": "omp", "method": "omp"},
        {"name": "rnd", "method": "random", "levels": [1, 2]},
    ]
    planned = expand(_study(finders=finders, task_levels={"b": [2, 3]}))
    levels = {(p.finder, p.task, p.level) for p in planned if p.run.kind == "transfer" and p.finder}
    assert levels == {
        ("omp", "a", 2),
        ("omp", "a", 4),  # task a: the study's transfer_levels
        ("omp", "b", 2),  # task b: its own levels
        ("omp", "b", 3),
        ("rnd", "a", 1),  # the finder's levels
        ("rnd", "a", 2),
        ("rnd", "b", 2),  # both: what both allow
    }


def test_perturbation_variants_are_added_for_listed_finders_only():
    planned = expand(_study(perturbation={"finders": ["task"], "levels": [4]}))
    variants = {(p.finder, p.level, p.variant) for p in planned if p.run.kind == "transfer"}
    assert {("task", 4, v) for v in ("ticket", "complement", "random", "perturbed")} <= variants
    assert ("task", 2, "complement") not in variants and ("up", 4, "complement") not in variants


@pytest.mark.parametrize(
    "change, message",
    [
        ({"finders": [{"name": "x", "method": "omp", "rewind": "init"}]}, "apply to imp only"),
        ({"transfer_levels": [7]}, "outside 1..4"),
        ({"finders": [{"name": "x", "method": "omp", "levels": [0]}]}, "finder 'x': levels: 0 is outside"),
        ({"task_levels": {"zzz": [1]}}, "task_levels: unknown task 'zzz'"),
        ({"task_levels": {"a": [5]}}, "task_levels.a: 5 is outside 1..4"),
        ({"perturbation": {"finders": ["omp"]}}, "not an imp finder"),
        ({"pretrainings": {"sup": {}}}, "exactly one of"),
        (
            {"finders": [{"name": "up", "method": "imp", "stage": "downstream", "tasks": ["zzz"]}]},
            "unknown task 'zzz'",
        ),
    ],
)
def test_invalid_studies_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        _study(**change)


def test_upstream_imp_cannot_rewind_to_init():
    with pytest.raises(ValueError, match="upstream IMP rewinds to θ_p"):
        ImpRun(
            pretrained=expand(_study())[0].run,
            stage="upstream",
            recipe={"data": {"name": "world_upstream"}},
            rounds=2,
            rewind="init",
        )


def test_packaged_studies_validate_and_plan_without_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CVLTH_DATA", str(tmp_path / "nowhere"))
    for name in ("demo", "smoke", "cpu-study", "paper-resnet50"):
        study = load_study(name)
        summary = summarize_plan(expand(study), Store(tmp_path / "store"))
        assert summary.runs_left == sum(summary.total.values()) > 0
        if name == "paper-resnet50":  # no dataset here: the time left is unknown, not "0 h"
            assert summary.unknown_sizes
    paper = load_study("paper-resnet50")
    assert paper.rounds == 18 and paper.seeds == [0, 1, 2]
    transfers = [p for p in expand(paper) if isinstance(p.run, TransferRun)]
    # Per pre-training and seed: 4 small classification tasks x (dense + upstream IMP, random, OMP at
    # 18 levels + task IMP from θ_p, θ_0, θ_5% at 18 levels x 4 perturbation variants); VisDA and the
    # two VOC tasks x (dense + upstream IMP, random and task IMP at 18 levels); VisDA's task IMP also
    # from θ_0 and θ_5% (18 levels each).
    assert len(transfers) == 3 * 3 * (4 * (1 + 3 * 18 + 3 * 18 * 4) + 3 * (1 + 3 * 18) + 2 * 18)
    finders = {(p.finder, p.variant) for p in transfers if p.task == "cifar10"}
    assert {(f, "complement") for f in ("imp-task", "imp-task-init", "imp-task-early")} <= finders
    assert {p.level for p in transfers if p.task == "voc_detection" and p.level} == set(range(1, 19))
    assert str(tmp_path / "nowhere") in paper.tasks["cifar10"].data.root
    cpu_study = load_study("cpu-study")
    cpu = expand(cpu_study)
    dense_levels = {p.level for p in cpu if p.task in ("detection", "segmentation") and p.level}
    assert dense_levels == {10}  # task_levels narrow the expensive transfers
    assert {p.level for p in cpu if p.task == "mnist" and p.level} == {5, 10, 14}
    # the world issue's floor for the longer study: >= 95% sparsity, >= 3 seeds, no pre-training
    assert 1 - (1 - cpu_study.fraction) ** cpu_study.rounds >= 0.95 and len(cpu_study.seeds) >= 3
    assert not [p for p in cpu if isinstance(p.run, PretrainRun)]


def test_the_demo_imports_the_zoo_and_reaches_the_sparsities_where_tickets_differ(monkeypatch, tmp_path):
    """As in the paper, the demo pre-trains nothing: its θ_p come from cvlth's model zoo."""
    monkeypatch.setenv("CVLTH_DATA", str(tmp_path / "nowhere"))
    study = load_study("demo")
    planned = expand(study)
    assert not [p for p in planned if isinstance(p.run, PretrainRun)]
    imports = {p.run.path for p in planned if isinstance(p.run, ImportRun)}
    assert imports == {"world:supervised", "world:simclr", "world:moco"}
    assert all(checkpoint_file(path).is_file() for path in imports)  # shipped with the package
    assert study.rounds >= 10 and 1 - (1 - study.fraction) ** study.rounds >= 0.89
    assert max(study.transfer_levels) == study.rounds and len(study.seeds) >= 3
    kinds = {(f.method, f.stage, f.rewind) for f in study.finders}
    assert kinds >= {
        ("imp", "upstream", "pretrained"),
        ("imp", "downstream", "pretrained"),
        ("imp", "downstream", "init"),
        ("imp", "downstream", "early"),
    } and {f.method for f in study.finders} == {"imp", "omp", "random"}
    assert study.perturbation is not None and len(study.pretrainings) == 3  # Fig. 2, IoU between θ_p


def test_mask_variants_keep_counts():
    generator = torch.Generator().manual_seed(0)
    mask = Mask(
        {"l1": torch.rand(40, 10, generator=generator) < 0.2, "l2": torch.rand(30, generator=generator) < 0.7}
    )
    complement = restricted_complement(mask, seed=1)
    for name in mask:
        kept = int(mask[name].sum())
        pruned = mask[name].numel() - kept
        assert not (complement[name] & mask[name]).any()  # only weights the ticket prunes
        assert int(complement[name].sum()) == min(kept, pruned)
    assert vary_mask(mask, "random_layerwise", seed=2).layer_counts() == mask.layer_counts()
    assert vary_mask(mask, "perturbed", seed=2, fraction=0.1).layer_counts() == mask.layer_counts()
    assert vary_mask(mask, "ticket", seed=2) is mask


def test_random_variant_is_the_papers_global_random_mask_of_equal_sparsity():
    generator = torch.Generator().manual_seed(0)
    mask = Mask(
        {
            "l1": torch.rand(200, 10, generator=generator) < 0.05,
            "l2": torch.rand(300, generator=generator) < 0.9,
        }
    )
    first, again, other = (vary_mask(mask, "random", seed=s) for s in (3, 3, 4))
    kept = lambda m: sum(int(t.sum()) for t in m.values())  # noqa: E731
    assert kept(first) == kept(mask) and first.shapes == mask.shapes
    assert first == again and first != other
    # global, not layer-matched: each layer keeps about the overall density, not the ticket's own.
    density = kept(mask) / sum(t.numel() for t in mask.values())
    assert abs(int(first["l1"].sum()) / 2000 - density) < 0.05
    assert first.layer_counts() != mask.layer_counts()


def test_layer_matched_random_keeps_the_hash_it_had_as_random():
    from cvlth.run_identity import identity

    base = expand(
        StudyConfig.model_validate({**BASE, "perturbation": {"finders": ["task"], "variants": ["random"]}})
    )
    run = next(p.run for p in base if p.variant == "random")
    layerwise = run.model_copy(update={"variant": "random_layerwise"})
    assert identity(layerwise)["variant"] == "random"  # what `random` meant before: same hash
    assert identity(run)["variant"] == "random_global"


def test_import_with_an_unset_variable_says_which(tmp_path, monkeypatch):
    from cvlth.errors import CvlthError
    from cvlth.runs.execute import Context
    from cvlth.runs.kinds import ImportRun
    from cvlth.runs.pretrain import execute_import

    monkeypatch.delenv("CVLTH_NOT_SET", raising=False)
    run = ImportRun(path="${CVLTH_NOT_SET}/moco.pth.tar", source="moco")
    with pytest.raises(CvlthError, match="environment variable that is not set"):
        execute_import(run, None, Context(store=Store(tmp_path)))


def test_task_adapt_sets_one_tasks_classifier_adaptation() -> None:
    """The paper's VisDA keeps θ_p's ImageNet stem at 224 px while the 32x32 tasks rebuild it."""
    from cvlth.study.config import load_study
    from cvlth.study.plan import expand

    planned = expand(load_study("paper-resnet50"))
    adapts = {
        (item.task, item.run.adapt.small_images)
        for item in planned
        if item.run.kind == "transfer" and item.run.task.objective.name == "supervised"
    }
    assert ("visda2017", False) in adapts and ("visda2017", True) not in adapts
    assert ("cifar10", True) in adapts and ("cifar10", False) not in adapts


def test_the_progress_line_gives_the_sparsity_of_the_studys_pruning_fraction():
    from cvlth.study.runner import describe

    planned = expand(_study(fraction=0.5))
    ticket = next(p for p in planned if p.run.kind == "transfer" and p.finder == "up" and p.level == 2)
    assert "level 2 (75.0%)" in describe(ticket)  # 1 - 0.5^2, not 1 - 0.8^2 = 36%
    dense = next(p for p in planned if p.run.kind == "transfer" and p.finder is None)
    assert "dense" in describe(dense)


def test_rewind_fraction_is_a_study_key_of_early_rewinding_finders():
    early = {"name": "early", "method": "imp", "stage": "downstream", "rewind": "early", "tasks": ["a"]}
    default = expand(_study(finders=[early]))
    tenth = expand(_study(finders=[{**early, "rewind_fraction": 0.1}]))
    imp = {p.run.rewind_fraction: p.run for p in [*default, *tenth] if p.run.kind == "imp"}
    assert set(imp) == {0.05, 0.1} and imp[0.05].hash() != imp[0.1].hash()
    with pytest.raises(ConfigError, match="rewind_fraction` applies to rewind: early only"):
        _study(finders=[{**early, "rewind": "init", "rewind_fraction": 0.1}])
