"""What a run is (its hash) and where its randomness comes from (its seeds)."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cvlth import run_files
from cvlth.masks import Mask
from cvlth.pruning import imp as imp_module
from cvlth.pruning import variants
from cvlth.run_identity import config_hash
from cvlth.runs import context, execute
from cvlth.runs import pretrain as run_pretrain
from cvlth.runs import training as run_training
from cvlth.runs.kinds import ImportRun, ImpRun, PretrainRun, TransferRun
from cvlth.seeds import derive_seeds, mix
from cvlth.store import Store
from cvlth.study.config import StudyConfig, load_study
from cvlth.study.plan import expand
from cvlth.training.train_state import step_generator
from study_fixtures import DIGITS_TASK, NEEDS_FASHION_MNIST, TINY


def _numpy_stream(entropy: list[int], index: int) -> int:
    """Independently: child ``index`` of numpy's SeedSequence, its first 64-bit word, top 63 bits."""
    child = np.random.SeedSequence(entropy).spawn(6)[index]
    return int(child.generate_state(1, dtype=np.uint64)[0]) >> 1


def test_seeds_are_seed_sequence_streams() -> None:
    seeds = derive_seeds(3, 7)
    assert seeds.data_order == _numpy_stream([3, 7], 0)
    assert seeds.torch_global == _numpy_stream([3, 7], 5)
    assert derive_seeds(3, 7) == seeds
    other = derive_seeds(4, 7).as_dict()
    assert all(other[name] != value for name, value in seeds.as_dict().items())  # every stream differs
    assert len(set(seeds.as_dict().values())) == 6  # and the streams of one run differ from each other
    assert mix(5, 1) != mix(5, 2) and mix(5, 1) == mix(5, 1)
    with pytest.raises(ValueError):
        derive_seeds(-1)


def _transfer(seed: int = 0, **changes) -> TransferRun:
    study = TINY | {"seeds": [seed]}
    dense = next(item.run for item in _expand(study) if item.run.kind == "transfer" and item.level == 0)
    return dense.model_copy(update=changes) if changes else dense


def _expand(study: dict):
    return expand(StudyConfig.model_validate(study))


def test_an_option_at_its_default_is_the_same_run() -> None:
    run = _transfer()
    task = run.task
    with_defaults = task.model_copy(
        update={
            "data": task.data.model_copy(update={"options": {**task.data.options, "seed": 0, "max_val": 64}}),
            "objective": task.objective.model_copy(
                update={"options": {**task.objective.options, "padding": 4, "label_smoothing": 0.0}}
            ),
        }
    )
    assert config_hash(run.model_copy(update={"task": with_defaults})) == config_hash(run)
    other_value = task.model_copy(
        update={"objective": task.objective.model_copy(update={"options": {"flip": False, "padding": 2}})}
    )
    assert config_hash(run.model_copy(update={"task": other_value})) != config_hash(run)
    cached_elsewhere = task.model_copy(
        update={"data": task.data.model_copy(update={"options": {**task.data.options, "cache_dir": "/x"}})}
    )
    assert config_hash(run.model_copy(update={"task": cached_elsewhere})) == config_hash(run)


def test_perturb_fraction_belongs_to_perturbed_transfers_only() -> None:
    study = TINY | {"perturbation": {"finders": ["imp-task"], "levels": [3], "fraction": 0.1}}
    runs = [
        item.run for item in _expand(study) if item.run.kind == "transfer" and item.run.finder is not None
    ]
    by_variant = {run.variant: run for run in runs}
    for variant, run in by_variant.items():
        changed = run.model_copy(update={"perturb_fraction": 0.3})
        assert (config_hash(changed) == config_hash(run)) == (variant != "perturbed"), variant


def test_a_transfer_names_its_finder_and_keeps_the_hash_it_had_as_ticket() -> None:
    run = next(i.run for i in _expand(TINY) if i.run.kind == "transfer" and i.run.finder is not None)
    # the hash this run had before the field was renamed (printed by cvlth at ff49207): the runs of
    # every store keep their names
    assert (run.finder.kind, run.level, run.seed) == ("imp", 3, 0)
    assert run.hash() == "a58f0f56442ef58b"
    stored = run.model_dump(mode="json")  # a run.json written before the rename says `ticket`
    stored["ticket"] = stored.pop("finder")
    assert TransferRun.model_validate(stored) == run


def test_an_imported_checkpoint_is_identified_by_its_content(tmp_path) -> None:
    first = tmp_path / "a" / "theta.pth"
    first.parent.mkdir()
    torch.save({"conv1.weight": torch.ones(2)}, first)
    moved = tmp_path / "b.pth"
    moved.write_bytes(first.read_bytes())
    assert config_hash(ImportRun(path=str(first))) == config_hash(ImportRun(path=str(moved)))
    torch.save({"conv1.weight": torch.zeros(2)}, moved)
    assert config_hash(ImportRun(path=str(first))) != config_hash(ImportRun(path=str(moved)))
    missing = ImportRun(path=str(tmp_path / "absent.pth"))  # planned elsewhere: the path identifies it
    assert config_hash(missing) != config_hash(ImportRun(path=str(tmp_path / "absent2.pth")))


