"""Objectives built from configs: options checked, heads independent of the global RNG."""

import pytest
import torch

from cvlth.config import ObjectiveRef
from cvlth.data.classification import DatasetSplits, ImageSet
from cvlth.errors import ConfigError
from cvlth.objectives.registry import build_objective


def _data() -> DatasetSplits:
    images = ImageSet(
        torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ["a", "b"]
    )
    return DatasetSplits("tiny", images, images, images, mean=(0.5,), std=(0.25,))


def _head_state(name: str, global_seed: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(global_seed)  # e.g. another process, or other work done before in this one
    objective = build_objective(ObjectiveRef(name=name), feature_dim=16, data=_data(), seed=seed)
    return {
        f"{m}.{k}": v for m, module in objective.modules().items() for k, v in module.state_dict().items()
    }


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_heads_depend_on_the_seed_only(name):
    first, second = _head_state(name, 1, seed=0), _head_state(name, 2, seed=0)
    assert first.keys() == second.keys() and first
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _head_state(name, 1, seed=5)
    assert not all(torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_unknown_objective_and_bad_option_name_the_problem():
    with pytest.raises(ConfigError, match="objective.name: must be one of"):
        build_objective(ObjectiveRef(name="nope"), feature_dim=16, data=_data())
    with pytest.raises(ConfigError, match="bad options"):
        build_objective(
            ObjectiveRef(name="simclr", options={"temprature": 0.1}), feature_dim=16, data=_data()
        )
