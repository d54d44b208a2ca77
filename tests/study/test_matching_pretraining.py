"""Fig. 2 (tickets and θ_p on the pre-training task), universal sparsity and perturbation curves
as `cvlth study` writes them: against hand-made results and against direct evaluations."""

import copy
import json
from pathlib import Path

import pytest
import torch

import cvlth.pruning.imp as imp_module
from cvlth import run_files
from cvlth.data.classification import DatasetSplits, ImageSet
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.objectives.registry import build_objective
from cvlth.pruning.strategies import level_sparsity
from cvlth.results.matching import PRETRAINING_TASK
from cvlth.runs import execute
from cvlth.runs import training as run_training
from cvlth.runs.kinds import Recipe
from cvlth.runs.upstream import evaluate_on_pretraining
from cvlth.store import Store
from cvlth.study.config import StudyConfig
from cvlth.study.plan import expand
from cvlth.study.runner import matching_table, perturbation_curves, run_study, write_matching
from study_fixtures import NEEDS_FASHION_MNIST, TINY

ONE_FINDER = {
    **TINY,
    "finders": [
        {"name": "imp-up", "method": "imp", "stage": "upstream"},
        {"name": "imp-task", "method": "imp", "stage": "downstream"},
    ],
    "perturbation": {"finders": ["imp-task"], "variants": ["ticket", "complement", "random"]},
}


def _fake_results(study: StudyConfig, planned) -> list[dict]:
    """Made-up results: dense transfers 0.80 / 0.84, tickets 0.83 - 0.01 * level, upstream IMP
    rounds 0.70 / 0.62 and θ_p 0.65; complements at the sparsity 1 - s of the exact complement."""
    results = []
    for item in planned:
        run = item.run
        if run.kind == "imp" and run.stage == "upstream":
            rounds = [
                {
                    "trained_with_level": level,
                    "selection": {"metric": "val.accuracy", "mode": "max"},
                    "test_at_best_val": {"accuracy": value, "loss": 1.0},
                    "test_size": 1000,
                }
                for level, value in ((1, 0.70), (2, 0.62))
            ]
            dense = {"test": {"accuracy": 0.65, "loss": 1.2}, "metric": "accuracy"}
            results.append({"levels": [], "rounds": rounds, "dense_upstream": dense})
        elif run.kind == "transfer":
            nominal = level_sparsity(item.level)
            sparsity = {"complement": 1 - nominal}.get(item.variant, nominal) if item.level else 0.0
            value = 0.80 + 0.04 * item.seed if item.finder is None else 0.83 - 0.01 * item.level
            value -= {"complement": 0.3, "random": 0.1}.get(item.variant, 0.0)
            results.append({"sparsity": sparsity, "test_at_best_val": {"accuracy": value}, "test_size": 500})
        else:
            results.append({})
    return results


def test_pretraining_task_rows_and_measured_perturbation_sparsity():
    study = StudyConfig.model_validate(ONE_FINDER)
    planned = expand(study)
    results = _fake_results(study, planned)
    table = {(r.source, r.task): r for r in matching_table(study, planned, results)}
    fig2 = table[("supervised/imp-up", PRETRAINING_TASK)]
    # θ_p evaluated once: std 0, threshold = 0.65; level 1 (20%) 0.70 matches, level 2 (36%) 0.62 not
    assert (fig2.dense.mean, fig2.dense.std, fig2.dense.n) == (0.65, 0.0, 1)
    assert fig2.threshold == 0.65 and fig2.metric == "accuracy"
    assert [(r.sparsity, r.stats.mean, r.matching) for r in fig2.rows] == [
        (0.2, 0.70, True),
        (0.36, 0.62, False),
    ]
    assert fig2.extreme_matching_sparsity == 0.2
    # downstream: dense 0.80/0.84 -> threshold 0.82 - 0.0283 = 0.7917; level 3 ticket 0.80 matches
    digits = table[("supervised/imp-up", "digits")]
    assert digits.threshold == pytest.approx(0.82 - (0.02 * 2**0.5))
    assert digits.extreme_matching_sparsity == pytest.approx(0.488)

    curves = {c.variant: c.points for c in perturbation_curves(study, planned, results)}
    assert set(curves) == {"ticket", "complement", "random"}
    (complement,) = curves["complement"]
    assert complement.sparsity == pytest.approx(1 - 0.488) and complement.nominal_sparsity == 0.488
    assert complement.level == 3 and complement.n == 2
    assert complement.mean == pytest.approx(0.80 - 0.3)
    assert curves["random"][0].sparsity == pytest.approx(0.488)


def test_matching_json_holds_fig2_and_universal(tmp_path):
    study = StudyConfig.model_validate(ONE_FINDER)
    planned = expand(study)
    write_matching(tmp_path, matching_table(study, planned, _fake_results(study, planned)))
    entries = {(e["source"], e["task"]): e for e in json.loads((tmp_path / "matching.json").read_text())}
    fig2 = entries[("supervised/imp-up", PRETRAINING_TASK)]
    assert fig2["dense"] == {"mean": 0.65, "std": 0.0, "n": 1, "ci95": None}
    # one IMP run: θ_p and each ticket measured once, so only the test sample (1,000 images) is uncertain
    assert fig2["test_size"] == 1000 and fig2["rows"][0]["margin"]["method"] == "binomial"
    digits = entries[("supervised/imp-up", "digits")]
    assert digits["test_size"] == 500
    assert {row["margin"]["method"] for row in digits["rows"]} == {"paired"}  # finder seed 0: the dense seeds
    assert "universal_matching_sparsity" not in entries[("supervised/imp-up", PRETRAINING_TASK)]
    assert entries[("supervised/imp-up", "digits")]["universal_matching_sparsity"] == pytest.approx(0.488)
    assert entries[("supervised/imp-up", "digits")]["universal_tasks"] == ["digits"]
    text = (tmp_path / "matching.md").read_text()
    assert (
        f"| supervised/imp-up | {PRETRAINING_TASK} | accuracy | 1,000 | 0.6500 ± 0.0000 [–] | 20.00% | 20.00% |"
        in text
    )
    assert "std is 0" in text


