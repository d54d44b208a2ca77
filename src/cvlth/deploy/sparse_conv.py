"""cvlth's own sparse path for unstructured tickets on CPU: each pruned convolution as a sparse
matrix (CSR, only the kept weights) times the im2col matrix of its input.

``y = W_csr @ cols(x)`` where ``W_csr`` is the ``[out, in·kh·kw]`` weight with its zeros dropped
and ``cols(x)`` the ``[in·kh·kw, N·H'·W']`` patches (``F.unfold``; a 1x1 stride-1 conv needs none:
its input reshaped). The product is torch's CSR x dense matmul (MKL's sparse BLAS on x86 builds).
The output equals ``F.conv2d`` with the masked weight up to float summation order. Only groups=1
convolutions are converted (every conv of a torchvision ResNet).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn


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


def sparsify(model: nn.Module, max_density: float = 0.5) -> nn.Module:
    """A copy of ``model`` (eval mode) whose convolutions with at most ``max_density`` non-zero
    weights are :class:`SparseConv2d`; denser ones (the stem, an unpruned layer) stay dense."""
    sparse = copy.deepcopy(model).eval()
    for module in list(sparse.modules()):
        for child_name, child in list(module.named_children()):
            convertible = isinstance(child, nn.Conv2d) and child.groups == 1
            if convertible and float((child.weight != 0).float().mean()) <= max_density:
                setattr(module, child_name, SparseConv2d(child))
    return sparse
