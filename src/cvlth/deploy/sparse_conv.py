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
import math
import warnings
from pathlib import Path
from typing import NamedTuple

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


LAYOUTS_KEPT = 4  # input sizes whose layouts a conv keeps (an evaluation's last batch is smaller)


def l1_data_bytes(cpu_cache: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The first core's level-1 data cache in bytes, as Linux reports it (32 kB where it does not)."""
    for index in sorted(cpu_cache.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        if level == "1" and kind in ("Data", "Unified") and size.rstrip("K").isdigit():
            return int(size.rstrip("K")) * (1024 if size.endswith("K") else 1)
    return 32 * 1024


#: The share of the core's L1 data cache one chunk of input rows may take: three quarters. Side by
#: side on ResNet-50 at batch 16: on a 48 kB L1 (Intel, 2026-12-03) 36 kB was 2 % faster than 24 kB
#: and 48 kB within 0.5-2.6 % of 36 kB; on a 32 kB L1 (AMD EPYC, 2026-12-04) 24 kB was 7 % / 5 %
#: faster than 36 kB at 90 % / 95 % sparsity, 16 kB 3-4 % slower than 24 kB.
L1_BYTES = l1_data_bytes() * 3 // 4
#: Kept weights per output channel and chunk that pay for reloading its sums. Side by side on
#: ResNet-50 at batch 16 (AMD EPYC, 2026-12-04, four runs, once each output channel's multiply-adds
#: were inlined in the tile's loop): 12 against 16, 0.984 / 0.976 at 90 % / 95 % on average (batch 1:
#: 1.003 / 1.021); 20: 1.058 / 1.008; 10: as 12.
MIN_CHUNK_WEIGHTS = 12


class KernelLayout(NamedTuple):
    """A conv's kept weights as the direct kernel reads them for one input plane size."""

    # [chunks, out + 1]: chunk c, output channel o: weights rowptr[c, o] to [c, o + 1] (a column-shifted
    # layout: [chunks, out * shifts + 1], output channel o's shift s at o * shifts + s)
    rowptr: torch.Tensor
    # [kept, 2] int32, one pair per weight: the offset of its input element inside one image (plane,
    # row, column), then its value's bits (one stream for the kernel to read, not two: 3-6 % at 95 %)
    offsets: torch.Tensor
    values: torch.Tensor  # the same pairs seen as float32 (the kernel reads the values from column 1)
    max_offset: int
    chunk_planes: int  # input planes per chunk
    halo: int  # floats a tile reads in one plane beyond its own outputs' positions


class BufferCache:
    """Tensors reused from call to call (an activation of ResNet-50 at batch 16 is up to 51 MB, and
    a fresh one costs its page faults: ~30 ms on one core here, the convolution's own time).
    Zero-filled once: the borders nobody writes stay zero."""

    def __init__(self) -> None:
        self._tensors: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        key = (name, tuple(shape))
        if key not in self._tensors:
            self._tensors = {k: v for k, v in self._tensors.items() if k[0] != name}  # one size per name
            self._tensors[key] = torch.zeros(shape)
        return self._tensors[key]


class DirectSparseConv2d(nn.Module):
    """A frozen ``nn.Conv2d`` computed by the direct kernel from its kept weights alone.

    Its output tensor is reused by the next call (see :class:`BufferCache`): :func:`sparsify`
    returns copies of what the whole model returns."""

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
        kh, kw = self.kernel_size
        self.register_buffer("row", rows, persistent=False)
        self.register_buffer("channel", cols // (kh * kw), persistent=False)
        self.register_buffer("ky", (cols // kw) % kh, persistent=False)
        self.register_buffer("kx", cols % kw, persistent=False)
        self.register_buffer("values", flat[rows, cols].contiguous(), persistent=False)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)
        self._layouts: dict[tuple[int, int], KernelLayout] = {}
        self.buffers_ = BufferCache()
        self.relu = False
        self.padding_out = 0  # the zero border its last output was written with

    @property
    def _pointwise(self) -> bool:
        """A 1x1 convolution without padding: a strided one only reads every s-th pixel."""
        return self.kernel_size == (1, 1) and self.padding == (0, 0)

    @property
    def _phase_stride(self) -> tuple[int, int]:
        return (1, 1) if self._pointwise else self.stride

    def offsets(self, hq: int, wq: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each kept weight's input plane and its offset inside one image of the kernel's input
        (``hq`` x ``wq`` planes, ``stride²`` phases of the padded input per channel).

        A stride-s convolution is a stride-1 one over the s x s phases of its input (rows and
        columns taken every s-th, from each offset): tap (ky, kx) reads phase ((ky·dh) mod s,
        (kx·dw) mod s) at row/column shift ((ky·dh) div s, (kx·dw) div s)."""
        (dh, dw), (sh, sw) = self.dilation, self._phase_stride
        rows, cols = self.ky * dh, self.kx * dw
        plane = ((rows % sh) * sw + (cols % sw)) * self.in_channels + self.channel
        return plane, plane * (hq * wq) + (rows // sh) * wq + cols // sw

    def layout(self, hq: int, wq: int, shifts: int = 1) -> KernelLayout:
        """The kernel's weights for ``hq`` x ``wq`` input planes (cached per size), a
        :class:`KernelLayout`: row pointers per (chunk of input planes, output channel), offsets,
        values, the largest offset, the chunk's size in planes and the tile's halo.

        A chunk holds enough planes for its rows of one tile to fill a share of L1, or more, so
        that each output channel has about :data:`MIN_CHUNK_WEIGHTS` kept weights in it. A
        channel-major input's planes hold the whole batch, so each batch size has its own layout:
        the :data:`LAYOUTS_KEPT` most recent ones are kept (a copy of the kept weights each).

        ``shifts`` > 1 (a stride-1, undilated conv ``shifts`` wide, for the kernel's column-shifted
        path): each output channel's weights grouped by their column shift, its row pointers
        ``[chunks, out · shifts + 1]``."""
        key = (hq, wq, shifts)
        if key in self._layouts:
            self._layouts[key] = self._layouts.pop(key)  # the most recent last
        else:
            while len(self._layouts) >= LAYOUTS_KEPT:
                del self._layouts[next(iter(self._layouts))]
            plane, offsets = self.offsets(hq, wq)
            if offsets.numel() and int(offsets.max()) >= 2**31:
                raise ValueError(
                    f"an input of {self.in_channels} channels at {hq}x{wq} is too large for the direct "
                    "kernel's 32-bit offsets: use sparsify(..., engine='csr')"
                )
            planes = int(plane.max()) + 1 if plane.numel() else 1
            halo = int((offsets - plane * (hq * wq)).max()) if plane.numel() else 0
            if shifts > 1:  # its tiles are narrower, and read a vector more
                if self.kernel_size[1] != shifts or self.stride != (1, 1) or self.dilation != (1, 1):
                    raise ValueError(f"a column-shifted layout needs a stride-1 undilated conv {shifts} wide")
                tile = int(direct_kernel().shifted_tile_floats()) + int(direct_kernel().vector_lanes())
            else:
                tile = int(direct_kernel().tile_floats())
            in_l1 = max(1, L1_BYTES // ((tile + halo) * 4))
            per_plane = max(self.values.numel(), 1) / (self.out_channels * planes)  # kept weights
            enough = int(MIN_CHUNK_WEIGHTS / max(per_plane, 1e-9)) + 1
            size = min(planes, max(in_l1, enough))
            size = -(-planes // -(-planes // size))  # as many chunks, of equal sizes (no small last one)
            chunk = plane // size
            chunks = (planes + size - 1) // size
            group = (chunk * self.out_channels + self.row) * shifts + (self.kx if shifts > 1 else 0)
            order = torch.argsort(group, stable=True)  # by chunk, output channel (shift), then tap
            counts = torch.bincount(group, minlength=chunks * self.out_channels * shifts).view(chunks, -1)
            ends = counts.flatten().cumsum(0).view(chunks, -1)
            rowptr = torch.cat([(ends[:, :1] - counts[:, :1]), ends], dim=1)
            pairs = torch.stack([offsets[order].to(torch.int32), self.values[order].view(torch.int32)], 1)
            pairs = pairs.contiguous()
            self._layouts[key] = KernelLayout(
                rowptr.contiguous(),
                pairs,
                pairs.view(torch.float32),
                int(offsets.max()) if offsets.numel() else 0,
                size,
                halo,
            )
        return self._layouts[key]

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The output's height and width for an unpadded ``height`` x ``width`` input."""
        (ph, pw), (kh, kw), (dh, dw), (sh, sw) = self.padding, self.kernel_size, self.dilation, self.stride
        return (
            (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
            (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1,
        )

    def forward(
        self,
        x: torch.Tensor,
        out_pad: int = 0,
        residual: torch.Tensor | None = None,
        padded: bool = False,
        stacked: bool = False,
        into: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``padded``: ``x`` carries this conv's zero padding already (an output written with
        ``out_pad`` equal to it); ``out_pad``: the output gets a zero border that wide (for the next
        conv); ``residual``: added before the ReLU (the block's sum); ``stacked``: ``x``, the
        residual and the output are channel-major, ``[C, N, H, W]`` (see :class:`FusedBlock`);
        ``into``: a contiguous tensor of the output's shape to write it into (else a reused buffer)."""
        (ph, pw), (sh, sw) = self.padding, self._phase_stride
        channel_dim = 0 if stacked else 1
        n = x.shape[1 - channel_dim]
        height, width = x.shape[2], x.shape[3]
        if padded:
            height, width = height - 2 * ph, width - 2 * pw
        out_h, out_w = self.output_size(height, width)
        if self._pointwise and self.stride != (1, 1):
            x = self._strided(x, channel_dim)
        elif (ph, pw, sh, sw) != (0, 0, 1, 1) and not (padded and (sh, sw) == (1, 1)):
            x = self._phases(x, height, width, padded, channel_dim)
        x = x.float().contiguous()
        out_shape = (n, self.out_channels) if not stacked else (self.out_channels, n)
        shape = (*out_shape, out_h + 2 * out_pad, out_w + 2 * out_pad)
        if into is not None and (tuple(into.shape) != shape or not into.is_contiguous()):
            raise ValueError(f"into: a contiguous tensor of shape {shape} expected, got {tuple(into.shape)}")
        out = into if into is not None else self.buffers_.get("output", shape)
        if residual is not None:
            residual = residual.float().contiguous()
        if stacked:  # the images one above the other in each channel's plane: one image to the kernel
            x = x.view(1, x.shape[0], n * x.shape[2], x.shape[3])
        layout = self.layout(x.shape[2], x.shape[3])
        direct_kernel().sparse_conv_forward(
            x,
            layout.rowptr,
            layout.offsets,
            layout.values,
            self.bias if self.bias is not None else _NO_BIAS,
            self.relu,
            out_h,
            out_w,
            out.view(1, self.out_channels, -1, out.shape[3]) if stacked else out,
            out_pad,
            _NO_BIAS if residual is None else residual,
            layout.max_offset,
            n if stacked else 1,
            layout.chunk_planes,
            layout.halo,
            1,  # no column shifts: that path runs in the band kernel (on channel-major 14x14 planes it was slower)
        )
        return out

    def _phases(
        self, x: torch.Tensor, height: int, width: int, padded: bool, channel_dim: int = 1
    ) -> torch.Tensor:
        """The zero-padded input split into its stride x stride phases, ``[N, s² C, Hq, Wq]`` (one
        phase: the padded input itself; ``[s² C, N, Hq, Wq]`` when ``channel_dim`` is 0), written
        into a reused buffer."""
        (ph, pw), (sh, sw) = self.padding, self._phase_stride
        hq, wq = -(-(height + 2 * ph) // sh), -(-(width + 2 * pw) // sw)  # zeros beyond the padded input
        n, c = x.shape[1 - channel_dim], self.in_channels
        shape = (n, sh * sw * c) if channel_dim == 1 else (sh * sw * c, n)
        phases = self.buffers_.get("input", (*shape, hq, wq))
        lead_h, lead_w = (0, 0) if padded else (ph, pw)  # padding rows/columns not in x
        outer, inner = (n, c) if channel_dim == 1 else (1, c * n)  # planes: phase-major inside outer
        direct_kernel().split_phases(
            x.float().contiguous(), phases, outer, inner, sh, sw, lead_h, lead_w, True
        )
        return phases

    def _strided(self, x: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """A strided 1x1 convolution's input: every s-th row and column of ``x``, in a reused buffer."""
        (sh, sw), n, c = self.stride, x.shape[1 - channel_dim], self.in_channels
        shape = (n, c) if channel_dim == 1 else (c, n)
        strided = self.buffers_.get("input", (*shape, -(-x.shape[2] // sh), -(-x.shape[3] // sw)))
        direct_kernel().split_phases(x.float().contiguous(), strided, 1, n * c, sh, sw, 0, 0, False)
        return strided

    def fold(self, bn: nn.BatchNorm2d, relu: bool = False) -> DirectSparseConv2d:
        """Fold the eval-mode ``bn`` that follows (each output channel's weights scaled, its shift
        the bias; pruned weights stay absent) and, with ``relu``, the ReLU after it."""
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        shift = (bn.bias - bn.running_mean * scale).detach()
        self.values = (self.values * scale[self.row]).contiguous()
        old_bias = self.bias if self.bias is not None else torch.zeros(self.out_channels)
        self.bias = (old_bias * scale + shift).contiguous().float()
        self.relu = relu
        self._layouts.clear()
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
    and its BN). Between two sparse convs the first writes its output already zero-padded for the
    second; the last one adds the residual and applies the block's ReLU on the way out.

    A batch whose output planes are small runs channel-major (:data:`STACK_MAX_PLANE`): the block
    takes its input as ``[C, N, H, W]`` (free when it is the block before's output), and returns
    an NCHW view of its channel-major output. A stride-1 bottleneck of sparse convs on larger planes
    runs depth-first, a band of rows at a time (:data:`BAND_ROWS`); in a block with a downsample, the
    last conv and the downsample are one conv over both inputs where both are sparse 1x1 convs, and a
    strided bottleneck's first two convs run band by band too (:data:`STRIDED_BAND_ROWS`)."""

    def __init__(self, block: BasicBlock | Bottleneck, max_density: float) -> None:
        super().__init__()
        names = ["1", "2", "3"] if isinstance(block, Bottleneck) else ["1", "2"]
        self.stages = nn.ModuleList(
            _conv_bn(getattr(block, f"conv{k}"), getattr(block, f"bn{k}"), k != names[-1], max_density)
            for k in names
        )
        last = self.stages[-1]
        if isinstance(last, DirectSparseConv2d):
            last.relu = True  # after the residual sum, in the kernel
        down = block.downsample
        self.downsample = None if down is None else _conv_bn(down[0], down[1], False, max_density)
        convs = [getattr(block, f"conv{k}") for k in names]
        self.shrink = math.prod(c.stride[0] * c.stride[1] for c in convs)  # input pixels per output pixel
        self.buffers_ = BufferCache()
        self.banded = _bandable(self.stages)
        self.merged = _merged_conv(self.stages[-1], self.downsample)
        self.strided_front = self.merged is not None and _strided_front(self.stages)
        self.next_shrink: int | None = None  # the next block's shrink, where one follows (see _link_blocks)

    def _forward_strided_front(self, x: torch.Tensor) -> torch.Tensor:
        """A strided bottleneck a band of :data:`STRIDED_BAND_ROWS` output rows at a time: its first two
        convs, then its last conv and downsample as one conv over the middle conv's rows and the input
        at stride 2 beside them (see ``strided_front_bands`` in ``sparse_kernel.cpp``)."""
        x = x.float().contiguous()
        n, _, height, width = x.shape
        convs = [self.stages[0], self.stages[1], self.merged]
        out_h, out_w = convs[1].output_size(height, width)
        band = min(STRIDED_BAND_ROWS, out_h)
        layouts = [
            convs[0].layout(height, width),
            convs[1].layout(band + 1, (width + 3) // 2),
            convs[2].layout(band, out_w),
        ]
        out = self.buffers_.get("output", (n, convs[2].out_channels, out_h, out_w))
        direct_kernel().strided_front_bands(
            x,
            *_band_convs(convs, layouts),
            band,
            out,
        )
        return out

    def _merged_input(self, out: torch.Tensor, x: torch.Tensor, stacked: bool) -> torch.Tensor:
        """The last conv's input and the downsample's (``x`` at its stride) as one tensor, one
        after the other along the channels, in a reused buffer."""
        (sh, sw), dim = self.downsample.stride, 0 if stacked else 1
        strided = x[:, :, ::sh, ::sw]
        shape = list(out.shape)
        shape[dim] += strided.shape[dim]
        both = self.buffers_.get("merged_input", tuple(shape))
        torch.cat([out, strided], dim=dim, out=both)
        return both

    def _merged_input_stacked(self, x: torch.Tensor, middle_shape: tuple[int, ...]) -> torch.Tensor:
        """The merged conv's channel-major input buffer, ``[C_mid + C_in, N, H', W']``, with ``x``
        (channel-major) at the downsample's stride already in its last ``C_in`` channels: the
        middle conv then writes its output into the first ones (``into``), where the merged conv
        reads it; nothing is concatenated."""
        (sh, sw), c_in, n = self.downsample.stride, x.shape[0], x.shape[1]
        both = self.buffers_.get("merged_input", (middle_shape[0] + c_in, *middle_shape[1:]))
        strided = both[middle_shape[0] :]
        if strided.shape[2:] != (-(-x.shape[2] // sh), -(-x.shape[3] // sw)):
            raise ValueError("the middle conv's output and the downsample's differ in size")
        direct_kernel().split_phases(x.float().contiguous(), strided, 1, c_in * n, sh, sw, 0, 0, False)
        return both

    def _forward_bands(self, x: torch.Tensor, identity: torch.Tensor | None) -> torch.Tensor:
        """The whole bottleneck a band of :data:`BAND_ROWS` output rows at a time, in one kernel call
        (see ``bottleneck_bands`` in ``sparse_kernel.cpp``). Without ``identity``, the last conv is
        the merged one (last conv and downsample), reading each band's input rows beside the middle
        conv's output: the downsample's output never goes to memory and back as the residual."""
        x = x.float().contiguous()
        n, _, height, width = x.shape
        pad = self.stages[1].padding[0]
        band = min(BAND_ROWS, height)
        convs = [self.stages[0], self.stages[1], self.stages[2] if identity is not None else self.merged]
        # a 3x3 middle conv reads rows that start on a vector, by column shift (see
        # compute_tile_shifted_of in sparse_kernel.cpp)
        shifted = convs[1].kernel_size == (3, 3) and direct_kernel().shifted_available()
        lanes = int(direct_kernel().vector_lanes())
        row_stride = -(-(width + 2 * pad) // lanes) * lanes if shifted else width + 2 * pad
        layouts = [
            convs[0].layout(height, width),
            convs[1].layout(band + 2 * pad, row_stride, shifts=3 if shifted else 1),
            convs[2].layout(band, width),
        ]
        channels = convs[2].out_channels
        # the next block runs channel-major: written so, it takes a free view (no transposing copy)
        channel_major = self.next_shrink is not None and _runs_channel_major(x.shape, self.next_shrink)
        shape = (channels, n, height, width) if channel_major else (n, channels, height, width)
        out = self.buffers_.get("output", shape)
        direct_kernel().bottleneck_bands(
            x,
            *_band_convs(convs, layouts),
            pad,
            band,
            identity.float().contiguous() if identity is not None else _NO_BIAS,
            out,
            channel_major,
            identity is None,
            row_stride,
            shifted,
        )
        return out.transpose(0, 1) if channel_major else out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stacked = self._stacked(x)
        if stacked:  # channel-major: a view of the block before's output, or one copy
            x = _channel_major(x, self.buffers_)
        bands = self.banded and not stacked and x.shape[2] * x.shape[3] > STACK_MAX_PLANE
        # banded, the merged conv reads the band's input rows as they are: a downsample of stride 1
        carried = bands and self.merged is not None and self.downsample.stride == (1, 1)
        merged = self.merged is not None and (carried or not bands)
        identity = x if self.downsample is None or merged else _run(self.downsample, x, stacked)
        if bands:
            return self._forward_bands(x, None if carried else identity)
        if merged and self.strided_front and not stacked and x.shape[2] * x.shape[3] > 4 * STACK_MAX_PLANE:
            return self._forward_strided_front(x)
        out, padded, both = x, False, None
        for i, stage in enumerate(self.stages):
            last = i == len(self.stages) - 1
            if last and merged:  # the last conv and the downsample as one conv over both inputs
                both = both if both is not None else self._merged_input(out, x, stacked)
                out = self.merged(both, stacked=stacked)
                break
            if not isinstance(stage, DirectSparseConv2d):
                out = _run(stage, out if not padded else _unpad(out, self.stages[i - 1].padding_out), stacked)
                padded = False
                if last:
                    out = torch.relu_(out + identity).contiguous()
                continue
            following = None if last else self.stages[i + 1]
            pad = _padding_for(following)
            stage.padding_out = pad
            into = None
            if merged and stacked and i == len(self.stages) - 2:  # written where the merged conv reads
                ph, pw = stage.padding if padded else (0, 0)
                size = stage.output_size(out.shape[2] - 2 * ph, out.shape[3] - 2 * pw)
                both = self._merged_input_stacked(x, (stage.out_channels, out.shape[1], *size))
                into = both[: stage.out_channels]
            out = stage(
                out,
                out_pad=pad,
                residual=identity if last else None,
                padded=padded,
                stacked=stacked,
                into=into,
            )
            padded = pad > 0
        # NCHW to the caller: a view of the channel-major output, which the next block takes as it is
        return out.transpose(0, 1) if stacked else out

    def _stacked(self, x: torch.Tensor) -> bool:
        """Whether to run channel-major: a batch whose output planes are small (see
        :data:`STACK_MAX_PLANE`)."""
        return _runs_channel_major(x.shape, self.shrink)


def _runs_channel_major(shape: torch.Size | tuple[int, ...], shrink: int) -> bool:
    """Whether a block that shrinks its planes ``shrink`` times runs channel-major on an input of
    ``shape`` (NCHW): a batch whose output planes have at most :data:`STACK_MAX_PLANE` pixels."""
    return shape[0] > 1 and shape[2] * shape[3] // shrink <= STACK_MAX_PLANE


#: A block whose output planes have at most this many pixels runs channel-major (``[C, N, H, W]``):
#: each channel's plane holds the whole batch, so the kernel's tiles stay long (a 7x7 plane alone is
#: 49 outputs, fewer than one tile) and its loads aligned. Measured on ResNet-50's 1x1 convs at batch
#: 16 here: 1.4-2.8x faster at 14x14 and 7x7, equal at 28x28 (but layer2 as a whole 10% slower),
#: 1.4x slower at 56x56 (there every plane is a multiple of 4 kB apart, and one chunk's rows fall in
#: the same L1 sets; so are layer3's padded 3x3 inputs at batch 16, see docs/benchmarks.md).
STACK_MAX_PLANE = 14 * 14


#: Output rows per band of a bottleneck run depth-first (:meth:`FusedBlock._forward_bands`): a block
#: of NCHW planes larger than :data:`STACK_MAX_PLANE` (ResNet-50's layer1-2). Side by side on ResNet-50
#: at batch 16 (AMD EPYC, 2026-12-04): 4, 8 and 12 rows within 1.5 % of each other, 5-9 % faster than
#: layer after layer. At batch 1 layer3-4's small planes (14x14, 7x7) ran 2-8 % slower band by band.
BAND_ROWS = 8
#: Output rows per band of a strided bottleneck's first two convs (:meth:`FusedBlock._forward_strided_front`),
#: where its output planes are larger than :data:`STACK_MAX_PLANE` (ResNet-50's layer2.0 at a batch).
#: Side by side on that block at batch 16 (AMD EPYC, 2026-12-04): 36.1 → 33.1 ms at 90 % and 28.1 →
#: 23.4 ms at 95 % with 6 rows; 2-8 rows within 5 % of each other.
STRIDED_BAND_ROWS = 6


def _strided_front(stages: nn.ModuleList) -> bool:
    """Whether a bottleneck's first two convs run band by band with its input at stride 2 beside
    them: a sparse 1x1 conv (stride 1, no padding) and a sparse 3x3 conv of stride 2 and padding 1,
    no dilation, each followed by a ReLU."""
    if len(stages) != 3 or not all(isinstance(stage, DirectSparseConv2d) for stage in stages[:2]):
        return False
    first, middle = stages[0], stages[1]
    return (
        first._pointwise
        and first.stride == (1, 1)
        and first.dilation == middle.dilation == (1, 1)
        and middle.kernel_size == (3, 3)
        and middle.stride == (2, 2)
        and middle.padding == (1, 1)
        and first.relu
        and middle.relu
    )


def _bandable(stages: nn.ModuleList) -> bool:
    """Whether a block runs a band of rows at a time: a bottleneck of three sparse convs, 1x1, k x k
    (odd k, 'same' padding), 1x1, stride 1 and no dilation, each followed by a ReLU (the last after
    the residual sum)."""
    if len(stages) != 3 or not all(isinstance(stage, DirectSparseConv2d) for stage in stages):
        return False
    first, middle, last = stages
    (kh, kw), (ph, pw) = middle.kernel_size, middle.padding
    return (
        all(stage.stride == (1, 1) and stage.dilation == (1, 1) and stage.relu for stage in stages)
        and first.kernel_size == last.kernel_size == (1, 1)
        and first.padding == last.padding == (0, 0)
        and kh == kw
        and kh % 2 == 1
        and ph == pw == (kh - 1) // 2
    )


def _band_convs(convs: list[DirectSparseConv2d], layouts: list[KernelLayout]) -> tuple[list, ...]:
    """The per-conv arguments of the band kernels (``bottleneck_bands``, ``strided_front_bands``), in
    their order: row pointers, offsets, values, biases, chunk sizes, halos and largest offsets."""
    return (
        [layout.rowptr for layout in layouts],
        [layout.offsets for layout in layouts],
        [layout.values for layout in layouts],
        [conv.bias if conv.bias is not None else _NO_BIAS for conv in convs],
        [layout.chunk_planes for layout in layouts],
        [layout.halo for layout in layouts],
        [layout.max_offset for layout in layouts],
    )


def _merged_conv(last: nn.Module, downsample: nn.Module | None) -> DirectSparseConv2d | None:
    """A block's last conv and its downsample, both sparse 1x1 convs without padding (the last of
    stride 1), as one conv over their inputs concatenated along the channels (the weights side by
    side, the biases summed, the ReLU last): the downsample's output is never written and read back
    as the residual. None where they are not such convs."""
    convs = (last, downsample)
    if not all(isinstance(c, DirectSparseConv2d) and c._pointwise and c.dilation == (1, 1) for c in convs):
        return None
    if last.stride != (1, 1) or last.out_channels != downsample.out_channels:
        return None
    weight = torch.zeros(last.out_channels, last.in_channels + downsample.in_channels, 1, 1)
    weight[last.row, last.channel, 0, 0] = last.values
    weight[downsample.row, last.in_channels + downsample.channel, 0, 0] = downsample.values
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(weight)
        zero = torch.zeros(last.out_channels)
        conv.bias.copy_(
            (last.bias if last.bias is not None else zero)
            + (downsample.bias if downsample.bias is not None else zero)
        )
    merged = DirectSparseConv2d(conv)
    merged.relu = True
    return merged


def _run(stage: nn.Module, x: torch.Tensor, stacked: bool) -> torch.Tensor:
    """A stage on an NCHW or (``stacked``) channel-major input, its output in the same layout."""
    if isinstance(stage, DirectSparseConv2d):
        return stage(x, stacked=stacked)
    if not stacked:
        return stage(x)
    return stage(x.transpose(0, 1)).transpose(0, 1).contiguous()


def _channel_major(x: torch.Tensor, buffers: BufferCache) -> torch.Tensor:
    """``x`` (NCHW) as a contiguous ``[C, N, H, W]`` tensor: free when it is a view of one."""
    transposed = x.transpose(0, 1)
    if transposed.is_contiguous():
        return transposed
    copy = buffers.get("channel_major", tuple(transposed.shape))
    copy.copy_(transposed)
    return copy


def _padding_for(conv: nn.Module | None) -> int:
    """The zero border to write around an output read next by ``conv``: its padding if it is a
    stride-1 sparse conv with equal padding on each side, else 0 (a strided conv copies its input
    into stride phases anyway, padding them on the way; an output with no border can be stored from
    the registers straight). Writing the phases straight from the kernel instead was measured no
    faster here (layer2's first block 59.4 vs 55.4 ms, ResNet-50 at batch 16)."""
    if (
        isinstance(conv, DirectSparseConv2d)
        and conv.padding[0] == conv.padding[1]
        and conv._phase_stride == (1, 1)
    ):
        return conv.padding[0]
    return 0


def _unpad(x: torch.Tensor, pad: int) -> torch.Tensor:
    return x[:, :, pad:-pad, pad:-pad] if pad else x


def _conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool, max_density: float) -> nn.Module:
    if conv.groups == 1 and float((conv.weight != 0).float().mean()) <= max_density:
        return DirectSparseConv2d(conv).fold(bn, relu)
    return nn.Sequential(conv, bn, *([nn.ReLU()] if relu else []))


class FusedStem(nn.Module):
    """A ResNet stem (conv, BN, ReLU, max pool) for inference: the BN folded into the conv, which
    stays dense (the stem is never pruned), computed channels-last and handed on in NCHW. The conv is
    the direct kernel's dense channels-last one (``dense_conv_nhwc``, the ReLU fused) where its output
    channels fill whole vector registers and it is neither dilated nor unevenly strided or padded,
    else PyTorch's; with a plain max pool, conv and pool run in one pass (``dense_conv_pool``).
    Measured here at batch 16, 224 px (2026-12-03): the conv 16 ms against PyTorch's 38 ms; the whole
    stem 21 ms in one pass, 24 ms as conv then pool (ONNX Runtime's whole stem: 16-19 ms). With AVX2
    the 64 channels are 8 vectors, taken 2 at a time: the whole stem 27 ms against PyTorch's 82 ms
    (an AMD EPYC Zen 3, 2026-12-04)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, pool: nn.Module) -> None:
        super().__init__()
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        shift = (bn.bias - bn.running_mean * scale).detach()
        weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last), persistent=False)
        self.register_buffer("bias", bias.float().contiguous(), persistent=False)
        # [KH, KW, Cin, Cout]: what the kernel's dense conv reads
        self.register_buffer("weight_hwio", weight.float().permute(2, 3, 1, 0).contiguous(), persistent=False)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.pool = pool
        self.buffers_ = BufferCache()
        self.direct = self._direct_fits(conv)
        self.plain_pool = _plain_max_pool(pool)  # (kernel, stride, padding) for the kernel's pool

    def _direct_fits(self, conv: nn.Conv2d) -> bool:
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str):
            return False
        if conv.stride[0] != conv.stride[1] or conv.padding[0] != conv.padding[1] or not direct_available():
            return False
        lanes = int(direct_kernel().vector_lanes())
        return conv.out_channels % lanes == 0 and conv.out_channels >= lanes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.direct:
            x = x.contiguous(memory_format=torch.channels_last)
            y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation).relu_()
            return self.pool(y).contiguous()
        n, c, height, width = x.shape
        pad, stride = self.padding[0], self.stride[0]
        kh, kw = self.weight_hwio.shape[:2]
        padded = self.buffers_.get("input", (n, height + 2 * pad, width + 2 * pad, c))  # borders stay 0
        padded[:, pad : pad + height, pad : pad + width, :].copy_(x.permute(0, 2, 3, 1))
        out_h, out_w = (height + 2 * pad - kh) // stride + 1, (width + 2 * pad - kw) // stride + 1
        channels = self.weight_hwio.shape[3]
        if self.plain_pool is None:
            out = self.buffers_.get("output", (n, out_h, out_w, channels))
            direct_kernel().dense_conv_nhwc(padded, self.weight_hwio, self.bias, stride, True, out)
            return self.pool(out.permute(0, 3, 1, 2)).contiguous()
        kernel, pool_stride, pool_pad = self.plain_pool
        pooled_h = (out_h + 2 * pool_pad - kernel) // pool_stride + 1
        pooled_w = (out_w + 2 * pool_pad - kernel) // pool_stride + 1
        pooled = self.buffers_.get("pooled", (n, channels, pooled_h, pooled_w))  # reused, as every layer's
        direct_kernel().dense_conv_pool(
            padded, self.weight_hwio, self.bias, stride, out_h, out_w, kernel, pool_stride, pool_pad, pooled
        )
        return pooled


def _plain_max_pool(pool: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a square max pool without dilation or ceil mode whose padding is
    under half its kernel (every window holds a real value), else None."""
    if not isinstance(pool, nn.MaxPool2d) or pool.ceil_mode or pool.return_indices:
        return None
    values = [pool.kernel_size, pool.stride, pool.padding, pool.dilation]
    pairs = [v if isinstance(v, tuple) else (v, v) for v in values]
    if any(a != b for a, b in pairs) or pairs[3][0] != 1:
        return None
    kernel, stride, padding = pairs[0][0], pairs[1][0], pairs[2][0]
    return (kernel, stride, padding) if 2 * padding < kernel else None


def _fuse_stem(model: nn.Module) -> None:
    """A torchvision ResNet's conv1, bn1, relu and maxpool become one :class:`FusedStem`."""
    parts = [getattr(model, name, None) for name in ("conv1", "bn1", "relu", "maxpool")]
    conv, bn, relu, pool = parts
    if not (
        isinstance(conv, nn.Conv2d)
        and conv.groups == 1
        and isinstance(bn, nn.BatchNorm2d)
        and isinstance(relu, nn.ReLU)
        and isinstance(pool, nn.MaxPool2d | nn.Identity)
    ):
        return
    model.conv1 = FusedStem(conv, bn, pool)
    model.bn1, model.relu, model.maxpool = nn.Identity(), nn.Identity(), nn.Identity()


class SparseInference(nn.Module):
    """A sparsified model: its layers reuse their output tensors from call to call, so what the
    model returns is copied out (a classifier's logits: a few kB)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: object, **kwargs: object) -> object:
        return _copied(self.model(*args, **kwargs))


def _copied(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_copied(v) for v in value)
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value


#: Convs with at most this share of weights kept are computed sparsely by :func:`sparsify`. The
#: direct kernel beat PyTorch's dense conv up to about 0.7 kept (ResNet-50's layer1 at batch 16
#: here; PyTorch also pays a fresh output tensor per call, the kernel reuses its own).
MAX_DENSITY = 0.8


def sparsify(model: nn.Module, max_density: float = MAX_DENSITY, engine: str = "direct") -> nn.Module:
    """A copy of ``model`` (eval mode) whose convolutions with at most ``max_density`` non-zero
    weights are computed sparsely; denser ones (the stem, an unpruned layer) stay dense.

    ``engine="direct"``: a torchvision ResNet's stem becomes a :class:`FusedStem`, every block a
    :class:`FusedBlock` (sparse convs with their BN, ReLU and residual sum folded into the kernel),
    any other such conv a
    :class:`DirectSparseConv2d`, the whole wrapped in :class:`SparseInference`; ``engine="csr"``:
    each conv a :class:`SparseConv2d`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    sparse = copy.deepcopy(model).eval()
    layer = DirectSparseConv2d if engine == "direct" else SparseConv2d
    with torch.no_grad():
        if engine == "direct":
            _fuse_stem(sparse)
        for module in list(sparse.modules()):
            for child_name, child in list(module.named_children()):
                if engine == "direct" and isinstance(child, BasicBlock | Bottleneck):
                    setattr(module, child_name, FusedBlock(child, max_density))
                    continue
                convertible = isinstance(child, nn.Conv2d) and child.groups == 1
                if convertible and float((child.weight != 0).float().mean()) <= max_density:
                    setattr(module, child_name, layer(child))
        if engine == "direct":
            _link_blocks(sparse)
    return SparseInference(sparse) if engine == "direct" else sparse


def _link_blocks(model: nn.Module) -> None:
    """Tell each :class:`FusedBlock` how much the block after it shrinks its planes, so that a band
    block whose next block runs channel-major writes its output so (see ``_forward_bands``). The
    blocks are taken in the order the model registers them, which is the order a torchvision ResNet
    runs them; where a model runs them otherwise, only the speed of the hand-over changes, never an
    output (a block hands over an NCHW view either way)."""
    blocks = [module for module in model.modules() if isinstance(module, FusedBlock)]
    for block, following in zip(blocks, blocks[1:], strict=False):
        block.next_shrink = following.shrink
