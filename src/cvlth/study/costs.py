"""The compute time a study's remaining runs take, from per-image costs measured on a device.

A run's time is, for each of its trainings (an IMP run trains once per round):

    images trained per epoch x epochs x seconds per training image
    + (val + test images) x evaluations x seconds per evaluation image

Evaluation is counted as val and test at every evaluation: an upper bound, since the loop
evaluates test only when validation improves (exact for a split without val). Importing a
checkpoint and computing OMP/random masks are not counted (seconds, no training).

The seconds per image depend on the run's *work kind* (:func:`work_kind`: backbone as built,
dataset and its image options, objective, dense model options, batch size, precision,
channels_last), not on its seed, level, mask or learning rate. ``cvlth costs measure``
measures every work kind of a study on a device and stores the result in a measurement file
(:mod:`cvlth.study.cost_files`); :func:`estimate_cost` multiplies. Nothing is guessed: a kind
with no measurement, or a dataset whose size is not known, is reported and left out of the sum.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from cvlth.config import DataRef, RunConfig
from cvlth.data.cache import in_former_form
from cvlth.errors import CvlthError
from cvlth.runs.kinds import BackboneConfig
from cvlth.store import Store
from cvlth.study.cost_files import BENCHMARK, DEVICE_TYPES, Choice, Measurements, device_type
from cvlth.study.plan import PlannedRun

#: Dataset options that change how many images there are, or which, but not what one costs.
SIZE_ONLY_OPTIONS = frozenset(
    {"max_train", "max_val", "max_test", "seed", "val_size", "val_split", "cache", "cache_dir"}
    | {"train_size", "test_size"}
)

#: Images in the official train and test files (train before val is held out of it), used only
#: when the dataset is not present here. From each dataset's own documentation; VOC detection is
#: VOC2007 + VOC2012 trainval -> VOC2007 test, VOC segmentation VOC2012 train -> val.
OFFICIAL_SPLITS: dict[str, tuple[int, int]] = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "svhn": (73_257, 26_032),
    "fashion_mnist": (60_000, 10_000),
    "visda2017": (152_397, 55_388),
    "voc_detection": (16_551, 4_952),
    "voc_segmentation": (1_464, 1_449),
}
_DEFAULT_VAL_NONE = frozenset({"voc_detection", "voc_segmentation"})  # val_size defaults to 0
PAPER_VAL_SIZE = 5000  # cvlth.data.classification's default: min(5,000, a tenth of train)


@dataclass(frozen=True)
class WorkKind:
    """What sets the seconds one training or evaluation image takes, as canonical JSON."""

    spec: str

    @property
    def fields(self) -> dict[str, Any]:
        return json.loads(self.spec)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.spec.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        f = self.fields
        backbone = f["backbone"]
        data = f["data"]
        options = data["options"]
        size = options.get("image_size") or options.get("max_size") or options.get("canvas_size") or ""
        adapt = f["adapt"]
        stem = "cifar" if adapt and adapt["small_images"] and not adapt["keep_stem"] else backbone["stem"]
        extras = [f["precision"]] + (["channels_last"] if f["channels_last"] else [])
        return (
            f"{backbone['arch']}x{backbone['width']} {stem} stem, {data['name']}{f' {size}px' if size else ''}, "
            f"{f['objective']['name']}, batch {f['batch_size']}, {' '.join(extras)}"
        )


def work_kind(run: RunConfig, backbone: BackboneConfig) -> WorkKind | None:
    """The work kind of a run that trains (None for imports and OMP/random masks). ``backbone`` is
    the study's: the architecture of an imported θ_p, whose file may not be here."""
    recipe = run.training_recipe()
    if recipe is None:
        return None
    adapt = run.classifier_adapt()
    spec = {
        "backbone": run.theta_backbone(backbone).model_dump(),
        "adapt": None if adapt is None else adapt.model_dump(),
        "data": {"name": recipe.data.name, "options": _cost_options(recipe.data)},
        "objective": recipe.objective.model_dump(),
        "model": recipe.model,
        "batch_size": recipe.train.batch_size,
        "precision": recipe.train.precision,
        "channels_last": recipe.train.channels_last,
    }
    return WorkKind(json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str))


def _cost_options(ref: DataRef) -> dict[str, Any]:
    """The options that set an image's cost, an option whose default changed written as before the
    change (so stored measurements keep matching, as run hashes do)."""
    return {k: v for k, v in in_former_form(ref.name, ref.options).items() if k not in SIZE_ONLY_OPTIONS}


def evaluations(epochs: int, every: int) -> int:
    """Evaluations in one training: every ``every`` epochs and after the last (as the loop does)."""
    return epochs // every + (1 if epochs % every else 0)


