import matplotlib.image as mpimg
import pytest
import torch

from cvlth.analysis.plots import bars, curves, heatmaps, palette
from cvlth.masks import Mask

CURVE = [(0.0, 94.0, 0.3), (0.2, 94.1, 0.2), (0.36, 93.8, 0.4), (0.488, 93.0, 0.5), (0.9, 88.0, 1.0)]


def _read(path):
    assert path.is_file() and path.stat().st_size > 1000
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert 200 <= height <= 4000 and 200 <= width <= 4000
    return height, width


def _resnet_like_mask(dense_layer: bool = False) -> Mask:
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "layer1.0.conv1.weight": (16, 16, 1, 1),
        "layer1.0.conv2.weight": (16, 16, 3, 3),
        "layer2.0.conv2.weight": (32, 32, 3, 3),
        "layer3.0.conv2.weight": (64, 32, 3, 3),
    }
    tensors = {n: torch.rand(s, generator=generator) < 0.3 for n, s in shapes.items()}
    if dense_layer:
        tensors["layer2.0.conv2.weight"] = torch.ones(shapes["layer2.0.conv2.weight"], dtype=torch.bool)
    return Mask(tensors)


def test_source_colors_are_fixed_and_unknown_names_cycle():
    assert palette.source_color("imagenet") == palette.source_color("supervised") == "#1f77b4"
    assert palette.source_color("MoCo_v2") == palette.SOURCE_COLORS["moco"]
    assert palette.source_color("byol", index=1) == palette.EXTRA_COLORS[1]
    colors = palette.palette_colors(["simclr", "byol", "swav", "random"])
    assert colors == {
        "simclr": "#ff7f0e",
        "byol": palette.EXTRA_COLORS[0],
        "swav": palette.EXTRA_COLORS[1],
        "random": "#7f7f7f",
    }


def test_accuracy_edge_cases_one_source_no_std_no_dense(tmp_path):
    no_std = [(s, m, None) for s, m, _ in CURVE] + [(1.0, 10.0, None)]  # 100% sparsity is dropped
    _read(curves.plot_accuracy_by_source({"moco": no_std}, {"moco": (94.0, None)}, tmp_path / "a.png"))
    _read(curves.plot_accuracy_by_source({"moco": [(0.5, 90.0, 1.0)]}, {}, tmp_path / "b.png"))
    many = [(1 - 0.8**k, 90.0 - k, 0.5) for k in range(25)]  # crowded ticks get thinned
    _read(curves.plot_accuracy_by_source({"omp": many}, {"omp": (91.0, 0.3)}, tmp_path / "c.png"))
    with pytest.raises(ValueError):
        curves.plot_accuracy_by_source({"x": [(20.0, 1.0, None)]}, {}, tmp_path / "d.png")


def test_thin_ticks_keeps_ends():
    values = list(range(30, 0, -1))
    thinned = curves._thin_ticks(values, max_ticks=12)
    assert thinned[0] == 30 and thinned[-1] == 1 and len(thinned) <= 13


def test_perturbation(tmp_path):
    by_kind = {
        "imp": CURVE,
        "complement": [(s, 50.0, None) for s, _, _ in CURVE],
        "random": CURVE,
        "perturbed": CURVE,
    }
    _read(curves.plot_perturbation(by_kind, tmp_path / "pert.png", "perturbation"))
    _read(curves.plot_perturbation({"imp": CURVE}, tmp_path / "one.png", "", dense=(94.0, 0.1)))


def test_layer_sparsity_and_zero_kernels(tmp_path):
    layers = [f"layer{i}.{j}.conv2.weight" for i in range(1, 5) for j in range(3)]
    sparsity = {
        "imagenet": {name: 0.5 + 0.03 * k for k, name in enumerate(layers)},
        "simclr": {name: 0.45 + 0.04 * k for k, name in enumerate(layers)},
    }
    height, width = _read(bars.plot_layer_sparsity(sparsity, tmp_path / "ls.png"))
    assert width > height
    _read(bars.plot_layer_sparsity({"moco": {"layer1.0.conv1.weight": 0.0}}, tmp_path / "ls1.png"))

    counts = {"imagenet": {name: 10 * k for k, name in enumerate(layers)}, "moco": dict.fromkeys(layers, 0)}
    expected = {name: 2.5 * k for k, name in enumerate(layers)}
    _read(bars.plot_zero_kernels(counts, expected, tmp_path / "zk.png"))
    _read(bars.plot_zero_kernels({"omp": {"a": 0}}, None, tmp_path / "zk1.png"))


def test_kernel_heatmaps(tmp_path):
    _read(heatmaps.plot_kernel_heatmaps(_resnet_like_mask(), tmp_path / "k.png"))
    _read(heatmaps.plot_kernel_heatmaps(_resnet_like_mask(dense_layer=True), tmp_path / "dense.png"))
    _read(heatmaps.plot_kernel_heatmaps(_resnet_like_mask(), tmp_path / "b.png", blocks=["layer1.0"]))
    with pytest.raises(ValueError):
        heatmaps.plot_kernel_heatmaps(_resnet_like_mask(), tmp_path / "none.png", blocks=["layer9"])
