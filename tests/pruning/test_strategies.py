import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from cvlth.masks import Mask
from cvlth.pruning.strategies import (
    STRATEGIES,
    global_magnitude,
    layerwise_magnitude,
    level_sparsity,
    one_shot_magnitude,
    random_global,
    random_like,
)

SHAPES = {
    "layer1.0.conv1.weight": (16, 8, 3, 3),
    "layer1.0.conv2.weight": (16, 16, 3, 3),
    "layer1.0.downsample.0.weight": (16, 8, 1, 1),
    "layer2.0.conv1.weight": (32, 16, 3, 3),
}


def _random_weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in SHAPES.items()}


def _torch_modules() -> dict[str, nn.Conv2d]:
    return {name: nn.Conv2d(s[1], s[0], s[2], bias=False) for name, s in SHAPES.items()}


@pytest.mark.parametrize("rounds", [1, 2, 3, 4, 5])
def test_global_magnitude_equals_torch_global_unstructured(rounds):
    modules = _torch_modules()
    mask = None
    for round_index in range(rounds):
        # New weights each round, as after a round of training; both pruners see the same ones.
        weights = _random_weights(seed=round_index)
        with torch.no_grad():
            for name, module in modules.items():
                target = module.weight_orig if hasattr(module, "weight_orig") else module.weight
                target.copy_(weights[name])
        torch_prune.global_unstructured(
            [(m, "weight") for m in modules.values()],
            pruning_method=torch_prune.L1Unstructured,
            amount=0.2,
            # ``module.weight`` is only refreshed on forward; score the current weights explicitly.
            importance_scores={(m, "weight"): weights[n] for n, m in modules.items()},
        )
        mask = global_magnitude(weights, 0.2, mask)
        reference = {name: module.weight_mask.bool() for name, module in modules.items()}
        assert mask == Mask(reference), f"round {round_index + 1} differs from torch.nn.utils.prune"


def test_imp_schedule_follows_one_minus_point_eight_to_the_k():
    total = sum(torch.Size(s).numel() for s in SHAPES.values())
    mask = None
    for k in range(1, 12):
        mask = global_magnitude(_random_weights(k), 0.2, mask)
        assert abs(mask.pruned - level_sparsity(k) * total) <= k  # within one weight per round
    assert level_sparsity(5) == pytest.approx(0.67232)


def test_one_shot_matches_torch_and_layerwise_matches_per_layer_l1():
    weights = _random_weights(7)
    modules = _torch_modules()
    with torch.no_grad():
        for name, module in modules.items():
            module.weight.copy_(weights[name])
    torch_prune.global_unstructured(
        [(m, "weight") for m in modules.values()], pruning_method=torch_prune.L1Unstructured, amount=0.6724
    )
    assert one_shot_magnitude(weights, 0.6724) == Mask({n: m.weight_mask.bool() for n, m in modules.items()})

    layerwise = layerwise_magnitude(weights, 0.3)
    for name, weight in weights.items():
        module = nn.Conv2d(1, 1, 1)
        module.weight = nn.Parameter(weight.clone())
        torch_prune.l1_unstructured(module, "weight", amount=0.3)
        assert torch.equal(layerwise[name], module.weight_mask.bool())


def test_ties_are_broken_deterministically_by_index():
    weights = {"a": torch.ones(10), "b": torch.ones(6)}
    mask = global_magnitude(weights, 0.25)  # prune 4 of 16 equal weights: the first 4 in name order
    assert mask["a"].tolist() == [False] * 4 + [True] * 6 and bool(mask["b"].all())
    again = global_magnitude(weights, 0.25, mask)  # 3 of the remaining 12: next indices
    assert again["a"].tolist() == [False] * 7 + [True] * 3


def test_pruned_weights_stay_pruned_even_when_large():
    weights = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    first = global_magnitude(weights, 0.4)
    assert first["a"].tolist() == [True, True, True, False, False]
    revived_attempt = {"a": torch.tensor([5.0, 4.0, 3.0, 100.0, 100.0])}
    second = global_magnitude(revived_attempt, 0.34, first)  # round(0.34 * 3) = 1 more
    assert second["a"].tolist() == [True, True, False, False, False]


def test_random_strategies_counts_and_determinism():
    weights = _random_weights(0)
    total = sum(w.numel() for w in weights.values())
    first = random_global(weights, 0.5, seed=1)
    assert first.pruned == round(0.5 * total)
    assert first == random_global(weights, 0.5, seed=1) and first != random_global(weights, 0.5, seed=2)
    second = random_global(weights, 0.5, first, seed=3)
    assert bool(all((second[n] <= first[n]).all() for n in first))  # never revives
    assert second.pruned == first.pruned + round(0.5 * first.kept)

    reference = global_magnitude(weights, 0.8)
    like = random_like(reference, seed=0)
    assert like.layer_counts() == reference.layer_counts()
    assert like != reference


def test_registry_names():
    assert {"magnitude", "layerwise", "random"} <= set(STRATEGIES)
