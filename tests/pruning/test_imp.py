"""cvlth.pruning.imp: the README's own snippet, and the loop's semantics on a tiny model."""

import re
from pathlib import Path

import pytest
import torch

import cvlth.pruning.imp as imp_module
from cvlth.config import ConstantSchedule, SGDConfig, TrainingConfig
from cvlth.masks import Mask
from cvlth.objectives.supervised import SupervisedObjective
from cvlth.pruning.imp import imp, load_rewind, mask_path
from cvlth.pruning.strategies import global_magnitude
from training_fixtures import TinyNet, make_sources

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_readme_snippet_runs_imp_on_a_torchvision_resnet(tmp_path, monkeypatch, capsys) -> None:
    section = README.read_text().split("### IMP on your own model", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    assert "torchvision.models.resnet18" in code and len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed == "{1: 0.2, 2: 0.36, 3: 0.488}"
    assert Mask.load(tmp_path / "runs/my-imp/masks/level-03.safetensors").sparsity == pytest.approx(
        0.488, abs=1e-3
    )


def test_every_round_rewinds_to_the_start_and_prunes_the_trained_weights(tmp_path, monkeypatch) -> None:
    """Independently: replay the rounds with global_magnitude on the weights each round ends with."""
    torch.manual_seed(0)
    model = TinyNet()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_data, _, _ = make_sources(batch_size=16)
    starts, ends = [], []
    real_train = imp_module.train

    def recording_train(net, objective, data, **kwargs):
        starts.append({k: v.clone() for k, v in net.state_dict().items()})
        result = real_train(net, objective, data, **kwargs)
        ends.append({k: v.detach().clone() for k, v in net.named_parameters()})
        return result

    monkeypatch.setattr(imp_module, "train", recording_train)
    result = imp(
        model, SupervisedObjective, train_data, rounds=3, folder=tmp_path,
        training=TrainingConfig(epochs=1, batch_size=16), optim=SGDConfig(lr=0.05), schedule=ConstantSchedule(),
    )  # fmt: skip
    assert len(starts) == 3  # round 0 trains the dense model, then one round per level
    for state in starts:
        assert all(torch.equal(state[k], v) for k, v in start.items())  # every round starts from the start
    previous = None
    for level, end in enumerate(ends, start=1):
        weights = {k: v for k, v in end.items() if k in result.masks[level]}
        expected = global_magnitude(weights, 0.2, previous)
        assert result.masks[level] == expected == Mask.load(mask_path(tmp_path, level))
        previous = expected
    assert all(
        torch.equal(load_rewind(tmp_path / "rewind.safetensors")["model"][k], v) for k, v in start.items()
    )
    assert [r["trained_with_level"] for r in result.rounds] == [0, 1, 2]


# --- a folder made with other arguments is never resumed; bad arguments are refused up front -------


def _imp_call(folder, model=None, data=None, **overrides):
    torch.manual_seed(0)
    train_data = data if data is not None else make_sources(batch_size=16)[0]
    arguments = {
        "training": TrainingConfig(epochs=1, batch_size=16),
        "optim": SGDConfig(lr=0.05),
        "schedule": ConstantSchedule(),
        "rounds": 2,
        "folder": folder,
        "quiet": True,
        **overrides,
    }
    return imp(model if model is not None else TinyNet(), SupervisedObjective, train_data, **arguments)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"fraction": 0.5}, "fraction"),
        ({"strategy": "layerwise"}, "strategy"),
        ({"model": "wider"}, "prunable"),
        ({"rewind_step": 2}, "rewind.step"),
        ({"optim": SGDConfig(lr=0.5)}, "optim.lr"),
        ({"data": "other"}, "data.sha256"),
    ],
)
def test_a_folder_made_with_other_arguments_is_refused(tmp_path, change, named) -> None:
    from cvlth.pruning.imp_record import ImpFolderMismatch

    first = _imp_call(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    if change.get("model") == "wider":
        change = {"model": TinyNet(width=12)}
    if change.get("data") == "other":
        change = {"data": make_sources(seed=0, batch_size=16)[1]}  # another set of images
        change["data"].batch_size = 16
    with pytest.raises(ImpFolderMismatch, match=re.escape(named)):
        _imp_call(tmp_path, **change)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing touched
    assert _imp_call(tmp_path).masks.keys() == first.masks.keys()  # the same call still resumes


def test_more_rounds_continue_the_same_imp(tmp_path) -> None:
    two = _imp_call(tmp_path)
    three = _imp_call(tmp_path, rounds=3)
    assert all(three.masks[k] == two.masks[k] for k in (1, 2)) and 3 in three.masks


def test_a_folder_with_imp_work_and_no_record_is_refused(tmp_path) -> None:
    from cvlth.pruning.imp_record import ImpFolderMismatch

    _imp_call(tmp_path)
    (tmp_path / "imp.json").unlink()
    with pytest.raises(ImpFolderMismatch, match="no imp.json"):
        _imp_call(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rounds": 0}, "rounds must be an integer >= 1"),
        ({"rounds": -3}, "rounds must be an integer >= 1"),
        ({"fraction": 0.0}, "fraction must be in"),
        ({"fraction": 1.0}, "fraction must be in"),
        ({"fraction": float("nan")}, "fraction must be in"),
        ({"rewind_step": 5}, r"rewind_step must be a step of round 0, 1..4"),
        ({"rewind_step": 0}, r"rewind_step must be a step of round 0, 1..4"),
    ],
)
def test_bad_arguments_are_refused_before_round_0_trains(tmp_path, overrides, message) -> None:
    from cvlth.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _imp_call(tmp_path / "imp", **overrides)
    assert not (tmp_path / "imp").exists()