def trained_per_epoch(images: int, batch_size: int) -> int:
    """Images one epoch trains: the last partial batch is dropped when there is more than one batch."""
    return images // batch_size * batch_size if images > batch_size else images


def study_work_kinds(
    planned: list[PlannedRun], backbone: BackboneConfig
) -> dict[str, tuple[WorkKind, RunConfig]]:
    """Each work kind of a study by key, with the first run of that kind (for the benchmark)."""
    kinds: dict[str, tuple[WorkKind, RunConfig]] = {}
    for item in planned:
        kind = work_kind(item.run, backbone)
        if kind is not None and kind.key not in kinds:
            kinds[kind.key] = (kind, item.run)
    return kinds


# --- dataset sizes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSizes:
    train: int
    val: int
    test: int
    source: str  # "here" (the data were read) or "official" (OFFICIAL_SPLITS)


def official_sizes(ref: DataRef) -> SplitSizes | None:
    """The split sizes a study would load from ``ref``'s official files, or None if not known."""
    if ref.name not in OFFICIAL_SPLITS:
        return None
    full, test = OFFICIAL_SPLITS[ref.name]
    options = ref.options
    default_val = 0 if ref.name in _DEFAULT_VAL_NONE else min(PAPER_VAL_SIZE, full // 10)
    val = options.get("val_size")
    val = default_val if val is None else int(val)
    train = full - val
    capped = [
        _cap(n, options.get(f"max_{split}")) for split, n in (("train", train), ("val", val), ("test", test))
    ]
    return SplitSizes(*capped, source="official")


def _cap(n: int, limit: Any) -> int:
    return n if limit is None else min(n, int(limit))


def present_sizes(ref: DataRef) -> SplitSizes | None:
    """The split sizes of ``ref`` read from its data, or None when they are not here."""
    from cvlth.data.cache import DatasetCache

    try:
        data = DatasetCache().get(ref.name, ref.root, ref.options)
    except CvlthError:
        return None
    val = data.val
    return SplitSizes(len(data.train), 0 if val is None else len(val), len(data.test), source="here")


def split_sizes(ref: DataRef) -> SplitSizes | None:
    """From the data if present, else from the official split sizes, else None (unknown)."""
    return present_sizes(ref) or official_sizes(ref)


# --- the estimate ----------------------------------------------------------------------------------


@dataclass
class CostEstimate:
    """Compute time left, summed over the runs to do whose kind is measured and size known."""

    seconds: float = 0.0
    runs_counted: int = 0
    runs_free: int = 0  # to do, but no training (import, OMP/random masks)
    missing: dict[str, tuple[WorkKind, int]] = field(default_factory=dict)  # key -> (kind, runs)
    unknown_sizes: Counter = field(default_factory=Counter)  # dataset -> runs
    official_sizes: set[str] = field(default_factory=set)  # datasets sized from OFFICIAL_SPLITS
    used_kinds: set[str] = field(default_factory=set)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.unknown_sizes

    @property
    def runs_not_counted(self) -> int:
        return sum(n for _, n in self.missing.values()) + sum(self.unknown_sizes.values())


def run_seconds(run: RunConfig, sizes: SplitSizes, train_seconds: float, eval_seconds: float) -> float:
    """Compute seconds of one run, per the module doc's formula."""
    recipe = run.training_recipe()
    if recipe is None:
        return 0.0
    train = recipe.train
    per_training = trained_per_epoch(sizes.train, train.batch_size) * train.epochs * train_seconds + (
        (sizes.val + sizes.test) * evaluations(train.epochs, train.eval_every_epochs) * eval_seconds
    )
    untrained = run.untrained_test_evaluations() * sizes.test * eval_seconds
    return run.trainings() * per_training + untrained


def estimate_cost(
    planned: list[PlannedRun],
    store: Store,
    backbone: BackboneConfig,
    measurements: Measurements | None,
    sizes: Callable[[DataRef], SplitSizes | None] = split_sizes,
    damaged: Collection[str] = (),
) -> CostEstimate:
    """The compute time of the runs of ``planned`` not done in ``store`` (or ``damaged``: run folders
    ``kind/hash`` that will be recomputed), on the device ``measurements`` were made on (None: every
    kind with work left is reported as missing)."""
    estimate = CostEstimate()
    known: dict[str, SplitSizes | None] = {}
    for item in planned:
        run = item.run
        if store.is_done(run) and not (damaged and store.run_dir(run).name in damaged):
            continue
        kind = work_kind(run, backbone)
        if kind is None:
            estimate.runs_free += 1
            continue
        ref = run.training_recipe().data
        ref_key = ref.model_dump_json()
        if ref_key not in known:
            known[ref_key] = sizes(ref)
        size = known[ref_key]
        cost = measurements.cost(kind.key) if measurements is not None else None
        if cost is None:
            _, runs = estimate.missing.get(kind.key, (kind, 0))
            estimate.missing[kind.key] = (kind, runs + 1)
        elif size is None:
            estimate.unknown_sizes[ref.name] += 1
        else:
            if size.source == "official":
                estimate.official_sizes.add(ref.name)
            estimate.seconds += run_seconds(run, size, *cost)
            estimate.runs_counted += 1
            estimate.used_kinds.add(kind.key)
    return estimate


# --- in words, for `cvlth study --plan` ------------------------------------------------------------

LISTED_KINDS = 6  # missing work kinds named one per line; the rest are counted


def benchmark_command(
    config: str, device_type: str, output: str | None = None, threads: int | None = None
) -> str:
    """The command that measures the work kinds of study ``config`` on a device of ``device_type``."""
    command = f"{BENCHMARK} {config} --device {device_type}"
    if threads is not None:
        command += f" --threads {threads}"
    return command + (f" --output {output}" if output is not None else "")


def hours(seconds: float, device_type: str) -> str:
    """``1,234 GPU-hours`` on cuda, ``0.07 hours (4.2 min)`` on cpu."""
    unit = "GPU-hours" if device_type == "cuda" else "hours"
    value = seconds / 3600
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.2f} {unit}" + (f" ({seconds / 60:.1f} min)" if value < 1 else "")


