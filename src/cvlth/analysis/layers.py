"""Layer names in natural order: ``layer3.2`` before ``layer3.10`` (ResNet-101/152 have 23 and 36
blocks in ``layer3``), where plain string order would interleave them. Every listing and figure of
layers in the analyses uses this order."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TypeVar

_NUMBER = re.compile(r"(\d+)")
V = TypeVar("V")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: digit runs compare as numbers, the rest as text (``layer3.10`` > ``layer3.2``)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in _NUMBER.split(name) if part)


def natural_sorted(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


def in_natural_order(values: Mapping[str, V]) -> dict[str, V]:
    """The same mapping, keys in natural order."""
    return {name: values[name] for name in natural_sorted(values)}
