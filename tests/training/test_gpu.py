"""On a CUDA machine: mixed-precision masked training, streamed batches in pinned memory, a short
study. Skipped where ``torch.cuda.is_available()`` is false (these were written without a GPU)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from training.test_precision import train_tiny  # tests/ is on sys.path: its folders are namespace packages

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_masked_training_on_cuda(precision: str, dtype: torch.dtype) -> None:
    result, dtypes, pruned_nonzero, weights = train_tiny(precision, device="cuda")
    assert dtypes == {dtype}
    assert pruned_nonzero == [0] * 12  # pruned weights exactly zero after every step
    assert not torch.equal(weights[0], weights[-1])
    assert torch.isfinite(torch.tensor(result["final"]["val"]["loss"]))


def test_streamed_batches_are_pinned_for_the_copy(tmp_path) -> None:
    from cvlth.data.registry import load_dataset
    from data.test_streaming import write_tree

    test = load_dataset("imagefolder", write_tree(tmp_path, {"train": 2, "val": 2}), streaming=True).test
    images, labels = next(iter(replace(test, workers=2).batches(4, shuffle=False).epoch_batches(0)))
    assert images.is_pinned() and labels.is_pinned()


@pytest.mark.slow
def test_smoke_study_on_cuda(tmp_path) -> None:
    from cvlth.store import Store
    from cvlth.study.config import load_study
    from cvlth.study.runner import run_study

    outcome = run_study(load_study("smoke"), Store(tmp_path), device="cuda", quiet=True, log=lambda _: None)
    assert outcome.computed == outcome.runs > 0 and outcome.matching
