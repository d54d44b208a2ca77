"""Tickets as models to run: the sparse convolution against F.conv2d, the ONNX export against
PyTorch, and the export / speed commands."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvlth.cli import run_cli
from cvlth.deploy.export import export_onnx
from cvlth.deploy.sparse_conv import (
    LAYOUTS_KEPT,
    MAX_DENSITY,
    STACK_MAX_PLANE,
    DirectSparseConv2d,
    FusedBlock,
    FusedStem,
    SparseConv2d,
    direct_available,
    direct_kernel,
    sparsify,
)
from cvlth.deploy.speed import measure_speed, speedups
from cvlth.deploy.tickets import ticket_model
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.pruning import global_magnitude, prunable_state

SPEC = BackboneSpec("resnet18", width=8, stem="cifar", in_channels=3)
DIRECT = direct_available()  # compiles the C++ kernel once (about 30 s, then cached)


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "dilation", "bias"),
    [
        (16, 32, 1, 1, 0, 1, False),  # bottleneck 1x1
        (16, 32, 1, 2, 0, 1, False),  # strided downsample
        (8, 8, 3, 1, 1, 1, False),  # basic block 3x3
        (8, 16, 3, 2, 1, 1, True),  # strided 3x3, with a bias
        (3, 8, 7, 2, 3, 1, False),  # ImageNet stem
        (8, 8, 3, 1, 2, 2, False),  # DeepLab's dilated 3x3
    ],
)
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("layer", [SparseConv2d, DirectSparseConv2d])
def test_sparse_conv_equals_conv2d_with_the_masked_weight(
    cin, cout, kernel, stride, padding, dilation, bias, sparsity, layer
):
    if layer is DirectSparseConv2d and not DIRECT:
        pytest.skip("no C++ compiler here: the direct kernel cannot be built")
    generator = torch.Generator().manual_seed(cin * kernel + stride)
    conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=bias)
    with torch.no_grad():
        keep = torch.rand(conv.weight.shape, generator=generator) >= sparsity
        conv.weight.mul_(keep)
    x = torch.randn(3, cin, 13, 11, generator=generator)
    sparse = layer(conv)
    stored = sparse.weight._nnz() if layer is SparseConv2d else sparse.values.numel()
    assert stored == int(keep.sum())  # only the kept weights are stored
    expected = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
    assert torch.allclose(sparse(x), expected, atol=1e-5)
    if layer is DirectSparseConv2d:  # another input size: offsets are recomputed for it
        y = torch.randn(2, cin, 9, 16, generator=generator)
        assert torch.allclose(
            sparse(y), F.conv2d(y, conv.weight, conv.bias, stride, padding, dilation), atol=1e-5
        )


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize("stride", [1, 2])
def test_direct_conv_reads_a_padded_input_and_writes_a_padded_output_with_the_residual(stride):
    """What a fused block asks of one conv: its input already zero-padded by the conv before it, its
    output written inside a zero border for the conv after it, the residual added before the ReLU."""
    generator = torch.Generator().manual_seed(stride)
    conv = nn.Conv2d(8, 12, 3, stride, 1, bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=generator) >= 0.8)
    sparse = DirectSparseConv2d(conv)
    sparse.relu = True
    x = torch.randn(2, 8, 10, 9, generator=generator)
    expected_plain = F.conv2d(x, conv.weight, conv.bias, stride, 1)
    residual = torch.randn(expected_plain.shape, generator=generator)
    expected = torch.relu(expected_plain + residual)
    for out_pad in (0, 1, 2):
        out = sparse(F.pad(x, (1, 1, 1, 1)), out_pad=out_pad, residual=residual, padded=True)
        assert out.shape[2:] == (expected.shape[2] + 2 * out_pad, expected.shape[3] + 2 * out_pad)
        inner = out[:, :, out_pad : out.shape[2] - out_pad, out_pad : out.shape[3] - out_pad]
        assert torch.allclose(inner, expected, atol=1e-5)
        border = out.clone()
        border[:, :, out_pad : out.shape[2] - out_pad, out_pad : out.shape[3] - out_pad] = 0
        assert not border.any()  # the border stays zero, call after call
    assert torch.allclose(sparse(x, residual=residual), expected, atol=1e-5)  # unpadded input


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [(1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (7, 2, 3, 1)],
)
def test_direct_conv_on_channel_major_images_stacked_in_each_plane(kernel, stride, padding, dilation):
    """Channel-major ([C, N, H, W]): the batch's images one above the other in each channel's plane,
    the rows between them computed and never written; padded input and output, residual, ReLU."""
    generator = torch.Generator().manual_seed(kernel * 10 + stride)
    conv = nn.Conv2d(8, 12, kernel, stride, padding, dilation, bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=generator) >= 0.7)
    sparse = DirectSparseConv2d(conv)
    sparse.relu = True
    x = torch.randn(5, 8, 13, 11, generator=generator)
    plain = F.conv2d(x, conv.weight, conv.bias, stride, padding, dilation)
    residual = torch.randn(plain.shape, generator=generator)
    expected = torch.relu(plain + residual)
    residual_cm = residual.transpose(0, 1).contiguous()
    for out_pad in (0, 1):
        out = sparse(x.transpose(0, 1).contiguous(), out_pad=out_pad, residual=residual_cm, stacked=True)
        assert out.shape == (12, 5, expected.shape[2] + 2 * out_pad, expected.shape[3] + 2 * out_pad)
        inner = out[:, :, out_pad : out.shape[2] - out_pad, out_pad : out.shape[3] - out_pad]
        assert torch.allclose(inner.transpose(0, 1), expected, atol=1e-5)
        border = out.clone()
        border[:, :, out_pad : out.shape[2] - out_pad, out_pad : out.shape[3] - out_pad] = 0
        assert not border.any()
    if stride == 1 and padding:  # an input that carries the padding already
        padded = F.pad(x, (padding,) * 4).transpose(0, 1).contiguous()
        out = sparse(padded, residual=residual_cm, padded=True, stacked=True)
        assert torch.allclose(out.transpose(0, 1), expected, atol=1e-5)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize(("batch", "width"), [(1, 14), (3, 13), (2, 30), (4, 7)])
def test_a_3x3_conv_run_by_column_shift_equals_conv2d(batch, width):
    """The kernel's column-shifted path (each column shift's sums apart, added once per chunk): rows
    that start on a vector (14 + 2 = 16 wide) or not, images stacked in each plane, a residual, and
    an input with no room past its end (the last tiles read less than a full tile's vectors)."""
    kernel = direct_kernel()
    if not kernel.shifted_available():
        pytest.skip("the column-shifted path is built for AVX-512 only")
    generator = torch.Generator().manual_seed(width)
    conv = nn.Conv2d(24, 20, 3, 1, 1, bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=generator) >= 0.6)
    sparse = DirectSparseConv2d(conv)
    sparse.relu = True
    x = torch.randn(batch, 24, 11, width, generator=generator)
    plain = F.conv2d(x, conv.weight, conv.bias, 1, 1)
    residual = torch.randn(plain.shape, generator=generator)
    expected = torch.relu(plain + residual)
    # channel-major, padded: [C, N * (H + 2), W + 2], one stacked image to the kernel
    padded = F.pad(x, (1, 1, 1, 1)).transpose(0, 1).contiguous()
    stacked = padded.view(1, 24, batch * 13, width + 2)
    layout = sparse.layout(batch * 13, width + 2, shifts=3)
    assert layout.rowptr.shape == (layout.rowptr.shape[0], 20 * 3 + 1)
    out = torch.zeros(1, 20, batch * 11, width)
    kernel.sparse_conv_forward(
        stacked,
        layout.rowptr,
        layout.offsets,
        layout.values,
        sparse.bias,
        True,
        11,
        width,
        out,
        0,
        residual.transpose(0, 1).contiguous(),
        layout.max_offset,
        batch,
        layout.chunk_planes,
        layout.halo,
        3,
    )
    result = out.view(20, batch, 11, width).transpose(0, 1)
    assert torch.allclose(result, expected, atol=1e-5)
    with pytest.raises(ValueError, match="3 wide"):
        DirectSparseConv2d(nn.Conv2d(4, 4, 1)).layout(8, 8, shifts=3)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
