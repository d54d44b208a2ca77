"""A finder's ``seeds``: independent finder runs, each transferred with every seed of the study, and
every number that aggregates over them (matching, Fig. 2, universal, perturbation) over all of them."""

import copy
import json
import statistics
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from cvlth.errors import ConfigError
from cvlth.masks import Mask
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.results.matching import PRETRAINING_TASK, matching_markdown
from cvlth.run_files import mask_path
from cvlth.runs import context, execute
from cvlth.runs import finders as run_finders
from cvlth.runs.kinds import BaselineRun, ImportRun
from cvlth.seeds import derive_seeds
from cvlth.store import Store
from cvlth.study.config import StudyConfig, load_study
from cvlth.study.plan import MAX_PLANNED_RUNS, expand, summarize_plan
from cvlth.study.runner import matching_table, perturbation_curves, run_study
from study_fixtures import NEEDS_FASHION_MNIST, TINY

#: TINY's finder runs and transfers as computed before finder seeds existed (cvlth main, 2026-12-02).
HASHES_BEFORE_FINDER_SEEDS = {
    ("imp", "imp-up", 0, None): "b98e145511e5c1d3",
    ("baseline", "random", 0, None): "a5f37a3da9efa734",
    ("baseline", "omp", 0, None): "5170d7ddfa4eba80",
    ("transfer", "imp-up", 3, 1): "c73ce308860f6f0c",
    ("transfer", "random", 3, 0): "38970d26eda601d5",
    ("transfer", "omp", 3, 1): "e2f7613b6df79740",
}


def _study(**finder_seeds: list[int] | None) -> dict:
    """TINY with ``seeds`` given to the named finders (``imp_up`` for ``imp-up``)."""
    study = copy.deepcopy(TINY)
    for finder in study["finders"]:
        seeds = finder_seeds.get(finder["name"].replace("-", "_"))
        if seeds is not None:
            finder["seeds"] = seeds
    return study


#: What IMP runs were before the deliberate changes since finder seeds (each gave IMP runs and their
#: transfers new hashes): upstream IMP trains its last level; every round continues the loader.
_IMP_BEFORE = {"train_last_level": False, "reshuffle_rounds": False}


def _as_before_train_last_level(run):  # noqa: ANN001, ANN202 - a planned run config
    """``run`` as planned before those changes (:data:`_IMP_BEFORE`)."""
    if run.kind == "imp":
        return run.model_copy(update=_IMP_BEFORE)
    if run.kind == "transfer" and run.finder is not None and run.finder.kind == "imp":
        return run.model_copy(update={"finder": run.finder.model_copy(update=_IMP_BEFORE)})
    return run


def _hashes(study: dict, before_last_level: bool = True) -> dict[tuple, str]:
    return {
        (item.run.kind, item.finder, item.level, item.seed): (
            _as_before_train_last_level(item.run) if before_last_level else item.run
        ).hash()
        for item in expand(StudyConfig.model_validate(study))
        if item.finder in ("imp-up", "random", "omp") and item.finder_seed == 0
    }


def test_upstream_imp_now_trains_its_last_level_under_a_new_hash() -> None:
    now, before = _hashes(TINY, before_last_level=False), _hashes(TINY)
    assert now[("imp", "imp-up", 0, None)] != before[("imp", "imp-up", 0, None)]
    assert now[("baseline", "random", 0, None)] == before[("baseline", "random", 0, None)]


def test_without_seeds_or_with_seed_0_every_run_is_the_run_of_before() -> None:
    absent = _hashes(TINY)
    assert {key: absent[key] for key in HASHES_BEFORE_FINDER_SEEDS} == HASHES_BEFORE_FINDER_SEEDS
    explicit = _study(imp_up=[0], imp_task=[0], imp_init=[0], omp=[0], random=[0])
    assert [i.run.hash() for i in expand(StudyConfig.model_validate(explicit))] == [
        i.run.hash() for i in expand(StudyConfig.model_validate(TINY))
    ]