def test_variant_masks() -> None:
    generator = torch.Generator().manual_seed(0)
    mask = Mask({"layer1.0.conv1.weight": torch.rand(8, 8, 3, 3, generator=generator) < 0.3})
    exact = variants.vary_mask(mask, "complement", seed=1)
    assert exact.sparsity == pytest.approx(1 - mask.sparsity)
    assert torch.equal(exact["layer1.0.conv1.weight"], ~mask["layer1.0.conv1.weight"])
    matched = variants.vary_mask(mask, "complement_matched", seed=1)
    kept = matched["layer1.0.conv1.weight"]
    assert int(kept.sum()) == int(mask["layer1.0.conv1.weight"].sum())
    assert not (kept & mask["layer1.0.conv1.weight"]).any()


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_seeds_are_independent_runs_and_repeat_exactly(tmp_path, monkeypatch) -> None:
    """Two seeds of one dense transfer see different batches, augmentation and heads; a seed
    computed again (another store, another process history) sees the same."""
    seen: list[dict] = []
    real_train = run_training.train

    def recording_train(model, objective, train_data, **kwargs):
        first = next(iter(train_data.epoch_batches(0)))
        seen.append(
            {
                "labels": first[1].clone(),
                "augmentation": kwargs["augmentation_seed"],
                "fc": model.fc.weight.detach().clone(),
                "global": torch.get_rng_state().clone(),
            }
        )
        return real_train(model, objective, train_data, **kwargs)

    monkeypatch.setattr(run_training, "train", recording_train)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY | {"finders": [{"name": "omp", "method": "omp"}]}))
    planned = expand(load_study(path))
    dense = {item.seed: item.run for item in planned if item.run.kind == "transfer" and item.level == 0}
    ctx = execute.Context(store=Store(tmp_path / "one"), quiet=True, log=lambda _: None)
    for seed in (0, 1):
        execute.ensure(dense[seed], ctx)
    torch.manual_seed(1234)  # another process history must not matter
    execute.ensure(dense[0], execute.Context(store=Store(tmp_path / "two"), quiet=True, log=lambda _: None))
    _, seed0, seed1, _, again = seen  # each store pre-trains θ_p first
    assert not torch.equal(seed0["labels"], seed1["labels"])
    assert seed0["augmentation"] != seed1["augmentation"]
    assert not torch.equal(seed0["fc"], seed1["fc"])
    assert not torch.equal(seed0["global"], seed1["global"])
    for key in ("labels", "fc", "global"):
        assert torch.equal(seed0[key], again[key]), key
    result = Store(tmp_path / "one").result(dense[1])
    assert result["seeds"] == context.run_seeds(dense[1]).as_dict()
    assert result["seeds"] == derive_seeds(1, 0).as_dict()


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_early_rewind_is_theta_0_trained_for_the_captured_steps(tmp_path) -> None:
    """θ_5%: round 0 trains from θ_0 (not θ_p); its weights after the captured steps, replayed
    here with a plain SGD loop, are the rewind point of every later round."""
    study = TINY | {
        "finders": [{"name": "imp-early", "method": "imp", "stage": "downstream", "rewind": "early"}],
        "rounds": 2,
        "transfer_levels": [1],
        "seeds": [0],
    }
    path = tmp_path / "early.yaml"
    path.write_text(yaml.safe_dump(study))
    planned = expand(load_study(path))
    imp = next(item.run for item in planned if isinstance(item.run, ImpRun))
    pretrain = next(item.run for item in planned if isinstance(item.run, PretrainRun))
    store = Store(tmp_path / "store")
    execute.ensure(imp, execute.Context(store=store, quiet=True, log=lambda _: None))
    rewind = imp_module.load_rewind(Path(store.run_dir(imp)) / run_files.REWIND)["model"]

    ctx = execute.Context(store=store, quiet=True, log=lambda _: None)
    theta = run_pretrain.load_pretrained(pretrain, ctx)
    data = ctx.dataset(imp.recipe.data)
    seeds = context.run_seeds(imp)
    theta_0 = run_training.task_model(imp, theta, data, seeds)
    # θ_0 is a fresh network, not θ_p: its weights are far from θ_p's.
    assert not torch.allclose(theta_0.layer1[0].conv1.weight, theta.state_dict["layer1.0.conv1.weight"])

    steps = max(1, round(0.05 * (len(data.train) // 64)))
    from cvlth.objectives.registry import build_objective

    objective = build_objective(imp.recipe.objective, feature_dim=theta_0.fc.in_features, data=data, seed=0)
    optimizer = torch.optim.SGD(theta_0.parameters(), lr=DIGITS_TASK["optim"]["lr"], momentum=0.9)
    theta_0.train()
    batches = run_training.batches(data, "train", 64, seed=seeds.data_order).epoch_batches(0)
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective.train_step(
            theta_0, next(batches), step_generator(seeds.augmentation, step, 0, "cpu")
        )
        loss.backward()
        optimizer.step()
    for key, value in theta_0.state_dict().items():
        assert torch.allclose(rewind[key], value, atol=1e-6), key
    distance = (rewind["layer1.0.conv1.weight"] - theta.state_dict["layer1.0.conv1.weight"]).norm()
    assert distance > 0.5 * theta.state_dict["layer1.0.conv1.weight"].norm()