def cost_lines(
    estimate: CostEstimate,
    choice: Choice,
    config: str,
    device: str,
    cost_file: str | None = None,
    threads: int | None = None,
) -> list[str]:
    """What `--plan` prints about the compute time left: the estimate and where its per-image costs
    come from, or which work kinds have none and the command that measures them."""
    measured = choice.measurements
    # a chosen file (--cost-file, --cost-device) says which device the time is for
    kind = measured.device_type if measured is not None else device_type(device)
    command = benchmark_command(config, kind, cost_file, threads)
    runs_to_train = estimate.runs_counted + estimate.runs_not_counted
    if runs_to_train == 0:
        return [f"compute time left on {kind}: none (no run left to train)"]
    lines: list[str] = []
    if measured is None:
        lines.append(f"compute time left on {kind}: unknown: {choice.reason}")
        if kind in DEVICE_TYPES:
            lines.append(f"  measure it on that device: {command}")
        return lines
    source = (
        f"per-image costs of {measured.description} measured {measured.dates(estimate.used_kinds)} "
        f"by {BENCHMARK} ({measured.where}: {choice.reason})"
    )
    total = hours(estimate.seconds, kind)
    if estimate.complete:
        lines.append(f"compute time left on {kind}: {total} for {runs_to_train:,} runs to train")
    elif estimate.runs_counted:
        lines.append(
            f"compute time left on {kind}: at least {total}: {estimate.runs_counted:,} of {runs_to_train:,} "
            "runs to train counted, the others below are not"
        )
    else:
        lines.append(
            f"compute time left on {kind}: unknown ({runs_to_train:,} runs to train, none counted below)"
        )
    if estimate.runs_counted:
        lines.append(f"  {source}")
        if kind == "cpu":
            threads_used = ", ".join(map(str, measured.threads(estimate.used_kinds)))
            lines.append(f"  one run at a time, with the intra-op threads measured: {threads_used}")
        lines.append("  evaluation counted as val + test at every evaluation (an upper bound)")
        smaller = [k for k in estimate.used_kinds if _timed_smaller(measured.kinds[k])]
        if smaller:
            lines.append(f"  {len(smaller)} kind(s) timed at a smaller batch than planned (see the file)")
    if estimate.official_sizes:
        lines.append(
            f"  sizes from the official splits (data not here): {', '.join(sorted(estimate.official_sizes))}"
        )
    if estimate.missing:
        runs = sum(n for _, n in estimate.missing.values())
        lines.append(
            f"  not measured on {measured.description}: {len(estimate.missing)} work kind(s), {runs:,} runs:"
        )
        ordered = sorted(estimate.missing.values(), key=lambda item: item[0].label)
        lines += [f"    {k.label} [{k.key}]: {n:,} runs" for k, n in ordered[:LISTED_KINDS]]
        if len(ordered) > LISTED_KINDS:
            lines.append(f"    ... and {len(ordered) - LISTED_KINDS} more")
        lines.append(f"  measure them on that device: {command}")
    for name, runs in sorted(estimate.unknown_sizes.items()):
        lines.append(f"  not counted: {runs:,} runs on {name} (its size is unknown: the data are not here)")
    return lines


def _timed_smaller(entry: dict[str, Any]) -> bool:
    planned = entry.get("kind", {}).get("batch_size")
    timed = entry.get("train", {}).get("batch_size")
    return isinstance(planned, int) and isinstance(timed, int) and timed < planned