def test_each_finder_seed_is_a_run_transferred_with_every_study_seed(tmp_path) -> None:
    study = StudyConfig.model_validate(_study(imp_up=[0, 1], imp_task=[2, 5], random=[0, 7]))
    planned = expand(study)
    finders = {(i.finder, i.task, i.finder_seed): i.run for i in planned if i.run.kind in ("imp", "baseline")}
    assert sorted(key for key in finders if key[0] != "omp" and key[0] != "imp-init") == [
        ("imp-task", "digits", 2),
        ("imp-task", "digits", 5),
        ("imp-up", None, 0),
        ("imp-up", None, 1),
        ("random", None, 0),
        ("random", None, 7),
    ]
    assert all(run.seed == key[2] for key, run in finders.items())  # the run's seed is the finder seed
    assert finders[("imp-up", None, 0)].hash() != finders[("imp-up", None, 1)].hash()
    assert finders[("random", None, 0)].hash() != finders[("random", None, 7)].hash()
    # transfers: finder seed x study seed (0, 1), each of the ticket found with that finder seed
    transfers = Counter(
        (i.finder, i.finder_seed, i.seed)
        for i in planned
        if i.run.kind == "transfer" and i.finder is not None
    )
    for finder, seeds in {"imp-up": [0, 1], "imp-task": [2, 5], "random": [0, 7], "omp": [0]}.items():
        assert {key: n for key, n in transfers.items() if key[0] == finder} == {
            (finder, f, s): 1 for f in seeds for s in (0, 1)
        }
    assert all(
        i.run.finder.seed == i.finder_seed
        for i in planned
        if i.run.kind == "transfer" and i.finder is not None
    )
    # every (finder seed, seed) pair fine-tunes with its own streams; finder seed 0 with those of before
    streams = {
        (i.finder_seed, i.seed): context.run_seeds(i.run)
        for i in planned
        if i.run.kind == "transfer" and i.finder == "random"
    }
    train_seed = TINY["tasks"]["digits"]["train"].get("seed", 0)
    assert streams == {
        (0, 0): derive_seeds(0, train_seed),
        (0, 1): derive_seeds(1, train_seed),
        (7, 0): derive_seeds(0, train_seed, 7),
        (7, 1): derive_seeds(1, train_seed, 7),
    }
    assert len({s.data_order for s in streams.values()}) == len({s.mask for s in streams.values()}) == 4
    # 1 θ_p + 2 dense + imp-up, imp-task, random: 2 x (1 + 2) each; imp-init and omp: 1 + 2 each
    assert len(planned) == 1 + 2 + 3 * 2 * 3 + 2 * 3
    summary = summarize_plan(planned, Store(tmp_path / "store"))  # what `--plan` prints
    assert summary.total == Counter({"pretrain": 1, "baseline": 3, "imp": 5, "transfer": 18})


def test_finder_seeds_count_towards_the_plan_size_limit() -> None:
    # per pre-training: 1 θ_p + 2 dense; random with n finder seeds: n x (1 ticket + 1 level x 2 seeds)
    over = (MAX_PLANNED_RUNS - 3) // 3 + 1
    study = TINY | {"finders": [{"name": "random", "method": "random", "seeds": list(range(over))}]}
    study["transfer_levels"] = [3]
    with pytest.raises(ConfigError, match=f"up to {3 + 3 * over:,} runs"):
        expand(StudyConfig.model_validate(study))


def test_omp_with_two_seeds_is_refused_when_the_study_is_loaded(tmp_path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(_study(omp=[0, 1])))
    with pytest.raises(ConfigError) as refused:
        load_study(path)
    assert "finders.3: finder 'omp': omp draws nothing at random" in refused.value.message
    assert "give it one seed (or none)" in refused.value.message


# --- random masks: a seed is a draw ---------------------------------------------------------------


def _random_masks(store: Store, theta: ImportRun, seed: int) -> tuple[dict[int, Mask], dict]:
    run = BaselineRun(pretrained=theta, method="random", rounds=3, fraction=0.2, seed=seed)
    result = execute.ensure(run, execute.Context(store=store, quiet=True, log=lambda _: None))
    folder = Path(store.run_dir(run))
    return {level: Mask.load(mask_path(folder, level)) for level in (1, 2, 3)}, result


def test_two_seeds_of_a_random_finder_draw_different_masks_at_the_same_sparsity(tmp_path) -> None:
    spec = BackboneSpec(arch="resnet18", width=4, stem="cifar", in_channels=1)
    checkpoint = tmp_path / "theta.pt"
    save_checkpoint(checkpoint, build_backbone(spec, 10).state_dict(), spec)
    theta = ImportRun(path=str(checkpoint))
    first, second = Store(tmp_path / "one"), Store(tmp_path / "two")
    seed_0, result_0 = _random_masks(first, theta, 0)
    seed_1, result_1 = _random_masks(first, theta, 1)
    again, _ = _random_masks(second, theta, 1)  # the same seed in another store: the same masks
    for level in (1, 2, 3):
        assert seed_0[level].pruned == seed_1[level].pruned  # the level's sparsity, to the weight
        assert abs(seed_0[level].pruned - (1 - 0.8**level) * seed_0[level].total) <= level
        kept_0 = torch.cat([m.flatten() for m in seed_0[level].values()])
        kept_1 = torch.cat([m.flatten() for m in seed_1[level].values()])
        assert not torch.equal(kept_0, kept_1)
        # two independent draws keeping a share p overlap on about p^2 of the weights, not p
        density = float(kept_0.float().mean())
        assert float((kept_0 & kept_1).float().mean()) < density * (density + 0.1)
        assert all(torch.equal(again[level][name], seed_1[level][name]) for name in seed_1[level])
    # a baseline's randomness derives from its seed alone, as before finder seeds
    assert result_0["seeds"] == derive_seeds(0).as_dict() and result_1["seeds"] == derive_seeds(1).as_dict()


