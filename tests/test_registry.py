"""One registration style: every pluggable kind of thing is a ``cvlth.registry.Registry``."""

import pytest

from cvlth.errors import ConfigError, CvlthError
from cvlth.registry import Registry


def test_register_add_and_lookup() -> None:
    things: Registry[object] = Registry("widget", ConfigError)

    @things.register("b")
    def b() -> int:
        return 2

    assert b() == 2  # the decorator returns the function unchanged
    things.add("a", 1)
    assert list(things) == ["b", "a"] and things["a"] == 1 and things.lookup("b") is b
    assert "a" in things and "c" not in things and things.get("c") is None and len(things) == 2


def test_unknown_name_is_the_users_error_listing_the_choices() -> None:
    things: Registry[int] = Registry("widget", ConfigError, list_hint=" (see the docs)")
    things.add("x", 1)
    with pytest.raises(ConfigError) as error:
        things.lookup("y")
    assert (
        "unknown widget 'y'" in error.value.message and error.value.hint == "choose one of: x (see the docs)"
    )


def test_a_name_registered_twice_is_a_programming_error() -> None:
    things: Registry[int] = Registry("widget")
    things.add("x", 1)
    with pytest.raises(ValueError, match="registered twice"):
        things.add("x", 2)


def test_every_registry_of_the_package_is_a_registry() -> None:
    from cvlth.data.registry import DATASETS
    from cvlth.models.backbones import ARCHITECTURES
    from cvlth.models.task_models import TASK_MODELS
    from cvlth.objectives.registry import OBJECTIVES
    from cvlth.pruning.strategies import STRATEGIES
    from cvlth.runs.execute import RUN_EXECUTORS
    from cvlth.runs.kinds import RUN_KINDS
    from cvlth.study.runner import STUDY_EXECUTORS

    registries = {
        "datasets": (DATASETS, {"cifar10", "imagefolder", "world_mnist", "voc_segmentation"}),
        "architectures": (ARCHITECTURES, {"resnet18", "resnet50", "resnet152"}),
        "strategies": (STRATEGIES, {"magnitude", "layerwise", "random"}),
        "run kinds": (RUN_KINDS, {"pretrain", "import", "imp", "baseline", "transfer"}),
        "run executors": (RUN_EXECUTORS, {"pretrain", "import", "imp", "baseline", "transfer"}),
        "objectives": (OBJECTIVES, {"supervised", "simclr", "moco", "detection", "segmentation"}),
        "task models": (TASK_MODELS, {"detection", "segmentation"}),
        "study executors": (STUDY_EXECUTORS, {"local", "ray"}),
    }
    for name, (registry, expected) in registries.items():
        assert isinstance(registry, Registry), name
        assert expected <= set(registry), name
    # every run kind a config can name has the function that computes it
    assert set(RUN_KINDS) - {"train"} == set(RUN_EXECUTORS)
    with pytest.raises(CvlthError, match="unknown pruning method"):
        STRATEGIES.lookup("nope")
