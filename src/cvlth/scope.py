"""Which weights are prunable, and under which canonical name.

The prunable set of a ResNet backbone is every Conv2d weight except the stem conv (``conv1``):
the 3x3/1x1 convs of every block and the 1x1 downsample convs. BN, biases, ``fc`` and every task
head (projection, detection, segmentation) are never pruned.

Names are canonical torchvision names (``layer3.1.conv2.weight``). Models and checkpoints wrap the
backbone under prefixes; this module is the one place that maps them back:

===================  ==========================================
prefix               where it comes from
===================  ==========================================
``module.``          DataParallel / DistributedDataParallel
``encoder_q.``       MoCo query encoder
``encoder_k.``       MoCo key encoder (shares the query's mask)
``backbone.body.``   torchvision detection (Faster R-CNN + FPN)
``backbone.``        torchvision segmentation (DeepLabV3, FCN)
``body.``            a bare torchvision FPN backbone (``BackboneWithFPN``)
``encoder.``         cvlth's SimCLR / classifier wrappers
===================  ==========================================
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

# Order matters: longer prefixes first, and "module." may wrap any of the others.
WRAPPER_PREFIXES: tuple[str, ...] = (
    "module.",
    "encoder_q.",
    "encoder_k.",
    "backbone.body.",
    "backbone.",
    "body.",
    "encoder.",
)

STEM_NAME = "conv1.weight"
_BLOCK_CONV = re.compile(r"^layer\d+\.\d+\.(conv\d+|downsample\.0)\.weight$")


def strip_wrappers(name: str) -> str:
    """Remove every known wrapper prefix from a parameter name (repeatedly, in any nesting)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def wrapper_of(name: str) -> str:
    """The wrapper prefix part of ``name`` (``""`` for a bare torchvision name)."""
    canonical = strip_wrappers(name)
    return name[: len(name) - len(canonical)]


@dataclass(frozen=True)
class Scope:
    """Rules that decide which canonical conv weights are prunable.

    ``include_stem`` adds ``conv1.weight``; ``exclude`` holds fnmatch patterns on canonical names
    (e.g. ``"layer4.*"`` or ``"*.downsample.0.weight"``) that are never pruned.
    """

    include_stem: bool = False
    exclude: tuple[str, ...] = field(default_factory=tuple)

    def is_prunable(self, canonical: str) -> bool:
        selected = self.include_stem if canonical == STEM_NAME else bool(_BLOCK_CONV.match(canonical))
        return selected and not any(fnmatch.fnmatchcase(canonical, p) for p in self.exclude)


DEFAULT_SCOPE = Scope()


@dataclass(frozen=True)
class PrunableParameter:
    canonical: str  # canonical torchvision name, the mask key
    name: str  # full name inside the model (with wrappers)
    parameter: nn.Parameter


def iter_prunable(model: nn.Module, scope: Scope = DEFAULT_SCOPE) -> Iterator[PrunableParameter]:
    """Every prunable conv weight of ``model``, including duplicates under different wrappers.

    A MoCo model yields each canonical name twice (``encoder_q.`` and ``encoder_k.``): the mask
    is enforced on both. Use :func:`prunable_parameters` when exactly one tensor per name is needed.
    """
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        name = f"{module_name}.weight" if module_name else "weight"
        canonical = strip_wrappers(name)
        if scope.is_prunable(canonical):
            yield PrunableParameter(canonical, name, module.weight)


def prunable_parameters(
    model: nn.Module, scope: Scope = DEFAULT_SCOPE, wrapper: str | None = None
) -> dict[str, nn.Parameter]:
    """Canonical name -> parameter, one per name.

    When the model holds several copies of the backbone (MoCo's two encoders), ``wrapper`` picks
    one (e.g. ``"encoder_q."``); without it, the first copy in module order wins only if all
    copies share one wrapper, otherwise the ambiguity is an error.
    """
    found: dict[str, nn.Parameter] = {}
    wrappers_seen: dict[str, set[str]] = {}
    for item in iter_prunable(model, scope):
        prefix = wrapper_of(item.name)
        if wrapper is not None and not prefix.endswith(wrapper) and prefix != wrapper:
            continue
        wrappers_seen.setdefault(item.canonical, set()).add(prefix)
        found.setdefault(item.canonical, item.parameter)
    ambiguous = sorted(name for name, seen in wrappers_seen.items() if len(seen) > 1)
    if ambiguous:
        prefixes = sorted(set().union(*(wrappers_seen[n] for n in ambiguous)))
        raise ValueError(
            f"{len(ambiguous)} prunable weights occur under several wrappers {prefixes} "
            f"(e.g. {ambiguous[0]}); pass wrapper= to choose one (MoCo: 'encoder_q.')"
        )
    return found


def prunable_state(
    state_dict: Mapping[str, torch.Tensor], scope: Scope = DEFAULT_SCOPE
) -> dict[str, torch.Tensor]:
    """Canonical name -> tensor for the prunable entries of a (possibly wrapped) state_dict.

    Only 4-d tensors whose canonical name is a block conv (or the stem, if included) count.
    Duplicates under different wrappers (a full MoCo checkpoint) are an error: import the
    checkpoint first (``cvlth.models.import_checkpoint``), which keeps ``encoder_q`` only.
    """
    found: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
            continue
        canonical = strip_wrappers(key)
        if not scope.is_prunable(canonical):
            continue
        if canonical in found:
            raise ValueError(
                f"state_dict holds {canonical} twice ({origin[canonical]!r} and {key!r}); "
                "import it with cvlth.models.import_checkpoint first"
            )
        found[canonical] = tensor
        origin[canonical] = key
    return found


V = TypeVar("V")
_NUMBER = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key: digit runs compare as numbers, the rest as text (``layer3.10`` > ``layer3.2``)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in _NUMBER.split(name) if part)


def natural_sorted(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


def in_natural_order(values: Mapping[str, V]) -> dict[str, V]:
    """The same mapping, keys in natural order."""
    return {name: values[name] for name in natural_sorted(values)}