# --- aggregation over finder seeds x study seeds, on made-up results ------------------------------

AGGREGATED = TINY | {
    "finders": [
        {"name": "imp-up", "method": "imp", "stage": "upstream", "seeds": [0, 1]},
        {"name": "random", "method": "random", "seeds": [0, 7]},
    ],
    "perturbation": {"finders": ["imp-up"], "variants": ["ticket", "complement"]},
}


def _value(finder_seed: int, seed: int, variant: str = "ticket") -> float:
    return 0.60 + 0.03 * finder_seed + 0.01 * seed - (0.2 if variant == "complement" else 0.0)


def _made_up(planned) -> list[dict]:
    """Dense 0.80 / 0.84 by seed; a transfer's value by finder seed and seed (:func:`_value`);
    upstream IMP: level 1 at 0.70 + 0.02 x finder seed, level 2 at 0.50, θ_p at 0.65."""
    results = []
    for item in planned:
        if item.run.kind == "imp":
            rounds = [
                {
                    "trained_with_level": level,
                    "selection": {"metric": "val.accuracy"},
                    "test_at_best_val": {"accuracy": value},
                }
                for level, value in ((1, 0.70 + 0.02 * item.finder_seed), (2, 0.50))
            ]
            dense = {"test": {"accuracy": 0.65}, "metric": "accuracy"}
            results.append({"rounds": rounds, "dense_upstream": dense})
        elif item.run.kind == "transfer":
            value = 0.80 + 0.04 * item.seed if item.finder is None else _value(item.finder_seed, item.seed)
            if item.variant == "complement":
                value = _value(item.finder_seed, item.seed, "complement")
            results.append({"sparsity": 0.488, "test_at_best_val": {"accuracy": value}})
        else:
            results.append({})
    return results


def test_means_are_over_every_finder_seed_and_every_seed() -> None:
    study = StudyConfig.model_validate(AGGREGATED)
    planned = expand(study)
    results = _made_up(planned)
    table = {(r.source, r.task): r for r in matching_table(study, planned, results)}
    # random, finder seeds 0 and 7 x seeds 0 and 1: 0.60, 0.61, 0.81, 0.82
    (row,) = table[("supervised/random", "digits")].rows
    assert row.stats.n == 4
    assert row.stats.mean == pytest.approx(0.71)
    assert row.stats.std == pytest.approx((0.0442 / 3) ** 0.5)  # squares 0.11² + 0.1² + 0.1² + 0.11²
    assert row.matching is False  # 0.71 < 0.82 - 0.0283
    (up,) = table[("supervised/imp-up", "digits")].rows
    assert (up.stats.n, up.stats.mean) == (4, pytest.approx(statistics.mean([0.60, 0.61, 0.63, 0.64])))
    assert up.stats.std == pytest.approx(statistics.stdev([0.60, 0.61, 0.63, 0.64]))
    # Fig. 2: two IMP runs, level 1 at 0.70 and 0.72; θ_p evaluated by each, 0.65 both times
    fig2 = table[("supervised/imp-up", PRETRAINING_TASK)]
    assert (fig2.dense.mean, fig2.dense.std, fig2.dense.n) == (pytest.approx(0.65), 0.0, 2)
    first = fig2.rows[0]
    assert (first.sparsity, first.stats.n, first.stats.mean) == (0.2, 2, pytest.approx(0.71))
    assert first.stats.std == pytest.approx(statistics.stdev([0.70, 0.72]))
    # perturbation curves: every finder seed x seed behind each point
    curves = {c.variant: c.points for c in perturbation_curves(study, planned, results)}
    (complement,) = curves["complement"]
    assert complement.n == 4 and complement.mean == pytest.approx(0.62 - 0.2)
    text = matching_markdown(list(table.values()))
    # dense 0.82 ± 0.0283 over 2 seeds: 95% CI 0.82 ± 12.7062 * 0.02 = [0.5659, 1.0741]
    line = "| supervised/random | digits | accuracy | ? | 0.8200 ± 0.0283 [0.5659, 1.0741] | none | none |"
    assert line + " 1 of 1 | 2 / 4 |" in text  # one level, undecided; 2 dense runs, 4 ticket runs
    assert (
        f"| supervised/imp-up | {PRETRAINING_TASK} | accuracy | ? | 0.6500 ± 0.0000 [0.6500, 0.6500] |"
        in text
    )
    # several finder seeds: the ticket's runs are not the dense seeds -> Welch; Fig. 2 pairs each IMP run
    assert up.margin.method == "welch" and first.margin.method == "paired"


