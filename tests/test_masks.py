import json
import math

import numpy as np
import pytest
import torch
import torchvision
from safetensors import safe_open
from safetensors.torch import save_file

from cvlth.errors import MaskError
from cvlth.masks import FORMAT_TAG, Mask, load_mask
from cvlth.scope import prunable_parameters


def _mask(**layers):
    return Mask({name: torch.tensor(values, dtype=torch.bool) for name, values in layers.items()})


def test_counts_and_sparsity():
    mask = _mask(a=[[1, 0], [0, 0]], b=[1, 1, 1, 0])
    assert (mask.kept, mask.total, mask.pruned) == (4, 8, 4)
    assert mask.sparsity == 0.5 and mask.density == 0.5
    assert mask.layer_sparsity() == {"a": 0.75, "b": 0.25}
    assert mask.layer_counts() == {"a": (1, 4), "b": (3, 4)}


def test_iou_complement_against_hand_computation():
    m1 = _mask(a=[1, 1, 0, 0], b=[1, 0])
    m2 = _mask(a=[1, 0, 1, 0], b=[1, 1])
    # intersection: a[0], b[0] -> 2; union: a[0..2], b[0..1] -> 5
    assert m1.iou(m2) == pytest.approx(2 / 5)
    assert m1.layer_iou(m2) == {"a": pytest.approx(1 / 3), "b": pytest.approx(1 / 2)}
    comp = m1.complement()
    assert comp["a"].tolist() == [False, False, True, True] and comp["b"].tolist() == [False, True]
    assert m1.iou(comp) == 0.0
    with pytest.raises(MaskError, match="only in"):
        m1.iou(_mask(a=[1, 1, 0, 0]))


def test_perturb_swaps_equal_numbers_per_layer():
    generator = torch.Generator().manual_seed(1)
    mask = Mask(
        {"a": torch.rand(100, generator=generator) < 0.3, "b": torch.rand(7, 9, generator=generator) < 0.6}
    )
    perturbed = mask.perturb(0.1, seed=3)
    for name in mask:
        kept = int(mask[name].sum())
        pruned = mask[name].numel() - kept
        expected_swaps = min(round(0.1 * kept), pruned)
        revived = int((perturbed[name] & ~mask[name]).sum())
        dropped = int((~perturbed[name] & mask[name]).sum())
        assert revived == dropped == expected_swaps
        assert int(perturbed[name].sum()) == kept
    assert perturbed == mask.perturb(0.1, seed=3)
    assert perturbed != mask.perturb(0.1, seed=4)
    assert mask.perturb(0.0, seed=0) == mask


def test_apply_zeroes_pruned_weights_and_validate_lists_differences():
    model = torchvision.models.resnet18()
    params = prunable_parameters(model)
    generator = torch.Generator().manual_seed(0)
    mask = Mask({n: torch.rand(p.shape, generator=generator) < 0.5 for n, p in params.items()})
    before = {n: p.detach().clone() for n, p in params.items()}
    mask.apply(model)
    for name, param in params.items():
        assert torch.equal(param.detach(), before[name] * mask[name])
    assert torch.count_nonzero(model.conv1.weight) == model.conv1.weight.numel()  # stem untouched

    wrong = dict(mask.items())
    wrong.pop("layer1.0.conv1.weight")
    wrong["layer9.0.conv1.weight"] = torch.ones(3, 3, dtype=torch.bool)
    wrong["layer2.0.conv1.weight"] = torch.ones(5, 5, 3, 3, dtype=torch.bool)
    with pytest.raises(MaskError) as info:
        Mask(wrong).validate(model)
    text = str(info.value)
    assert "layer1.0.conv1.weight" in text and "layer9.0.conv1.weight" in text
    assert "layer2.0.conv1.weight: mask [5, 5, 3, 3] vs model [128, 64, 3, 3]" in text


@pytest.fixture
def random_mask() -> Mask:
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "layer1.0.conv1.weight": (16, 8, 3, 3),
        "layer1.0.downsample.0.weight": (16, 8, 1, 1),
        "x": (13,),
    }
    return Mask({n: torch.rand(s, generator=generator) < 0.3 for n, s in shapes.items()})


def test_file_round_trip_format_and_size(tmp_path, random_mask):
    path = random_mask.save(tmp_path / "m.safetensors", method="magnitude", round=3)
    loaded, provenance = load_mask(path)
    assert loaded == random_mask
    assert provenance["method"] == "magnitude" and provenance["round"] == "3"
    # The file is readable with plain safetensors + numpy, as the format promises.
    with safe_open(str(path), framework="numpy") as handle:
        meta = handle.metadata()
        assert meta["format"] == FORMAT_TAG
        assert float(meta["sparsity"]) == pytest.approx(random_mask.sparsity)
        shapes = json.loads(meta["shapes"])
        for name, shape in shapes.items():
            bits = np.unpackbits(handle.get_tensor(name), bitorder="little")[: math.prod(shape)]
            assert np.array_equal(bits.reshape(shape).astype(bool), random_mask[name].numpy())
    header_allowance = 1024
    assert path.stat().st_size <= random_mask.total / 8 + len(random_mask) + header_allowance


def test_truncated_file_is_refused(tmp_path, random_mask):
    path = random_mask.save(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 20])
    with pytest.raises(MaskError, match="truncated or corrupted"):
        Mask.load(path)


def test_wrong_shape_and_wrong_format_are_refused(tmp_path, random_mask):
    packed = {
        n: torch.from_numpy(np.packbits(t.reshape(-1).numpy(), bitorder="little"))
        for n, t in random_mask.items()
    }
    shapes = {n: list(s) for n, s in random_mask.shapes.items()}
    shapes["layer1.0.conv1.weight"] = [32, 8, 3, 3]  # needs twice the bytes stored
    bad_shape = tmp_path / "shape.safetensors"
    save_file(packed, str(bad_shape), metadata={"format": FORMAT_TAG, "shapes": json.dumps(shapes)})
    with pytest.raises(MaskError, match=r"layer1.0.conv1.weight holds 144 .* needs 288"):
        Mask.load(bad_shape)

    bad_tag = tmp_path / "tag.safetensors"
    save_file(packed, str(bad_tag), metadata={"format": "something-else"})
    with pytest.raises(MaskError, match="expected 'cvlth-mask/1'"):
        Mask.load(bad_tag)
    with pytest.raises(MaskError, match="not found"):
        Mask.load(tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("hello, I am not a mask")
    with pytest.raises(MaskError, match="not a readable"):
        Mask.load(tmp_path / "text.safetensors")


def test_layers_are_in_natural_order() -> None:
    """ResNet-101/152 name layer3.10 after layer3.9, not between layer3.1 and layer3.2."""
    names = [f"layer3.{i}.conv1.weight" for i in (10, 2, 1, 22, 9)]
    mask = Mask({name: torch.ones(2, 2, dtype=torch.bool) for name in names})
    assert list(mask.layer_counts()) == [f"layer3.{i}.conv1.weight" for i in (1, 2, 9, 10, 22)]