def _splits(n: int = 48, size: int = 16) -> DatasetSplits:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    split = ImageSet(images, labels, [str(i) for i in range(10)])
    return DatasetSplits("synthetic", split, split, split, mean=(0.5,), std=(0.25,))


@pytest.mark.parametrize("name", ["supervised", "simclr", "moco"])
def test_evaluate_on_pretraining_is_the_objective_on_theta_p_untouched(name):
    data = _splits()
    model = build_backbone(BackboneSpec("resnet18", 4, "cifar", 1), num_classes=10)
    recipe = Recipe.model_validate(
        {
            "data": {"name": "synthetic"},
            "objective": {"name": name, "options": {"queue_size": 32} if name == "moco" else {}},
        }
    )
    reference = build_objective(recipe.objective, feature_dim=32, data=data, seed=5)
    heads = {k: {p: t + 0.01 for p, t in m.state_dict().items()} for k, m in reference.modules().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = data.test.batches(16, shuffle=False)
    evaluated = build_objective(recipe.objective, feature_dim=32, data=data, seed=0)
    for key, module in evaluated.modules().items():
        module.load_state_dict(heads[key])
    result = evaluate_on_pretraining(model, evaluated, batches)

    # directly: the objective with those heads, on a copy of θ_p in eval mode
    direct_model = copy.deepcopy(model).eval()
    objective = build_objective(recipe.objective, feature_dim=32, data=data, seed=0)
    for key, module in objective.modules().items():
        module.load_state_dict(heads[key])
        module.eval()
    if name == "moco":
        objective.bind(direct_model)
        objective.key_encoder.eval()
    if name == "supervised":  # independent top-1: normalise by hand, argmax of the logits
        x = (data.test.images.float() / 255 - 0.5) / 0.25
        with torch.no_grad():
            expected = float((direct_model(x).argmax(1) == data.test.labels).float().mean())
        assert result["metric"] == "accuracy"
    else:
        with torch.no_grad():
            expected = objective.evaluate(direct_model, batches)["feature_retrieval_accuracy"]
        assert result["metric"] == "feature_retrieval_accuracy"  # Eq. 2 on backbone features
    assert result["test"][result["metric"]] == pytest.approx(expected, abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # θ_p untouched
    assert model.fc.weight.requires_grad


def _top1(model: torch.nn.Module, images: ImageSet, data: DatasetSplits) -> float:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    model.eval()
    with torch.no_grad():
        logits = model((images.images.float() / 255 - mean) / std)
    return float((logits.argmax(1) == images.labels).float().mean())


@pytest.mark.slow
@NEEDS_FASHION_MNIST
def test_fig2_numbers_of_a_tiny_study_against_direct_evaluation(tmp_path, monkeypatch):
    """θ_p and each upstream round's trained weights, evaluated here by hand, are the Fig. 2 rows."""
    config = {**TINY, "name": "fig2", "finders": [{"name": "imp-up", "method": "imp", "stage": "upstream"}]}
    config["seeds"] = [0]
    study = StudyConfig.model_validate(config)
    trained: dict[str, dict[str, torch.Tensor]] = {}
    real_train = run_training.train

    def spy(model, *args, run=None, **kwargs):
        result = real_train(model, *args, run=run, **kwargs)
        trained[Path(run).name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return result

    monkeypatch.setattr(run_training, "train", spy)  # the pre-training
    monkeypatch.setattr(imp_module, "train", spy)  # the IMP rounds
    store = Store(tmp_path / "store")
    outcome = run_study(study, store, quiet=True, log=lambda _: None)
    fig2 = next(r for r in outcome.matching if r.task == PRETRAINING_TASK)

    imp = next(item.run for item in expand(study) if item.run.kind == "imp")
    data = execute.Context(store=store).dataset(imp.recipe.data)
    theta = import_checkpoint(Path(store.run_dir(imp.pretrained)) / run_files.THETA_P, source="cvlth")
    model = build_backbone(BackboneSpec("resnet18", 4, "cifar", 1), num_classes=data.num_classes)
    model.load_state_dict(theta.state_dict)
    assert fig2.dense.mean == pytest.approx(_top1(model, data.test, data), abs=1e-6)
    assert (fig2.dense.std, fig2.threshold) == (0.0, fig2.dense.mean)
    rows = {row.sparsity: row.stats.mean for row in fig2.rows}
    assert sorted(rows) == [0.2, 0.36, 0.488]  # every level is trained, the last (3) included
    for level in (1, 2, 3):
        model.load_state_dict(trained[f"round-{level:02d}"])
        assert rows[round(level_sparsity(level), 6)] == pytest.approx(_top1(model, data.test, data), abs=1e-6)
    table = json.loads((outcome.folder / "matching.json").read_text())
    assert any(e["task"] == PRETRAINING_TASK and e["dense"]["std"] == 0.0 for e in table)
    from cvlth.report import write_report

    write_report(outcome.folder, store.root)  # the CLI writes it after the study
    assert PRETRAINING_TASK in (outcome.folder / "report.md").read_text()
