import math
import random

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torchvision.models import resnet18

from cvlth.config import AdamWConfig, ConstantSchedule, TrainingConfig
from cvlth.data.augment_pipelines import ContrastiveView, contrastive_augment
from cvlth.models.backbones import feature_dim
from cvlth.objectives.features import features
from cvlth.objectives.simclr import SimCLRObjective, nt_xent, retrieval_accuracy
from cvlth.training.loop import train
from ssl_fixtures import NarrowResNet, digit_sources

# --- NT-Xent against explicit loops over the 2N anchors ------------------------------------


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _positive_probabilities(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> list[float]:
    rows = z1.tolist() + z2.tolist()
    n = len(z1)
    probabilities = []
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [math.exp(_cosine(rows[i], rows[k]) / temperature) for k in range(2 * n) if k != i]
        probabilities.append(math.exp(_cosine(rows[i], rows[partner]) / temperature) / sum(others))
    return probabilities


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0, 2.0])
def test_nt_xent_matches_loop(temperature: float) -> None:
    z1, z2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    p = _positive_probabilities(z1, z2, temperature)
    standard = -sum(math.log(x) for x in p) / len(p)
    log_mean = -math.log(sum(p) / len(p))
    assert float(nt_xent(z1, z2, temperature)) == pytest.approx(standard, rel=1e-10)
    got = float(nt_xent(z1, z2, temperature, variant="log_mean_reference"))
    assert got == pytest.approx(log_mean, rel=1e-10)
    assert log_mean <= standard  # Jensen


def test_nt_xent_is_scale_invariant_and_rejects_unknown_variant() -> None:
    z1, z2 = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(nt_xent(z1, z2), nt_xent(3 * z1, 0.5 * z2), atol=1e-6)
    with pytest.raises(ValueError, match="variant"):
        nt_xent(z1, z2, variant="log_of_mean")  # type: ignore[arg-type]


@pytest.mark.parametrize("variant", ["standard", "log_mean_reference"])
def test_nt_xent_gradcheck(variant: str) -> None:
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5, variant), (z1, z2))


# --- retrieval accuracy (Eq. 2) --------------------------------------------------------------


def test_retrieval_accuracy_perfect_pairs() -> None:
    z1 = torch.eye(50) * 10 + torch.randn(50, 50) * 0.01  # well separated rows
    z2 = z1 + torch.randn(50, 50) * 1e-3
    assert retrieval_accuracy(z1, z2) == 1.0


def test_retrieval_accuracy_counts_each_direction() -> None:
    # Rows 0 and 1 of z1 are nearly identical: z1[0]'s nearest other is z1[1], not its partner.
    z1 = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.0, 0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.02, 0.0], [0.0, 0.1, 1.0]])
    expected = _loop_retrieval(z1, z2)
    assert retrieval_accuracy(z1, z2) == pytest.approx(expected)
    assert 0 < expected < 1


def _loop_retrieval(z1: torch.Tensor, z2: torch.Tensor) -> float:
    rows = z1.tolist() + z2.tolist()
    n = len(z1)
    hits = 0
    for i in range(2 * n):
        nearest = max((k for k in range(2 * n) if k != i), key=lambda k: _cosine(rows[i], rows[k]))
        hits += nearest == (i + n) % (2 * n)
    return hits / (2 * n)


def test_retrieval_accuracy_of_unrelated_partners_is_near_chance() -> None:
    z1, z2 = torch.randn(200, 16), torch.randn(200, 16)
    accuracy = retrieval_accuracy(z1, z2)
    assert accuracy < 0.1
    assert _loop_retrieval(z1[:40], z2[:40]) == retrieval_accuracy(z1[:40], z2[:40])


# --- features ------------------------------------------------------------------------------


def test_features_are_the_resnet_forward_without_fc() -> None:
    model = resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = nn.Sequential(*list(model.children())[:-1])(x).flatten(1)
    assert torch.allclose(features(model, x), expected, atol=1e-5)
    assert feature_dim(model) == 512 == features(model, x).shape[1]
    narrow = NarrowResNet().eval()  # maxpool is nn.Identity
    y = torch.randn(2, 1, 16, 16)
    narrow_expected = nn.Sequential(*list(narrow.children())[:-1])(y).flatten(1)
    assert torch.allclose(features(narrow, y), narrow_expected, atol=1e-6)


def test_features_through_ddp_syncs_and_leaves_fc_untouched() -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{random.randint(20000, 60000)}", rank=0, world_size=1
    )
    try:
        model = NarrowResNet()
        objective = SimCLRObjective(feature_dim(model), projection_dim=8)
        objective.bind(model)  # freezes fc, so DDP does not wait for its gradient
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(4, 1, 16, 16)
        assert torch.allclose(features(ddp, x), features(model, x), atol=1e-6)
        for _ in range(2):  # a second backward would fail if DDP expected an fc gradient
            features(ddp, x).sum().backward()
        assert model.fc.weight.grad is None and model.layer1[0].conv1.weight.grad is not None
        assert "forward" not in vars(model)  # the temporary forward is gone
    finally:
        dist.destroy_process_group()


