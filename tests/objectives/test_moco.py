from dataclasses import replace

import pytest
import torch

from cvlth import pruning
from cvlth.config import AdamWConfig, ConstantSchedule, SGDConfig, TrainingConfig
from cvlth.data.augment_pipelines import MOCO_V2_VIEW, contrastive_augment
from cvlth.data.source import TensorBatchSource
from cvlth.models.backbones import feature_dim
from cvlth.objectives.features import features
from cvlth.objectives.moco import KeyQueue, MoCoObjective
from cvlth.pruning.enforcer import MaskEnforcer
from cvlth.scope import prunable_parameters
from cvlth.training.loop import train
from ssl_fixtures import NarrowResNet, digit_sources


def small_objective(model: torch.nn.Module, **kwargs) -> MoCoObjective:
    options = {"dim": 8, "queue_size": 32, "momentum": 0.9, **kwargs}
    return MoCoObjective(feature_dim(model), **options).bind(model)


# --- the queue ---------------------------------------------------------------------------------


def test_queue_wraps_around_exactly() -> None:
    queue = KeyQueue(dim=3, size=10)
    expected = queue.keys.clone().tolist()
    pointer = 0
    for step in range(7):  # batches of 4 do not divide 10: writes split in two pieces
        keys = torch.randn(4, 3)
        queue.dequeue_and_enqueue(keys)
        for row in keys.tolist():
            expected[pointer] = row
            pointer = (pointer + 1) % 10
        assert int(queue.pointer) == pointer, step
        assert torch.equal(queue.keys, torch.tensor(expected))


def test_queue_keeps_the_newest_keys_of_an_oversized_batch() -> None:
    queue = KeyQueue(dim=2, size=4)
    queue.dequeue_and_enqueue(torch.randn(1, 2))
    keys = torch.randn(6, 2)
    queue.dequeue_and_enqueue(keys)
    assert int(queue.pointer) == 1
    assert torch.equal(queue.keys, keys[[5, 2, 3, 4]])


def test_queue_and_key_side_are_checkpointed_and_frozen() -> None:
    model = NarrowResNet()
    objective = small_objective(model)
    modules = objective.modules()
    assert set(modules) == {"query_head", "key_encoder", "key_head", "queue"}
    assert set(modules["queue"].state_dict()) == {"keys", "pointer"}
    assert not any(p.requires_grad for p in modules["key_encoder"].parameters())
    assert not any(p.requires_grad for p in modules["key_head"].parameters())
    assert all(p.requires_grad for p in modules["query_head"].parameters())
    # Before bind() there is no key encoder yet: the heads can still be loaded (IMP rewinds them).
    assert set(MoCoObjective(64).modules()) == {"query_head", "key_head", "queue"}
    with pytest.raises(RuntimeError, match="bind"):
        MoCoObjective(64).keys(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.Generator())


# --- EMA and the mask --------------------------------------------------------------------------


def test_bind_keeps_a_loaded_queue_and_refills_a_fresh_one() -> None:
    """IMP loads θ_p's queue (or the previous round's) before the loop binds: the reference code
    carries its queue across rounds, so binding must not refill a loaded one."""
    model = NarrowResNet()
    fresh = MoCoObjective(feature_dim(model), dim=8, queue_size=16)
    fresh.bind(model)
    saved = {"keys": torch.nn.functional.normalize(torch.ones(16, 8), dim=1), "pointer": torch.tensor(5)}
    loaded = MoCoObjective(feature_dim(model), dim=8, queue_size=16)
    loaded.queue.load_state_dict(saved)
    loaded.bind(model)
    assert torch.equal(loaded.queue.keys, saved["keys"]) and int(loaded.queue.pointer) == 5
    assert not torch.equal(fresh.queue.keys, saved["keys"]) and int(fresh.queue.pointer) == 0
    loaded.queue.reset()
    assert not loaded.queue.loaded and not torch.equal(loaded.queue.keys, saved["keys"])


def test_ema_matches_the_formula() -> None:
    model = NarrowResNet()
    objective = small_objective(model, momentum=0.9)
    with torch.no_grad():
        for p in list(model.parameters()) + list(objective.query_head.parameters()):
            p.add_(torch.randn_like(p))
    pairs = list(zip(objective.key_encoder.parameters(), model.parameters(), strict=True))
    pairs += list(zip(objective.key_head.parameters(), objective.query_head.parameters(), strict=True))
    expected = [0.9 * k.detach().clone() + 0.1 * q.detach().clone() for k, q in pairs]
    objective.after_step(model)
    for (key, _), want in zip(pairs, expected, strict=True):
        assert torch.allclose(key, want, atol=1e-6, rtol=0)


def test_key_encoder_keeps_the_query_mask_through_training() -> None:
    torch.manual_seed(1)
    model = NarrowResNet()
    mask = pruning.magnitude(model, 0.5)
    objective = small_objective(model, momentum=0.5)  # bound before masking: key weights dense
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad] + list(objective.query_head.parameters()), lr=0.5
    )
    MaskEnforcer(model, mask).attach(optimizer)
    objective.set_mask(mask)
    images = torch.randint(0, 256, (16, 1, 16, 16), dtype=torch.uint8)
    for step in range(4):
        optimizer.zero_grad()
        loss, _ = objective.train_step(model, (images,), torch.Generator().manual_seed(step))
        loss.backward()
        optimizer.step()
        objective.after_step(model)
    keys = prunable_parameters(objective.key_encoder)
    queries = prunable_parameters(model)
    for name, keep in mask.items():
        assert torch.equal(keys[name] == 0, ~keep), name
        assert torch.equal(queries[name] == 0, ~keep), name
    moved = [not torch.allclose(keys[n], queries[n]) for n in mask]
    assert any(moved)  # the key encoder really is a lagging average, not a copy


