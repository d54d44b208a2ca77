import pytest
import torch
import torchvision

from cvlth.pruning import MaskEnforcer, magnitude
from cvlth.scope import iter_prunable


def _train(model, optimizer, enforcer, steps=50):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        images = torch.randn(4, 3, 16, 16, generator=generator)
        labels = torch.randint(0, 10, (4,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # The invariant must hold at every step, not only at the end.
        for item in iter_prunable(model):
            assert not item.parameter[~enforcer.mask[item.canonical]].any()


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_pruned_weights_stay_zero_for_50_steps(optimizer_name):
    model = torchvision.models.resnet18(num_classes=10)
    mask = magnitude(model, 0.8)
    enforcer = MaskEnforcer(model, mask)
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=5e-4)
    enforcer.attach(optimizer)
    before = {item.canonical: item.parameter.detach().clone() for item in iter_prunable(model)}
    _train(model, optimizer, enforcer)
    changed = sum(
        int((item.parameter.detach() != before[item.canonical])[mask[item.canonical]].sum())
        for item in iter_prunable(model)
    )
    assert changed > 0.5 * mask.kept  # the kept weights did train


def test_dense_mask_binds_nothing_and_both_moco_encoders_are_enforced():
    from cvlth.masks import Mask

    model = torchvision.models.resnet18()
    assert MaskEnforcer(model, Mask.dense_for(model)).masked_tensors == 0

    class MoCoLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_q = torchvision.models.resnet18()
            self.encoder_k = torchvision.models.resnet18()

    moco = MoCoLike()
    mask = magnitude(moco, 0.5, wrapper="encoder_q.")
    enforcer = MaskEnforcer(moco, mask)
    assert enforcer.masked_tensors == 2 * len(mask)
    with torch.no_grad():
        for param in moco.encoder_k.parameters():
            param.add_(1.0)  # e.g. an EMA update that would resurrect pruned weights
    enforcer.apply()
    for item in iter_prunable(moco):
        assert not item.parameter[~mask[item.canonical]].any()
