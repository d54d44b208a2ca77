"""cvlth's own sparse paths for unstructured tickets on CPU.

The direct kernel (``engine="direct"``, the default where a C++ compiler is present): a small
C++/OpenMP torch extension (``sparse_kernel.cpp``, compiled once per machine on first use into
torch's extension cache) that adds, for each kept weight, a shifted copy of one zero-padded input
plane to its output plane; no im2col matrix is built. Without a compiler, ``engine="csr"``:

``y = W_csr @ cols(x)`` where ``W_csr`` is the ``[out, in·kh·kw]`` weight with its zeros dropped
and ``cols(x)`` the ``[in·kh·kw, N·H'·W']`` patches (``F.unfold``; a 1x1 stride-1 conv needs none:
its input reshaped). The product is torch's CSR x dense matmul (MKL's sparse BLAS on x86 builds).
The output equals ``F.conv2d`` with the masked weight up to float summation order. Only groups=1
convolutions are converted (every conv of a torchvision ResNet).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

ENGINES = ("direct", "csr")
_NO_BIAS = torch.empty(0)
_KERNEL: dict[str, object] = {}


def direct_kernel() -> object:
    """The compiled C++ kernel (compiled on first call; raises RuntimeError when it cannot be)."""
    if "module" not in _KERNEL:
        from torch.utils.cpp_extension import load

        source = Path(__file__).with_name("sparse_kernel.cpp")
        flags = ["-O3", "-march=native", "-fopenmp"]
        _KERNEL["module"] = load(
            "cvlth_sparse_kernel",
            [str(source)],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    return _KERNEL["module"]


def direct_available() -> bool:
    """Whether the direct kernel compiles (and loads) on this machine."""
    try:
        direct_kernel()
    except Exception:  # no compiler, no ninja, a failed build: the CSR path remains
        return False
    return True


class DirectSparseConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` computed by the direct kernel from its kept weights alone."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only groups=1 convolutions with numeric zero padding are converted")
        weight = conv.weight.detach().float()
        self.out_channels, self.in_channels = int(weight.shape[0]), int(weight.shape[1])
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = (
            tuple(conv.stride),
            tuple(conv.padding),
            tuple(conv.dilation),
        )
        flat = weight.reshape(self.out_channels, -1)
        rows, cols = flat.nonzero(as_tuple=True)  # row-major: each output channel's weights together
        counts = torch.bincount(rows, minlength=self.out_channels)
        self.register_buffer(
            "rowptr", torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]), persistent=False
        )
        kh, kw = self.kernel_size
        self.register_buffer("channel", cols // (kh * kw), persistent=False)
        self.register_buffer("ky", (cols // kw) % kh, persistent=False)
        self.register_buffer("kx", cols % kw, persistent=False)
        self.register_buffer("values", flat[rows, cols].contiguous(), persistent=False)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self._offsets: dict[tuple[int, int], torch.Tensor] = {}
        self.relu = False

    def offsets(self, hq: int, wq: int) -> torch.Tensor:
        """Each kept weight's input offset inside one image of the kernel's input (``hq`` x ``wq``
        planes, ``stride²`` phases of the padded input per channel; cached per size).

        A stride-s convolution is a stride-1 one over the s x s phases of its input (rows and
        columns taken every s-th, from each offset): tap (ky, kx) reads phase ((ky·dh) mod s,
        (kx·dw) mod s) at row/column shift ((ky·dh) div s, (kx·dw) div s)."""
        key = (hq, wq)
        if key not in self._offsets:
            (dh, dw), (sh, sw) = self.dilation, self._phase_stride
            rows, cols = self.ky * dh, self.kx * dw
            phase = (rows % sh) * sw + (cols % sw)
            plane = phase * self.in_channels + self.channel
            self._offsets[key] = (plane * (hq * wq) + (rows // sh) * wq + cols // sw).contiguous()
        return self._offsets[key]

    @property
    def _pointwise(self) -> bool:
        """A 1x1 convolution without padding: a strided one only reads every s-th pixel."""
        return self.kernel_size == (1, 1) and self.padding == (0, 0)

    @property
    def _phase_stride(self) -> tuple[int, int]:
        return (1, 1) if self._pointwise else self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pointwise and self.stride != (1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1]]
        (ph, pw), (sh, sw) = self.padding, self._phase_stride
        (kh, kw), (dh, dw) = self.kernel_size, self.dilation
        n, _, height, width = x.shape
        hp, wp = height + 2 * ph, width + 2 * pw
        out_h = (hp - dh * (kh - 1) - 1) // sh + 1
        out_w = (wp - dw * (kw - 1) - 1) // sw + 1
        hq, wq = -(-hp // sh), -(-wp // sw)  # phases of equal size: pad up to a multiple of the stride
        padded = F.pad(x.float(), (pw, pw + wq * sw - wp, ph, ph + hq * sh - hp))
        if (sh, sw) != (1, 1):
            phases = padded.view(n, self.in_channels, hq, sh, wq, sw).permute(0, 3, 5, 1, 2, 4)
            padded = phases.reshape(n, sh * sw * self.in_channels, hq, wq)
        bias = self.bias if self.bias is not None else _NO_BIAS
        return direct_kernel().sparse_conv_forward(
            padded.contiguous(),
            self.rowptr,
            self.offsets(hq, wq),
            self.values,
            bias,
            self.relu,
            out_h,
            out_w,
            1,
            1,
        )

    def fold(self, bn: nn.BatchNorm2d, relu: bool = False) -> DirectSparseConv2d:
        """Fold the eval-mode ``bn`` that follows (each output channel's weights scaled, its shift
        the bias; pruned weights stay absent) and, with ``relu``, the ReLU after it."""
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        shift = (bn.bias - bn.running_mean * scale).detach()
        rows = torch.repeat_interleave(torch.arange(self.out_channels), self.rowptr.diff())
        self.values = (self.values * scale[rows]).contiguous()
        old_bias = self.bias if self.bias is not None else torch.zeros(self.out_channels)
        self.bias = (old_bias * scale + shift).contiguous().float()
        self.relu = relu
        return self


class SparseConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` (inference only) computed from its non-zero weights alone."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only groups=1 convolutions with numeric zero padding are converted")
        weight = conv.weight.detach()
        self.out_channels, self.in_channels = int(weight.shape[0]), int(weight.shape[1])
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = (
            tuple(conv.stride),
            tuple(conv.padding),
            tuple(conv.dilation),
        )
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are tested
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.reshape(self.out_channels, -1).to_sparse_csr()
        self.register_buffer("weight", csr, persistent=False)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self.density = float((weight != 0).float().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        out_h = (
            height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1
        ) // self.stride[0] + 1
        out_w = (
            width + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1
        ) // self.stride[1] + 1
        if self.kernel_size == (1, 1) and self.padding == (0, 0):
            strided = x[:, :, :: self.stride[0], :: self.stride[1]]
            cols = strided.transpose(0, 1).reshape(self.in_channels, -1)
        else:
            patches = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
            cols = patches.transpose(0, 1).reshape(patches.shape[1], -1)
        out = (self.weight @ cols).reshape(self.out_channels, n, out_h, out_w).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.contiguous()


class FusedBlock(nn.Module):
    """A torchvision ResNet block (BasicBlock or Bottleneck) for inference with every conv-BN(-ReLU)
    folded into one direct sparse convolution where the conv is sparse enough (else the dense conv
    and its BN), then the residual sum and its ReLU."""

    def __init__(self, block: BasicBlock | Bottleneck, max_density: float) -> None:
        super().__init__()
        names = ["1", "2", "3"] if isinstance(block, Bottleneck) else ["1", "2"]
        self.stages = nn.ModuleList(
            _conv_bn(getattr(block, f"conv{k}"), getattr(block, f"bn{k}"), k != names[-1], max_density)
            for k in names
        )
        down = block.downsample
        self.downsample = None if down is None else _conv_bn(down[0], down[1], False, max_density)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for stage in self.stages:
            out = stage(out)
        return torch.relu_(out + identity)


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool, max_density: float) -> nn.Module:
    if conv.groups == 1 and float((conv.weight != 0).float().mean()) <= max_density:
        return DirectSparseConv2d(conv).fold(bn, relu)
    return nn.Sequential(conv, bn, *([nn.ReLU()] if relu else []))


def sparsify(model: nn.Module, max_density: float = 0.5, engine: str = "direct") -> nn.Module:
    """A copy of ``model`` (eval mode) whose convolutions with at most ``max_density`` non-zero
    weights are computed sparsely; denser ones (the stem, an unpruned layer) stay dense.

    ``engine="direct"``: every torchvision ResNet block becomes a :class:`FusedBlock` (sparse convs
    with their BN and ReLU folded into the kernel), any other such conv a
    :class:`DirectSparseConv2d`; ``engine="csr"``: each conv a :class:`SparseConv2d`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    sparse = copy.deepcopy(model).eval()
    layer = DirectSparseConv2d if engine == "direct" else SparseConv2d
    with torch.no_grad():
        for module in list(sparse.modules()):
            for child_name, child in list(module.named_children()):
                if engine == "direct" and isinstance(child, BasicBlock | Bottleneck):
                    setattr(module, child_name, FusedBlock(child, max_density))
                    continue
                convertible = isinstance(child, nn.Conv2d) and child.groups == 1
                if convertible and float((child.weight != 0).float().mean()) <= max_density:
                    setattr(module, child_name, layer(child))
    return sparse