# --- real runs: two seeds of upstream IMP and of random, fine-tuned with two seeds each ------------


@NEEDS_FASHION_MNIST
@pytest.mark.slow
def test_finder_seeds_end_to_end(tmp_path, monkeypatch) -> None:
    """Two upstream IMP runs see different data; the study's tables are the hand-computed mean and
    sample std of the individual result.json values; tickets.json names each ticket's finder seed."""
    orders: dict[int, torch.Tensor] = {}
    real_imp = run_finders.imp

    def recording_imp(model, make_objective, batches, **kwargs):
        orders[len(orders)] = next(iter(batches.epoch_batches(0)))[1].clone()
        return real_imp(model, make_objective, batches, **kwargs)

    monkeypatch.setattr(run_finders, "imp", recording_imp)
    config = copy.deepcopy(TINY) | {
        "finders": [
            {"name": "imp-up", "method": "imp", "stage": "upstream", "seeds": [0, 1]},
            {"name": "random", "method": "random", "seeds": [0, 1]},
        ],
        "rounds": 2,
        "transfer_levels": [2],
    }
    study = StudyConfig.model_validate(config)
    store = Store(tmp_path / "store")
    outcome = run_study(study, store, quiet=True, log=lambda _: None)
    assert outcome.runs == 1 + 2 + 2 * (2 * (1 + 2))  # θ_p, dense x 2, 2 finders x 2 seeds x (run + 2)

    planned = expand(study)
    imps = {i.finder_seed: i.run for i in planned if i.run.kind == "imp"}
    assert imps[0].hash() != imps[1].hash()
    assert not torch.equal(orders[0], orders[1])  # another data order
    for seed, run in imps.items():  # from the finder seed, derived as before finder seeds
        assert store.result(run)["seeds"] == derive_seeds(seed, run.recipe.train.seed).as_dict()
    # level 1 prunes θ_p before any training: the same for both seeds; level 2 follows the training
    masks = {s: [Mask.load(mask_path(Path(store.run_dir(imps[s])), k)) for k in (1, 2)] for s in (0, 1)}
    assert all(torch.equal(masks[0][0][n], masks[1][0][n]) for n in masks[0][0])
    assert not all(torch.equal(masks[0][1][n], masks[1][1][n]) for n in masks[0][1])

    for item in planned:  # each transfer's recorded streams: its seed, task seed and finder seed
        if item.run.kind == "transfer" and item.finder is not None:
            entropy = (item.seed, 0, *((item.finder_seed,) if item.finder_seed else ()))
            assert store.result(item.run)["seeds"] == derive_seeds(*entropy).as_dict()
    folder = tmp_path / "store" / "studies" / "tiny"
    entries = {(e["source"], e["task"]): e for e in json.loads((folder / "matching.json").read_text())}
    for finder in ("imp-up", "random"):
        values = [
            store.result(i.run)["test_at_best_val"]["accuracy"]
            for i in planned
            if i.run.kind == "transfer" and i.finder == finder
        ]
        (row,) = entries[(f"supervised/{finder}", "digits")]["rows"]
        assert row["n"] == len(values) == 4
        assert row["mean"] == pytest.approx(statistics.mean(values), abs=1e-12)
        assert row["std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    # Fig. 2: rounds = 2 is two trainings (levels 1 and 2: the last level is trained too) per IMP run
    fig2 = entries[("supervised/imp-up", PRETRAINING_TASK)]
    trained = [store.result(run)["rounds"] for run in imps.values()]
    assert [[r["trained_with_level"] for r in rounds] for rounds in trained] == [[1, 2], [1, 2]]
    level_1 = [rounds[0]["test_at_best_val"]["accuracy"] for rounds in trained]
    assert [(r["sparsity"], r["n"]) for r in fig2["rows"]] == [(0.2, 2), (0.36, 2)]
    assert fig2["rows"][0]["mean"] == pytest.approx(statistics.mean(level_1), abs=1e-12)
    assert fig2["rows"][0]["std"] == pytest.approx(statistics.stdev(level_1), abs=1e-12)
    theta_p = [store.result(run)["dense_upstream"]["test"]["accuracy"] for run in imps.values()]
    assert fig2["dense"]["n"] == 2 and fig2["dense"]["mean"] == pytest.approx(statistics.mean(theta_p))
    tickets = json.loads((folder / "tickets.json").read_text())
    assert sorted((t["finder"], t["finder_seed"]) for t in tickets) == [
        ("imp-up", 0),
        ("imp-up", 1),
        ("random", 0),
        ("random", 1),
    ]
