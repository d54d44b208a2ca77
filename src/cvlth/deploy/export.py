"""``cvlth export``: a ticket as an ONNX file, checked against PyTorch on random inputs.

The exported graph is the classifier in eval mode (BN folded by the exporter where it can) with a
dynamic batch axis; its pruned weights are exactly zero, as in PyTorch. The check runs the file with
ONNX Runtime (when installed) on random inputs and reports the largest absolute difference from
PyTorch's outputs.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cvlth.atomic import atomic_path
from cvlth.errors import CvlthError

OPSET = 17


@dataclass(frozen=True)
class ExportCheck:
    path: Path
    max_abs_difference: float | None  # None: ONNX Runtime is not installed, nothing was compared
    zero_weights: int  # weights exactly zero in the exported initializers' source (the model's)


def export_onnx(
    model: nn.Module, out: str | os.PathLike[str], image_shape: tuple[int, int, int]
) -> ExportCheck:
    """Write ``model`` (eval mode, input ``[N, *image_shape]``) to ``out`` as ONNX and compare it with
    PyTorch on a random batch of 2 (when ONNX Runtime is installed)."""
    try:
        import onnx  # noqa: F401  (torch's exporter writes through it)
    except ImportError:
        raise CvlthError(
            "exporting to ONNX needs the onnx package", hint="pip install 'cvlth[deploy]' (onnx, onnxruntime)"
        ) from None
    model = model.eval()
    example = torch.randn(1, *image_shape, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    except Exception as error:  # the exporter's own errors name the operator it cannot export
        raise CvlthError(
            f"could not export the model to ONNX: {type(error).__name__}: {str(error).splitlines()[0]}",
            hint="cvlth exports classifier backbones; detection and segmentation models are not exported",
        ) from error
    path = Path(out)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    zeros = sum(int((p == 0).sum()) for p in model.parameters() if p.ndim > 1)
    return ExportCheck(path, compare_with_torch(model, path, image_shape), zeros)


def compare_with_torch(model: nn.Module, path: Path, image_shape: tuple[int, int, int]) -> float | None:
    """Largest |ONNX Runtime - PyTorch| over the outputs of a random batch of 2; None without ONNX Runtime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    images = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        torch_out = model(images)
    return float((torch.from_numpy(onnx_out) - torch_out).abs().max())