# --- keys with shuffled BN ---------------------------------------------------------------------


def test_keys_come_back_in_batch_order() -> None:
    model = NarrowResNet()
    objective = small_objective(model, key_bn_groups=1)
    x = torch.randn(12, 1, 16, 16)
    direct = torch.nn.functional.normalize(objective.key_head(features(objective.key_encoder, x)), dim=1)
    keys, to_enqueue = objective.keys(x, torch.Generator().manual_seed(0))
    # One group: the permutation changes nothing but the order, which must be undone.
    assert torch.allclose(keys, direct, atol=1e-5) and to_enqueue is keys
    objective.key_bn_groups = 3
    split, _ = objective.keys(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(split, direct, atol=1e-3)  # separate BN statistics per group
    assert torch.allclose(split.norm(dim=1), torch.ones(12), atol=1e-5)


def test_train_step_metrics_and_gradients() -> None:
    model = NarrowResNet()
    objective = small_objective(model)
    images = torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8)
    before = objective.queue.keys.clone()
    loss, metrics = objective.train_step(model, (images,), torch.Generator().manual_seed(0))
    loss.backward()
    assert set(metrics) == {"top1", "retrieval_accuracy"}
    assert int(objective.queue.pointer) == 8 and not torch.equal(objective.queue.keys[:8], before[:8])
    assert torch.equal(objective.queue.keys[8:], before[8:])
    assert model.layer1[0].conv1.weight.grad is not None
    assert all(p.grad is None for p in objective.key_encoder.parameters())


def test_resumed_run_restores_key_encoder_and_queue_exactly(tmp_path) -> None:
    images = torch.randint(
        0, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    data = TensorBatchSource(images, torch.zeros(32, dtype=torch.long), batch_size=8, seed=1)

    def run(folder, epochs: int) -> MoCoObjective:
        torch.manual_seed(0)
        model = NarrowResNet()
        objective = MoCoObjective(feature_dim(model), dim=8, queue_size=12, momentum=0.9)
        train(
            model,
            objective,
            data,
            training=TrainingConfig(epochs=epochs, batch_size=8, seed=0),
            optim=SGDConfig(lr=0.1),
            schedule=ConstantSchedule(),
            run=folder,
            mask=pruning.magnitude(model, 0.5),
            quiet=True,
        )
        return objective

    straight = run(tmp_path / "straight", 2)
    run(tmp_path / "resumed", 1)  # stops after epoch 1; the next call resumes from its checkpoint
    resumed = run(tmp_path / "resumed", 2)
    for name, module in straight.modules().items():
        theirs = resumed.modules()[name].state_dict()
        for key, value in module.state_dict().items():
            assert torch.equal(value, theirs[key]), f"{name}.{key}"


@pytest.mark.slow
def test_moco_on_digits_through_the_loop_learns_with_a_mask() -> None:
    torch.manual_seed(0)
    train_data, val_data = digit_sources()
    model = NarrowResNet()
    mask = pruning.magnitude(model, 0.5)
    augment = contrastive_augment(((0.5,), (0.25,)), replace(MOCO_V2_VIEW, scale=(0.4, 1.0), blur_p=0.0))
    # Short run: a faster EMA and a small queue than the paper's 0.999 / 65,536.
    objective = MoCoObjective(feature_dim(model), dim=32, queue_size=512, momentum=0.95, augment=augment)
    result = train(
        model,
        objective,
        train_data,
        training=TrainingConfig(epochs=5, batch_size=128, seed=0),
        optim=AdamWConfig(lr=1e-3, weight_decay=1e-4),
        schedule=ConstantSchedule(),
        val_data=val_data,
        mask=mask,
        quiet=True,
    )
    # Before training the queue holds random keys (easy negatives, a low loss); compare with the
    # first epoch's evaluation, when the queue already holds real keys.
    first, after = result["history"][0]["val"], result["final"]["val"]
    print(f"MoCo digits: after epoch 1 {first}, after epoch 5 {after}")
    # With the paper's aug+ views (jitter 0.4, grayscale) the loss falls slowly in 5 short epochs
    # (6.20 -> 6.00 here); the top-1 of the positive key, 20x chance, is the clearer sign of learning.
    assert after["loss"] < first["loss"] - 0.1
    assert after["top1"] > max(20 / (512 + 1), first["top1"])  # chance: the positive among 513 logits
    # Eq. 2 on the query encoder: chance is 1/255 for the 2 x 128 views of a validation batch.
    assert (
        after["retrieval_accuracy"] > 3 / 255
    )  # 3x chance; 0.0195 here (deterministic since heads are seeded)
    keys = prunable_parameters(objective.key_encoder)
    for name, keep in mask.items():
        assert torch.equal(keys[name] == 0, ~keep), name
