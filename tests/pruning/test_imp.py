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
