"""Checks a study passes before its first run: dataset, objective and option names of every recipe,
and whether each run's images fit θ_p's stem (what cvlth adapts, or why it cannot).
"""

from __future__ import annotations

import typing
from typing import Any

from cvlth.config import DataRef, ObjectiveRef
from cvlth.data.cache import SUBSET_OPTIONS, streams
from cvlth.data.registry import DATASETS, get_spec
from cvlth.data.samples import SampleSplits
from cvlth.errors import ConfigError
from cvlth.objectives.registry import OBJECTIVES, objective_option_defaults
from cvlth.objectives.views import CONTRASTIVE_VIEWS, crop_scale
from cvlth.study.config import StudyConfig
from cvlth.zoo.files import zoo_head_shapes


def check_study(study: StudyConfig) -> None:
    """Dataset and objective names and option names of every recipe of the study (ConfigError)."""
    for where, data, objective in _study_recipes(study):
        if data is not None:
            check_data_ref(data, f"{where}.data")
        if objective is not None:
            check_objective_ref(objective, f"{where}.objective")
        if data is not None and objective is not None:
            check_contrastive_streaming(data, objective, where)
    check_zoo_heads(study)


#: Where each objective's head sizes show in a world checkpoint's heads file: option -> (tensor, axis).
_HEAD_SIZES = {
    "moco": {"queue_size": ("queue.keys", 0), "dim": ("queue.keys", 1)},
    "simclr": {"projection_dim": ("projection.2.weight", 0)},
}


def check_zoo_heads(study: StudyConfig) -> None:
    """A world checkpoint's heads (projection, MoCo's queue) must fit the upstream IMP objective that
    loads them: refused here, at ``--plan``, rather than when the IMP run starts."""
    for name, entry in study.pretrainings.items():
        shapes = zoo_head_shapes(entry.import_path) if entry.import_path is not None else {}
        if not shapes:
            continue
        for finder in study.finders:
            if finder.method != "imp" or finder.stage != "upstream":
                continue
            if finder.pretrainings is not None and name not in finder.pretrainings:
                continue
            objective = finder.objective or entry.upstream_recipe.objective
            where = (
                f"finders.{finder.name}.objective"
                if finder.objective
                else f"pretrainings.{name}.upstream.objective"
            )
            options = {**objective_option_defaults(objective.name), **objective.options}
            for option, (tensor, axis) in _HEAD_SIZES.get(objective.name, {}).items():
                if tensor in shapes and options.get(option) != shapes[tensor][axis]:
                    raise ConfigError(
                        f"{where}: {objective.name} {option} {options.get(option)}, but {entry.import_path}'s "
                        f"heads were trained with {option} {shapes[tensor][axis]} (they are loaded for upstream IMP)",
                        hint=f"set `{option}: {shapes[tensor][axis]}` in {where}.options",
                    )


def check_contrastive_streaming(data: DataRef, objective: ObjectiveRef, where: str) -> None:
    """SimCLR / MoCo on a streamed image folder draw both views from the full image in the data
    loader: a centre-cropped training set (``train_crop: center``) cannot give them (checked here,
    before any run, as well as when the run starts)."""
    if objective.name not in CONTRASTIVE_VIEWS or not streams(data.name, data.options):
        return
    crop_scale(objective)  # a bad range fails now
    if data.options.get("train_crop") == "center":
        raise ConfigError(
            f"{where}: objective {objective.name!r} on streamed {data.name} draws its two views from the "
            "full image, but `train_crop: center` centre-crops the training images first",
            hint=f"remove `train_crop: center` from {where}.data.options",
        )


def _study_recipes(study: StudyConfig) -> list[tuple[str, DataRef | None, ObjectiveRef | None]]:
    recipes: list[tuple[str, DataRef | None, ObjectiveRef | None]] = []
    for name, entry in study.pretrainings.items():
        for part in ("recipe", "upstream"):
            recipe = getattr(entry, part)
            if recipe is not None:
                recipes.append((f"pretrainings.{name}.{part}", recipe.data, recipe.objective))
    recipes += [(f"tasks.{name}", recipe.data, recipe.objective) for name, recipe in study.tasks.items()]
    recipes += [(f"finders.{f.name}", f.data, f.objective) for f in study.finders]
    return recipes


def data_options(name: str) -> list[str]:
    """The options dataset ``name`` takes in a study: its loader's, plus ``max_train`` / ``max_val`` /
    ``max_test`` (deterministic subsets) for classification datasets."""
    spec = get_spec(name)
    try:
        returns = typing.get_type_hints(spec.load).get("return")
    except (NameError, TypeError):
        returns = None
    per_image = returns is SampleSplits  # detection / segmentation samples: no subset options
    return list(spec.options) + ([] if per_image else list(SUBSET_OPTIONS))


def check_data_ref(ref: DataRef, where: str) -> None:
    if ref.name not in DATASETS:
        raise ConfigError(
            f"{where}.name: unknown dataset {ref.name!r}",
            hint=f"choose one of: {', '.join(DATASETS)} (`cvlth datasets` lists them)",
        )
    _check_options(where, f"dataset {ref.name}", ref.options, data_options(ref.name))


def check_objective_ref(ref: ObjectiveRef, where: str) -> None:
    if ref.name not in OBJECTIVES:
        raise ConfigError(
            f"{where}.name: unknown objective {ref.name!r}", hint=f"choose one of: {', '.join(OBJECTIVES)}"
        )
    _check_options(where, f"objective {ref.name}", ref.options, list(objective_option_defaults(ref.name)))


def _check_options(where: str, what: str, given: dict[str, Any], allowed: list[str]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}.options: {what} has no option {', '.join(map(repr, unknown))}",
            hint=f"its options are: {', '.join(allowed) or 'none'}",
        )