def test_a_block_with_small_planes_runs_channel_major_and_hands_the_next_block_a_free_view():
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
    blocks = [Bottleneck(16, 8, stride=2, downsample=downsample), Bottleneck(32, 8)]
    with torch.no_grad():
        for block in blocks:
            block.eval()
            for module in block.modules():
                if isinstance(module, nn.Conv2d):
                    module.weight.mul_(torch.rand(module.weight.shape) >= 0.6)
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
    fused = [FusedBlock(block, MAX_DENSITY) for block in blocks]
    x = torch.randn(4, 16, 12, 12)
    assert STACK_MAX_PLANE >= (12 // 2) ** 2  # the block runs channel-major
    with torch.no_grad():
        middle = fused[0](x)
        assert middle.transpose(0, 1).is_contiguous()  # channel-major underneath, NCHW to the caller
        assert torch.allclose(middle, blocks[0](x), atol=1e-5)
        out = fused[1](middle)
        assert out.data_ptr() != middle.data_ptr()
        assert torch.allclose(out, blocks[1](blocks[0](x)), atol=1e-5)
        single = fused[0](x[:1])  # one image: NCHW as it is
        assert single.is_contiguous()
        assert torch.allclose(single, blocks[0](x[:1]), atol=1e-5)
        # each batch size has its own channel-major layout; a conv keeps only the most recent few
        for n in range(2, 9):
            assert torch.allclose(
                fused[0](x.repeat(2, 1, 1, 1)[:n]), blocks[0](x.repeat(2, 1, 1, 1)[:n]), atol=1e-5
            )
        convs = [m for m in fused[0].modules() if isinstance(m, DirectSparseConv2d)]
        assert convs and all(len(conv._layouts) <= LAYOUTS_KEPT for conv in convs)


def _sparse_bottleneck(
    inplanes: int, planes: int, downsample: bool, kernel: int, seed: int, stride: int = 1
) -> nn.Module:
    """A torchvision Bottleneck (its middle conv k x k, of `stride`) with random masks and BN
    statistics that matter."""
    from torchvision.models.resnet import Bottleneck

    torch.manual_seed(seed)
    down = None
    if downsample:
        down = nn.Sequential(
            nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
    block = Bottleneck(inplanes, planes, stride=stride, downsample=down)
    block.conv2 = nn.Conv2d(planes, planes, kernel, stride, padding=(kernel - 1) // 2, bias=False)
    with torch.no_grad():
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.mul_(torch.rand(module.weight.shape) >= 0.7)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return block.eval()


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize(
    ("batch", "height", "width", "band", "downsample", "kernel"),
    [
        (2, 13, 11, 4, True, 3),  # bands that do not divide the height; odd width (unaligned rows)
        (1, 16, 16, 8, False, 3),  # one image: its rows split between the threads
        (3, 9, 7, 1, False, 3),  # one row per band
        (2, 6, 10, 8, True, 3),  # one band taller than the image
        (2, 12, 9, 5, False, 5),  # a 5x5 middle conv: two rows shared between bands
    ],
)
def test_a_bottleneck_run_band_by_band_equals_the_block(
    batch, height, width, band, downsample, kernel, monkeypatch
):
    from cvlth.deploy import sparse_conv

    block = _sparse_bottleneck(16 if downsample else 32, 8, downsample, kernel, seed=height + band)
    fused = FusedBlock(block, MAX_DENSITY)
    assert fused.banded
    monkeypatch.setattr(sparse_conv, "BAND_ROWS", band)
    monkeypatch.setattr(sparse_conv, "STACK_MAX_PLANE", 0)  # these small planes run band by band too
    calls, downsampled = [], []
    run_bands = FusedBlock._forward_bands
    monkeypatch.setattr(
        FusedBlock, "_forward_bands", lambda self, *a: calls.append(a[1]) or run_bands(self, *a)
    )
    if downsample:  # its conv runs merged with the last one, inside the band kernel
        assert fused.merged is not None
        fused.downsample.register_forward_hook(lambda *_: downsampled.append(1))
    x = torch.randn(batch, block.conv1.in_channels, height, width)
    with torch.no_grad():
        expected = block(x)
        banded = fused(x).clone()
        again = fused(x + 1.0).clone()  # a second call: the buffers reused, nothing left from the first
        fused.banded = False
        layer_by_layer = fused(x).clone()
        assert torch.allclose(again, block(x + 1.0), atol=1e-5)
    assert len(calls) == 2  # the two banded calls ran the band kernel
    # with a downsample: no residual tensor, the input rows carried beside the middle conv's output
    assert all((identity is None) == downsample for identity in calls)
    assert not downsampled
    assert banded.shape == expected.shape
    assert torch.allclose(banded, expected, atol=1e-5)
    assert torch.allclose(banded, layer_by_layer, atol=1e-6)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize("size", [32, 12])  # NCHW, and channel-major (small output planes)
def test_a_strided_blocks_last_conv_and_downsample_run_as_one_conv(size, monkeypatch):
    block = _sparse_bottleneck(16, 8, True, 3, seed=size, stride=2)
    fused = FusedBlock(block, MAX_DENSITY)
    fused.strided_front = False  # the merged conv after the layer-by-layer front, also on NCHW planes
    assert fused.merged is not None and not fused.banded
    kept = int((block.conv3.weight != 0).sum() + (block.downsample[0].weight != 0).sum())
    assert fused.merged.values.numel() == kept  # both convs' kept weights, nothing else
    stacked = size == 12
    assert fused._stacked(torch.zeros(4, 16, size, size)) == stacked
    concatenated = []
    merged_input = FusedBlock._merged_input
    monkeypatch.setattr(
        FusedBlock, "_merged_input", lambda self, *a: concatenated.append(1) or merged_input(self, *a)
    )
    x = torch.randn(4, 16, size, size)
    with torch.no_grad():
        expected = block(x)
        out = fused(x).clone()
        # channel-major, the middle conv writes where the merged conv reads: nothing concatenated
        assert len(concatenated) == (0 if stacked else 1)
        again = fused(x + 1.0).clone()  # the reused buffer: its downsample part rewritten
        fused.merged = None  # the downsample's output as the residual, as before
        separate = fused(x).clone()
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(again, block(x + 1.0), atol=1e-5)
    assert torch.allclose(separate, expected, atol=1e-5)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize("batch", [1, 3])
def test_a_band_block_before_a_channel_major_block_writes_its_output_channel_major(batch):
    # a band block (16x16 planes, more than STACK_MAX_PLANE), then a strided block whose 8x8 output
    # runs channel-major at a batch: the band block's output is handed over without a copy
    first = _sparse_bottleneck(64, 16, False, 3, seed=1)
    second = _sparse_bottleneck(64, 16, True, 3, seed=2, stride=2)
    third = _sparse_bottleneck(64, 16, False, 3, seed=3)
    model = nn.Sequential(first, second, third).eval()
    sparse = sparsify(model)
    fused = [m for m in sparse.modules() if isinstance(m, FusedBlock)]
    assert [block.next_shrink for block in fused] == [4, 1, None]  # the next block's shrink, or none
    assert fused[0].banded and STACK_MAX_PLANE < 16 * 16 and STACK_MAX_PLANE >= 8 * 8
    handed = []
    fused[0].register_forward_hook(lambda module, args, out: handed.append(out))
    x = torch.randn(batch, 64, 16, 16)
    with torch.no_grad():
        expected = model(x)
        out = sparse(x)
        again = sparse(x - 0.5)
    (first_out, _) = handed
    if batch > 1:  # channel-major underneath: a free view for the next block
        assert first_out.transpose(0, 1).is_contiguous() and not first_out.is_contiguous()
    else:
        assert first_out.is_contiguous()
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(again, model(x - 0.5), atol=1e-5)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize(
    ("batch", "height", "width", "band"),
    [
        (2, 32, 32, 4),  # even sizes, bands that divide the output
        (1, 33, 31, 3),  # odd sizes; one image, its rows split between the threads
        (2, 29, 30, 1),  # one output row per band
        (3, 30, 34, 8),  # a band taller than a thread's rows
    ],
)
def test_a_strided_bottlenecks_front_run_band_by_band_equals_the_block(
    batch, height, width, band, monkeypatch
):
    from cvlth.deploy import sparse_conv

    block = _sparse_bottleneck(16, 8, True, 3, seed=height + band, stride=2)
    fused = FusedBlock(block, MAX_DENSITY)
    assert fused.strided_front and fused.merged is not None
    monkeypatch.setattr(sparse_conv, "STRIDED_BAND_ROWS", band)
    calls = []
    run_front = FusedBlock._forward_strided_front
    monkeypatch.setattr(
        FusedBlock, "_forward_strided_front", lambda self, x: calls.append(1) or run_front(self, x)
    )
    x = torch.randn(batch, 16, height, width)
    with torch.no_grad():
        expected = block(x)
        out = fused(x).clone()
        again = fused(x - 0.5).clone()  # the reused buffers hold nothing of the first call
        fused.strided_front = False
        layer_by_layer = fused(x).clone()
        assert torch.allclose(again, block(x - 0.5), atol=1e-5)
    assert len(calls) == 2
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out, layer_by_layer, atol=1e-6)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
def test_only_stride_one_bottlenecks_of_sparse_convs_run_band_by_band():
    from torchvision.models.resnet import BasicBlock

    assert FusedBlock(_sparse_bottleneck(32, 8, False, 3, seed=0), MAX_DENSITY).banded
    strided = _sparse_bottleneck(16, 8, True, 3, seed=2, stride=2)
    assert not FusedBlock(strided, MAX_DENSITY).banded
    dense_middle = _sparse_bottleneck(32, 8, False, 3, seed=1)
    with torch.no_grad():
        dense_middle.conv2.weight.fill_(1.0)  # above MAX_DENSITY: stays a dense conv
    assert not FusedBlock(dense_middle, MAX_DENSITY).banded
    assert not FusedBlock(BasicBlock(8, 8).eval(), MAX_DENSITY).banded


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize(
    ("channels", "width", "pool"),
    [
        (3, 64, nn.MaxPool2d(3, 2, 1)),  # ImageNet's stem: the kernel's conv and pool
        (1, 16, nn.MaxPool2d(3, 2, 1)),  # grayscale, one vector of output channels
        (3, 32, nn.MaxPool2d(2, 2)),  # another plain pool
        (3, 64, nn.MaxPool2d(3, 2, 1, ceil_mode=True)),  # the kernel's conv, PyTorch's pool
        (3, 8, nn.MaxPool2d(3, 2, 1)),  # fewer output channels than a vector: PyTorch's conv
        (3, 128, nn.MaxPool2d(3, 2, 1)),  # 8 or 16 vectors: groups of vectors, one after another
        (3, 80, nn.MaxPool2d(3, 2, 1)),  # 5 or 10 vectors: groups of 1 or 2
        (3, 40, nn.Identity()),  # 5 vectors with AVX2 (groups of 1), not whole with AVX-512; no pool
    ],
)
def test_the_fused_stem_equals_conv_bn_relu_pool(channels, width, pool):
    from cvlth.deploy.sparse_conv import direct_kernel

    torch.manual_seed(width + channels)
    conv, bn = nn.Conv2d(channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    reference = nn.Sequential(conv, bn, nn.ReLU(), pool).eval()
    stem = FusedStem(conv, bn, pool)
    lanes = int(direct_kernel().vector_lanes())
    assert stem.direct == (width % lanes == 0)
    for size in (37, 40):  # odd and even sizes; a second call reuses the buffers
        x = torch.randn(3, channels, size, size)
        with torch.no_grad():
            expected = reference(x)
            out = stem(x)
        assert out.shape == expected.shape and out.is_contiguous()
        assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
def test_an_output_past_the_caches_is_the_same():
    """An output over 8 MB is stored with non-temporal stores (aligned tiles) and ordinary ones (the
    tiles that are not): both give F.conv2d's values, with the residual and ReLU."""
    generator = torch.Generator().manual_seed(3)
    conv = nn.Conv2d(16, 256, 1, bias=True)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape, generator=generator) >= 0.7)
    sparse = DirectSparseConv2d(conv)
    sparse.relu = True
    for size in (56, 55):  # 55: planes of 3025 floats, most tiles not aligned to a vector
        x = torch.randn(3, 16, size, size, generator=generator)
        residual = torch.randn(3, 256, size, size, generator=generator)
        expected = torch.relu(F.conv2d(x, conv.weight, conv.bias) + residual)
        assert expected.numel() * 4 > 8 << 20
        assert torch.allclose(sparse(x, residual=residual), expected, atol=1e-5)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
@pytest.mark.parametrize(
    ("height", "width", "stride", "lead"),
    [(7, 9, (2, 2), (1, 1)), (6, 1, (2, 3), (0, 2)), (5, 4, (3, 2), (2, 0)), (1, 1, (2, 2), (0, 0))],
)
def test_stride_phases_are_every_sth_pixel_of_the_zero_padded_planes(height, width, stride, lead):
    # reference: pad, then take rows a, a + s, ... and columns b, b + s, ... for every phase (a, b)
    outer, inner = 2, 3
    (sh, sw), (lead_h, lead_w) = stride, lead
    x = torch.randn(outer, inner, height, width)
    hq, wq = -(-(height + 2 * lead_h) // sh), -(-(width + 2 * lead_w) // sw)
    padded = torch.zeros(outer, inner, hq * sh, wq * sw)
    padded[:, :, lead_h : lead_h + height, lead_w : lead_w + width] = x
    phases = [padded[:, :, a::sh, b::sw] for a in range(sh) for b in range(sw)]
    expected = torch.stack(phases, dim=1).reshape(outer, sh * sw * inner, hq, wq)
    out = torch.full((outer, sh * sw * inner, hq, wq), float("nan"))  # every element written
    direct_kernel().split_phases(x, out, outer, inner, sh, sw, lead_h, lead_w, True)
    assert torch.equal(out, expected)
    first = torch.full((outer, inner, hq, wq), float("nan"))
    direct_kernel().split_phases(x, first, 1, outer * inner, sh, sw, lead_h, lead_w, False)
    assert torch.equal(first, phases[0])


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
def test_an_input_too_large_for_32_bit_offsets_is_refused():
    sparse = DirectSparseConv2d(nn.Conv2d(64, 8, 3, padding=1))
    with pytest.raises(ValueError, match="32-bit offsets.*engine='csr'"):
        sparse.layout(6000, 6000)  # 64 planes of 36 M floats: offsets beyond 2^31 (nothing allocated)


def test_grouped_convolutions_are_refused():
    for layer in (SparseConv2d, DirectSparseConv2d):
        with pytest.raises(ValueError, match="groups=1"):
            layer(nn.Conv2d(4, 4, 3, groups=2))


@pytest.fixture(scope="module")
def ticket_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ticket")
    model = build_backbone(SPEC, 10)
    with torch.no_grad():  # BN statistics that are not the identity, so folding them matters
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    save_checkpoint(folder / "model.pt", model.state_dict(), SPEC, source="cvlth")
    mask = global_magnitude(prunable_state(model.state_dict()), 0.9)
    mask.save(folder / "mask.safetensors")
    return folder / "model.pt", folder / "mask.safetensors", mask


@pytest.mark.parametrize("engine", ["direct", "csr"])
def test_sparsified_ticket_gives_the_tickets_outputs(ticket_files, engine):
    if engine == "direct" and not DIRECT:
        pytest.skip("no C++ compiler here: the direct kernel cannot be built")
    checkpoint, mask_file, mask = ticket_files
    ticket = ticket_model(checkpoint, mask_file)
    for name, weight in prunable_state(ticket.state_dict()).items():
        assert not weight[~mask[name]].any()  # pruned entries exactly zero
    sparse = sparsify(ticket, engine=engine)
    layer = DirectSparseConv2d if engine == "direct" else SparseConv2d
    converted = [m for m in sparse.modules() if isinstance(m, layer)]
    sparse_layers = [name for name in mask if float(mask[name].float().mean()) <= MAX_DENSITY]
    assert len(converted) == len(sparse_layers) > 0  # the layers sparse enough; the stem stays dense
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(sparse(x), ticket(x), atol=1e-4)


@pytest.mark.skipif(not DIRECT, reason="no C++ compiler here: the direct kernel cannot be built")
def test_a_sparsified_bottleneck_resnet_gives_the_tickets_outputs_call_after_call():
    """ResNet-50's blocks (strided 3x3 in the middle, downsample 1x1) and its ImageNet stem, with BN
    statistics that matter; what it returns is the caller's to keep (its layers reuse buffers)."""
    spec = BackboneSpec("resnet50", width=8, stem="imagenet", in_channels=3)
    torch.manual_seed(1)
    ticket = build_backbone(spec, 5).eval()
    with torch.no_grad():
        for module in ticket.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        global_magnitude(prunable_state(ticket.state_dict()), 0.8).apply(ticket)
    sparse = sparsify(ticket)
    assert any(isinstance(m, FusedStem) for m in sparse.modules())
    assert sum(isinstance(m, DirectSparseConv2d) for m in sparse.modules()) > 10
    generator = torch.Generator().manual_seed(0)
    first, second = (
        torch.randn(3, 3, 64, 64, generator=generator),
        torch.randn(3, 3, 64, 64, generator=generator),
    )
    with torch.no_grad():
        out_first = sparse(first)
        kept = out_first.clone()
        out_second = sparse(second)
        assert torch.equal(out_first, kept)  # the second call did not write into the first's output
        assert torch.allclose(out_first, ticket(first), atol=1e-4)
        assert torch.allclose(out_second, ticket(second), atol=1e-4)


def test_export_matches_pytorch_and_keeps_pruned_weights_zero(ticket_files, tmp_path):
    onnx = pytest.importorskip("onnx")
    checkpoint, mask_file, mask = ticket_files
    ticket = ticket_model(checkpoint, mask_file)
    check = export_onnx(ticket, tmp_path / "ticket.onnx", (3, 32, 32))
    assert check.max_abs_difference is not None and check.max_abs_difference < 1e-4
    graph = onnx.load(str(check.path)).graph
    conv_weights = [onnx.numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 4]
    pruned = mask.total - mask.kept
    assert sum(int(np.sum(w == 0)) for w in conv_weights) >= pruned  # BN folding keeps zeros zero


def test_export_and_speed_commands(ticket_files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    checkpoint, mask_file, _ = ticket_files
    out = tmp_path / "t.onnx"
    argv = ["export", str(checkpoint), "--mask", str(mask_file), "--out", str(out), "--image-size", "32"]
    assert run_cli(argv) == 0
    assert "max |ONNX Runtime - PyTorch|" in capsys.readouterr().out and out.is_file()
    assert run_cli(argv) == 2  # no overwrite without --force
    assert "exists" in capsys.readouterr().err
    speed = ["speed", str(checkpoint), "--mask", str(mask_file), "--image-size", "32", "--rounds", "2"]
    assert run_cli([*speed, "--batch", "1", "--batch", "2"]) == 0
    text = capsys.readouterr().out
    for engine in ("pytorch", "onnxruntime", "cvlth-direct" if DIRECT else "cvlth-csr"):
        assert engine in text
    assert "batch 2: ticket on" in text


def test_speedups_compare_the_fastest_ticket_with_the_fastest_dense_engine(ticket_files):
    checkpoint, mask_file, _ = ticket_files
    dense, ticket = ticket_model(checkpoint), ticket_model(checkpoint, mask_file)
    timings = measure_speed(dense, ticket, (3, 16, 16), batches=(2,), rounds=2, warmup=1)
    assert {(t.engine, t.model) for t in timings} >= {
        ("pytorch", "dense"),
        ("pytorch", "ticket"),
        ("cvlth-csr", "ticket"),
    }
    ratio, ticket_engine, dense_engine = speedups(timings, 2)
    fastest_dense = min(t.seconds for t in timings if t.model == "dense")
    fastest_ticket = min(t.seconds for t in timings if t.model == "ticket")
    assert ratio == pytest.approx(fastest_dense / fastest_ticket)
    assert all(t.seconds > 0 for t in timings)


def test_deepsparse_is_compiled_for_each_static_batch_size(ticket_files, tmp_path, monkeypatch):
    """DeepSparse runs its optimized runtime only on static shapes: with ``batch_size=None`` it falls
    back to plain ONNX Runtime (seen: a ResNet-50 ticket as slow as its dense model). Here a stand-in
    ``deepsparse`` module records what cvlth compiles."""
    import sys
    import types

    from cvlth.deploy.speed import _deepsparse_runners

    compiled = []

    class Engine:
        def __init__(self, path: str, batch_size: int | None) -> None:
            self.batch_size = batch_size

        def run(self, inputs):
            assert inputs[0].shape[0] == self.batch_size  # a static engine gets its own batch size
            return [np.zeros((self.batch_size, 10), dtype=np.float32)]

    def compile_model(path, batch_size=None):
        compiled.append((path.rsplit("/", 1)[-1], batch_size))
        return Engine(path, batch_size)

    monkeypatch.setitem(sys.modules, "deepsparse", types.SimpleNamespace(compile_model=compile_model))
    checkpoint, mask_file, _ = ticket_files
    ticket = ticket_model(checkpoint, mask_file)
    runners = _deepsparse_runners(ticket, ticket, (3, 32, 32), tmp_path)
    assert set(runners) == {("deepsparse", "dense"), ("deepsparse", "ticket")}
    assert compiled == []  # nothing compiled before the first (warm-up) call
    run = runners[("deepsparse", "ticket")]
    for batch in (1, 4, 1, 4):
        run(torch.zeros(batch, 3, 32, 32))
    assert compiled == [("ticket.onnx", 1), ("ticket.onnx", 4)]  # once per batch size, never None


def test_the_l1_size_is_read_from_the_kernels_cache_description(tmp_path):
    from cvlth.deploy.sparse_conv import l1_data_bytes

    for index, (level, kind, size) in enumerate(
        [("1", "Instruction", "32K"), ("1", "Data", "48K"), ("2", "Unified", "2048K")]
    ):
        folder = tmp_path / f"index{index}"
        folder.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (folder / name).write_text(value + "\n")
    assert l1_data_bytes(tmp_path) == 48 * 1024
    assert l1_data_bytes(tmp_path / "missing") == 32 * 1024  # no description: a common size
