"""Datasets as a study uses them: the loader's options plus deterministic subsets, loaded once per process.

``max_train`` / ``max_val`` / ``max_test`` keep the first N images of a fixed permutation of each split
of a classification dataset; they are part of the dataset's definition (and so of a run's identity),
not options of its loader.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import torch

from cvlth.data.classification import DatasetSplits
from cvlth.data.registry import DATASETS, load_dataset
from cvlth.data.samples import SampleSplits

SUBSET_OPTIONS: tuple[str, ...] = ("max_train", "max_val", "max_test")
_SUBSET_SEED = 1234

AnySplits = DatasetSplits | SampleSplits


def option_defaults(name: str) -> dict[str, Any]:
    """The default value of each option of dataset ``name``, with the subset options (None: all
    images); empty for an unknown name."""
    spec = DATASETS.get(name)
    if spec is None:
        return {}
    return {**spec.option_defaults(), **dict.fromkeys(SUBSET_OPTIONS)}


def former_defaults(name: str) -> dict[str, Any]:
    """The former default of each option of dataset ``name`` whose default changed."""
    spec = DATASETS.get(name)
    return dict(spec.former_defaults) if spec is not None else {}


def in_former_form(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every option whose default changed (``streaming`` of imagefolder and visda2017)
    written as before the change: present with its effective value when that differs from the former
    default, absent otherwise. A run's identity and a cost measurement's work kind read options in
    this form, so ``streaming: true`` and the new default are one run, as before, and ``streaming:
    false`` is the run an omitted ``streaming`` named before."""
    spec = DATASETS.get(name)
    if spec is None or not spec.former_defaults:
        return dict(options)
    defaults = spec.option_defaults()
    written = dict(options)
    for key, former in spec.former_defaults.items():
        effective = written.pop(key, defaults[key])
        if effective != former:
            written[key] = effective
    return written


def streams(name: str, options: dict[str, Any]) -> bool:
    """Whether dataset ``name`` with ``options`` streams its images from their files."""
    spec = DATASETS.get(name)
    if spec is None or "streaming" not in spec.options:
        return False
    return bool(options.get("streaming", spec.option_defaults()["streaming"]))


def loader_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the subset options: what the dataset's loader takes."""
    return {k: v for k, v in options.items() if k not in SUBSET_OPTIONS}


def limit(splits: DatasetSplits, options: dict[str, Any]) -> DatasetSplits:
    """Deterministic subsets (``max_train`` etc.): the first N of a fixed permutation of each split."""
    limited = {}
    for split in ("train", "val", "test"):
        images = splits.split(split)
        size = options.get(f"max_{split}")
        if size is not None and int(size) < len(images):
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(_SUBSET_SEED))
            images = images.subset(order[: int(size)])
        limited[split] = images
    return replace(splits, **limited)


class DatasetCache:
    """Datasets loaded in this process, by (name, root, options): every run of a study shares them."""

    def __init__(self) -> None:
        self._loaded: dict[str, AnySplits] = {}

    def get(self, name: str, root: str | None = None, options: dict[str, Any] | None = None) -> AnySplits:
        options = options or {}
        key = json.dumps([name, root, options], sort_keys=True, default=str)
        if key not in self._loaded:
            splits = load_dataset(name, root, **loader_options(options))
            self._loaded[key] = limit(splits, options) if isinstance(splits, DatasetSplits) else splits
        return self._loaded[key]
