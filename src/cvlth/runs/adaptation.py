"""Whether a run's images fit θ_p's stem, and what cvlth changes in θ_p so that they do: checked for
every run before a study starts (:mod:`cvlth.study.plan`) and applied, then recorded, when the run
builds its model (:mod:`cvlth.runs.training`)."""

from __future__ import annotations

from cvlth.config import DataRef, RunConfig
from cvlth.data.cache import loader_options
from cvlth.data.registry import load_dataset
from cvlth.errors import ConfigError, CvlthError
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.runs.kinds import ImportRun, training_data
from cvlth.zoo.files import checkpoint_file


def needs_same_channels(run: RunConfig) -> bool:
    """Whether ``run`` feeds its images to θ_p's own stem (so their channels must match), rather than
    to a stem rebuilt for the task (classification with ``adapt.small_images`` and no ``keep_stem``)."""
    if training_data(run) is None:
        return False
    adapt = run.classifier_adapt()  # None: θ_p's stem as it is (pre-training, upstream IMP, dense tasks)
    return adapt is None or not adapt.small_images or adapt.keep_stem


def input_adaptations(run: RunConfig, theta_channels: int, image_channels: int) -> list[str]:
    """What cvlth changes in θ_p so that ``run`` can feed it its training images, one sentence each
    (for the run's log and result). ``theta_channels``: the input channels of θ_p's stem (the study's
    backbone for a pre-training); ``image_channels``: those of the run's training data.

    Raises ConfigError when the images cannot be fed to θ_p at all (its own stem with another
    channel count: dense tasks, ``small_images: false``, ``keep_stem: true``, upstream IMP).
    """
    ref = training_data(run)
    if ref is None:
        return []
    adapt = run.classifier_adapt()  # None: θ_p's stem as it is (pre-training, upstream IMP, dense tasks)
    if needs_same_channels(run):
        if theta_channels != image_channels:
            raise ConfigError(
                f"{run.kind} run on {ref.name}: θ_p's stem takes {theta_channels}-channel images, {ref.name} "
                f"has {image_channels}-channel images",
                hint="use a θ_p (or backbone.in_channels) that fits the data; classification tasks can "
                "instead rebuild the stem with adapt: {small_images: true, keep_stem: false}",
            )
        return ["max-pool removed (adapt.small_images)"] if adapt is not None and adapt.small_images else []
    adaptations = ["stem conv re-initialised as a 3x3 stride-1 conv, max-pool removed (adapt.small_images)"]
    if theta_channels != image_channels:
        adaptations.append(
            f"stem built for {image_channels} input channels ({ref.name}) instead of θ_p's {theta_channels}"
        )
    return adaptations


def checkpoint_channels(run: ImportRun) -> int:
    """The input channels of an imported θ_p, once it is known to be a complete ResNet cvlth builds."""
    imported = import_checkpoint(checkpoint_file(run.path), source=run.source)
    if imported.spec is None:
        raise ConfigError(
            f"{run.path}: {imported.report.architecture.description} is not a ResNet cvlth can build",
            hint="import a torchvision-style ResNet (resnet18/34/50/101/152)",
        )
    incomplete = imported.report.incomplete()
    if incomplete is not None:  # would fail only at the first run that loads it
        raise ConfigError(
            f"{run.path}: an incomplete {imported.report.architecture.description}: {incomplete}",
            hint=f"`cvlth inspect {run.path}` lists them; import a complete checkpoint",
        )
    return imported.spec.in_channels


def image_channels_of(ref: DataRef) -> int | None:
    try:
        return int(load_dataset(ref.name, ref.root, **loader_options(ref.options)).image_shape[0])
    except CvlthError:  # not present here: checked when the run loads it
        return None