# --- augmentation -----------------------------------------------------------------------------


def test_augment_views_are_deterministic_and_independent() -> None:
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    augment = contrastive_augment(((0.5,), (0.25,)))  # SimCLR's view, blur included
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a, b = augment(images, g1), augment(images, g1)
    assert a.shape == images.shape and a.dtype == torch.float32
    assert torch.equal(a, augment(images, g2)) and torch.equal(b, augment(images, g2))
    assert not torch.allclose(a, b)
    gray = augment(torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8), g1)
    assert gray.shape == (8, 1, 16, 16) and torch.isfinite(gray).all()


# --- the objective --------------------------------------------------------------------------


def test_train_step_trains_backbone_and_head_not_fc() -> None:
    model = NarrowResNet()
    objective = SimCLRObjective(feature_dim(model), projection_dim=8)
    objective.bind(model)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    loss, metrics = objective.train_step(model, (images,), torch.Generator().manual_seed(0))
    loss.backward()
    assert 0.0 <= metrics["retrieval_accuracy"] <= 1.0
    assert model.layer4[0].conv2.weight.grad is not None
    assert all(p.grad is not None for p in objective.head.parameters())
    assert model.fc.weight.grad is None and not model.fc.weight.requires_grad


@pytest.mark.slow
def test_simclr_on_digits_through_the_loop_learns() -> None:
    torch.manual_seed(0)
    train_data, val_data = digit_sources()
    model = NarrowResNet()
    # 16x16 digits: milder crops and jitter than SimCLR's, no blur (the test's pre-blur setting)
    view = ContrastiveView(scale=(0.4, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), blur_p=0.0)
    augment = contrastive_augment(((0.5,), (0.25,)), view)
    objective = SimCLRObjective(feature_dim(model), projection_dim=32, augment=augment)
    before = objective.evaluate(model.eval(), val_data)
    result = train(
        model,
        objective,
        train_data,
        training=TrainingConfig(epochs=6, batch_size=128, seed=0),
        optim=AdamWConfig(lr=3e-3, weight_decay=1e-4),
        schedule=ConstantSchedule(),
        val_data=val_data,
        quiet=True,
    )
    after = result["final"]["val"]
    print(f"SimCLR digits: before {before}, after {after}")
    assert after["loss"] < before["loss"] - 0.5
    chance = 1 / (2 * 128 - 1)  # 2N - 1 candidates for each of the 2N representations
    assert after["retrieval_accuracy"] > max(20 * chance, before["retrieval_accuracy"] + 0.05)
    assert result["selection"] == {"metric": "val.retrieval_accuracy", "mode": "max"}


@pytest.mark.parametrize("name", ["simclr", "moco"])
def test_feature_retrieval_accuracy_is_eq2_on_backbone_features_whatever_the_head(name: str) -> None:
    """Fig. 2's SSL metric (the reference code's val_cacc(mlp=False)): Eq. 2 on the backbone's
    features of the evaluation's two views, so a re-drawn projection head does not move it."""
    from cvlth.objectives.moco import MoCoObjective
    from cvlth.objectives.simclr import eval_generator
    from cvlth.objectives.views import two_views

    torch.manual_seed(0)
    _, val_data = digit_sources(val=48)
    model = NarrowResNet().eval()

    def objective(seed: int) -> SimCLRObjective | MoCoObjective:
        torch.manual_seed(seed)  # heads drawn from the global generator
        if name == "simclr":
            return SimCLRObjective(feature_dim(model), projection_dim=8)
        built = MoCoObjective(feature_dim(model), dim=8, queue_size=32)
        built.bind(model)
        return built

    first, second = objective(1), objective(2)
    with torch.no_grad():
        a, b = first.evaluate(model, val_data), second.evaluate(model, val_data)
        # independently: the same views, cosine nearest neighbours by a plain loop
        generator = eval_generator(first.eval_seed, torch.device("cpu"))
        hits = total = 0
        for batch in val_data.epoch_batches(0):
            view1, view2 = two_views(first.augment, batch[0], generator)
            f1, f2 = features(model, view1), features(model, view2)
            hits += _loop_retrieval(f1, f2) * 2 * len(f1)
            total += 2 * len(f1)
    assert a["feature_retrieval_accuracy"] == pytest.approx(hits / total)
    assert a["feature_retrieval_accuracy"] == b["feature_retrieval_accuracy"]
    assert a["retrieval_accuracy"] != b["retrieval_accuracy"]  # the projections do depend on the head
    assert first.figure2_metric == "feature_retrieval_accuracy"