def test_a_model_with_nothing_prunable_is_refused(tmp_path) -> None:
    from cvlth.errors import ConfigError

    with pytest.raises(ConfigError, match="no prunable weights"):
        _imp_call(tmp_path / "imp", model=torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    assert not (tmp_path / "imp").exists()


def test_train_last_level_trains_every_level_once(tmp_path) -> None:
    """Upstream IMP (prune first) with train_last_level: K levels, K trainings, one per level, the
    last one trained with the level-K mask and nothing pruned after it."""
    result = _imp_call(tmp_path, rounds=3, prune_first=True, train_last_level=True)
    assert [r["trained_with_level"] for r in result.rounds] == [1, 2, 3]
    assert [r["sparsity"] for r in result.rounds] == pytest.approx([0.2, 0.36, 0.488], abs=2e-3)
    assert sorted(result.masks) == [1, 2, 3] and not mask_path(tmp_path, 4).exists()
    again = _imp_call(tmp_path, rounds=3, prune_first=True, train_last_level=True)  # all finished: reused
    assert again.rounds == result.rounds
    without = _imp_call(tmp_path / "plain", rounds=3, prune_first=True)
    assert [r["trained_with_level"] for r in without.rounds] == [1, 2]
    assert all(without.masks[k] == result.masks[k] for k in (1, 2, 3))  # the extra round prunes nothing


# --- the objective's heads from round to round (the paper's code: HEAD_POLICIES "reference") ------


class _Counter(torch.nn.Module):
    """A queue-like buffer: counts the optimizer steps it has seen."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros(()))


class _HeadedObjective(SupervisedObjective):
    """Supervised, plus a trained projection head and a carried queue-like buffer."""

    carried_across_rounds = frozenset({"queue"})
    made: list["_HeadedObjective"] = []

    def __init__(self) -> None:
        super().__init__()
        self.projection = torch.nn.Linear(2, 2)
        self.queue = _Counter()
        self.started: dict[str, dict[str, torch.Tensor]] = {}
        _HeadedObjective.made.append(self)

    def modules(self):
        return {"projection": self.projection, "queue": self.queue}

    def bind(self, model, mask=None):  # the loop binds after the heads were loaded: the round's start
        self.started = {
            n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in self.modules().items()
        }

    def train_step(self, model, batch, generator):
        loss, metrics = super().train_step(model, batch, generator)
        return loss + self.projection(torch.ones(1, 2)).pow(2).sum(), metrics

    def after_step(self, model):
        self.queue.steps += 1


def _ended(objective: _HeadedObjective) -> dict[str, dict[str, torch.Tensor]]:
    return {
        n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in objective.modules().items()
    }


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("policy", ["reference", "rewind", "carry"])
@pytest.mark.parametrize("theta_p_has_projection", [True, False])
def test_head_policies_start_each_round_from_the_right_heads(
    tmp_path, policy, theta_p_has_projection
) -> None:
    _HeadedObjective.made.clear()
    torch.manual_seed(0)
    rewind = {"queue": {"steps": torch.tensor(100.0)}}
    if theta_p_has_projection:
        rewind["projection"] = {"weight": torch.full((2, 2), 0.5), "bias": torch.zeros(2)}
    train_data = make_sources(batch_size=16)[0]
    imp(
        TinyNet(), _HeadedObjective, train_data, rounds=3, folder=tmp_path, heads=rewind, head_policy=policy,
        training=TrainingConfig(epochs=1, batch_size=16), optim=SGDConfig(lr=0.05), schedule=ConstantSchedule(),
    )  # fmt: skip
    rounds = [o for o in _HeadedObjective.made if o.started]  # the probes imp() builds never train
    assert len(rounds) == 3
    steps = len(train_data)
    for k, objective in enumerate(rounds):
        queue = objective.started["queue"]["steps"]
        projection = objective.started["projection"]
        previous = _ended(rounds[k - 1]) if k else None
        carried_queue = policy != "rewind"
        assert float(queue) == (100 + k * steps if carried_queue else 100), (k, float(queue))
        if k == 0 or policy == "rewind" or (policy == "reference" and theta_p_has_projection):
            if theta_p_has_projection:
                assert _same(projection, rewind["projection"])
            elif k:  # a fresh head: drawn again (make_objective's draw), not the trained one
                assert not _same(projection, previous["projection"])
        else:  # the head keeps its training: it starts where the previous round ended
            assert _same(projection, previous["projection"])
            assert not _same(projection, rounds[0].started["projection"])


class _RecordingSource:
    """A batch source that records which epochs were read, and the loop's augmentation seed."""

    def __init__(self, source) -> None:
        self.source, self.epochs = source, []

    def __len__(self) -> int:
        return len(self.source)

    def epoch_batches(self, epoch, start=0):
        self.epochs.append(epoch)
        return self.source.epoch_batches(epoch, start)


@pytest.mark.parametrize("reshuffle", [True, False])
def test_each_round_continues_the_loader_as_the_reference_code(tmp_path, monkeypatch, reshuffle) -> None:
    source = _RecordingSource(make_sources(batch_size=16)[0])
    seeds = []
    real_train = imp_module.train

    def recording_train(net, objective, data, **kwargs):
        seeds.append(kwargs["augmentation_seed"])
        before = len(source.epochs)
        result = real_train(net, objective, data, **kwargs)
        rounds_read.append(source.epochs[before:])
        return result

    rounds_read: list[list[int]] = []
    monkeypatch.setattr(imp_module, "train", recording_train)
    imp(
        TinyNet(), SupervisedObjective, source, rounds=3, folder=tmp_path, reshuffle=reshuffle,
        training=TrainingConfig(epochs=2, batch_size=16, seed=7), optim=SGDConfig(lr=0.05), schedule=ConstantSchedule(),
    )  # fmt: skip
    if reshuffle:  # round k reads epochs 2k and 2k+1, with its own augmentation seed
        assert rounds_read == [[0, 1], [2, 3], [4, 5]]
        assert seeds[0] == 7 and len(set(seeds)) == 3
    else:
        assert rounds_read == [[0, 1]] * 3 and seeds == [7, 7, 7]
