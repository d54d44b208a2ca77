"""``cvlth costs measure``: the seconds per training and evaluation image of every work kind of a
study, on one device.

A study's runs fall into a few *work kinds* (``cvlth.study.costs.work_kind``: backbone as built,
dataset and its image options, objective, dense model options, batch size, precision,
channels_last). For each kind this script builds the model and objective as the run does
(``cvlth.runs.execute``; θ_p is a fresh backbone of the study's architecture: the weights do not
change the cost) and times

* training: ``cvlth.training.loop.train`` itself (forward, backward, optimizer step, the mask
  enforced after every step, the objective's after-step hook, the schedule) on 1 + ``--steps``
  batches with a 50% global-magnitude mask; the first step is not timed, the others are timed
  between the loop's step callbacks (their median counts), and timing stops once
  ``--max-seconds`` have passed;
* evaluation: the objective's ``evaluate`` on ``--steps`` batches of the study's evaluation batch
  size, after a warm-up call.

Data: the dataset itself when it is present here, else random images of its official shape
(recorded as ``"data": "synthetic ..."``: a streaming dataset's decoding is then not timed). On CPU
the batch timed is lowered (and recorded) when two training steps, or ``--steps`` evaluation
batches, would take longer than ``--max-seconds``, judged from a probe of 2 images (which
overstates a small model's per-image time, so its batch may be lowered more than needed: the file
says which batch was timed); ``--max-batch`` caps it on any device. A kind takes about
2-3 x ``--max-seconds`` plus building its model.
The result is merged into a cvlth-costs/1 file (``cvlth.study.cost_files``), by default the stored
measurement of this device in ``src/cvlth/study/measurements/``, which ``cvlth study --plan`` reads.

    cvlth costs measure demo --device cpu --threads 2
    cvlth costs measure paper-resnet50 --device cuda
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cvlth.config import DataRef
from cvlth.data.cache import DatasetCache
from cvlth.data.classification import DatasetSplits, ImageSet
from cvlth.data.samples import SampleSplits, Subset, sample_batches
from cvlth.errors import CvlthError
from cvlth.models.backbones import BackboneSpec, build_backbone
from cvlth.models.checkpoints.cvlth_format import save_checkpoint
from cvlth.models.checkpoints.importer import import_checkpoint
from cvlth.pruning import magnitude
from cvlth.run_files import THETA_P
from cvlth.runs.context import EVAL_BATCH_SIZE, run_seeds
from cvlth.runs.kinds import BackboneConfig
from cvlth.runs.training import run_objective, task_model
from cvlth.study.config import load_study
from cvlth.study.cost_files import (
    FORMAT,
    MEASUREMENTS_DIR,
    file_name,
    local_device_name,
    read_measurements,
    write_measurements,
)
from cvlth.study.costs import WorkKind, study_work_kinds
from cvlth.study.plan import expand
from cvlth.training.loop import train

#: (channels, height, width, classes) of datasets timed on random images when not present here:
#: the official data's (None: the ``image_size`` option, default 224). VOC: a typical 500x375 image.
SYNTHETIC: dict[str, tuple[int, int | None, int | None, int]] = {
    "cifar10": (3, 32, 32, 10),
    "cifar100": (3, 32, 32, 100),
    "svhn": (3, 32, 32, 10),
    "fashion_mnist": (1, 28, 28, 10),
    "visda2017": (3, None, None, 12),
    "imagefolder": (3, None, None, 1000),  # ImageNet
    "voc_detection": (3, 375, 500, 21),  # 20 classes + background
    "voc_segmentation": (3, 375, 500, 21),
}
SYNTHETIC_IMAGES, SYNTHETIC_SAMPLES = 256, 32  # distinct random images (classification, VOC)
PROBE_BATCH = 2  # BatchNorm needs two values per channel in training
MASK_FRACTION = 0.5


class _Enough(Exception):
    """Raised from the step callback once enough steps are timed."""


# --- data --------------------------------------------------------------------------------------


def load_data(ref: DataRef) -> tuple[DatasetSplits | SampleSplits, str]:
    """The dataset when present here, else a few random images of its official shape (batches
    repeat them)."""
    try:
        return DatasetCache().get(ref.name, ref.root, ref.options), "real"
    except CvlthError as error:
        if ref.name not in SYNTHETIC:
            raise CvlthError(
                f"{ref.name} is not here ({error.message}) and has no official shape to time random images of",
                hint="run the benchmark where the data are",
            ) from None
    channels, height, width, classes = SYNTHETIC[ref.name]
    size = ref.options.get("image_size")
    if height is None:
        height = width = int(size or 224)
    elif size is not None:
        height = width = int(size)
    if ref.name.startswith("voc"):
        scale = min(1.0, int(ref.options.get("max_size") or 512) / max(height, width))
        height, width = round(height * scale), round(width * scale)
    shape = (channels, height, width)
    generator = torch.Generator().manual_seed(0)
    note = f"synthetic: random {channels}x{height}x{width} images (the data are not here)"
    if ref.name.startswith("voc"):
        return _synthetic_samples(ref.name, shape, classes, SYNTHETIC_SAMPLES, generator), note
    data = torch.randint(0, 256, (SYNTHETIC_IMAGES, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, classes, (SYNTHETIC_IMAGES,), generator=generator)
    split = ImageSet(data, labels, [str(c) for c in range(classes)])
    return DatasetSplits(ref.name, split, split, split, (0.5,) * channels, (0.25,) * channels), note


def _synthetic_samples(
    name: str, shape: tuple[int, int, int], classes: int, images: int, generator: torch.Generator
) -> SampleSplits:
    """Images with three random boxes each, drawn as classes into the segmentation labels too."""
    _, height, width = shape
    samples = []
    for _ in range(images):
        image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        semantic = torch.zeros(height, width, dtype=torch.uint8)
        boxes, labels = [], []
        for _ in range(3):
            w, h = (
                int(torch.randint(side // 8 + 1, side // 2 + 2, (1,), generator=generator))
                for side in (width, height)
            )
            x = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            y = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            label = int(torch.randint(1, classes, (1,), generator=generator))
            boxes.append([x, y, x + w, y + h])
            labels.append(label)
            semantic[y : y + h, x : x + w] = label
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "difficult": torch.zeros(3, dtype=torch.bool),
            "semantic": semantic,
        }
        samples.append((image, target))
    classes_names = ["background", *(str(c) for c in range(1, classes))]
    tasks = ("detection", "segmentation")
    return SampleSplits(name, samples, samples, samples, classes_names, (0.5,) * 3, (0.25,) * 3, tasks, shape)


def batches(data: DatasetSplits | SampleSplits, split: str, count: int, batch_size: int) -> Any:
    """``count`` batches of ``batch_size`` of ``split`` (val: test when there is no val), its images
    repeated when it has fewer: the cost of an image does not depend on which one it is."""
    if split == "val" and data.val is None:
        split = "test"
    samples = data.split(split)
    indices = torch.arange(count * batch_size) % len(samples)
    if isinstance(data, SampleSplits):
        return sample_batches(Subset(samples, indices), batch_size, shuffle=False)
    return samples.subset(indices).batches(batch_size, shuffle=False)


# --- model ---------------------------------------------------------------------------------------


def build(run: Any, backbone: BackboneConfig, data: Any, folder: Path) -> tuple[torch.nn.Module, Any]:
    """The model and objective a run trains, from a fresh θ_p of the study's architecture."""
    seeds = run_seeds(run)
    recipe = run.training_recipe()
    spec = BackboneSpec(**run.theta_backbone(backbone).model_dump())
    if run.trains_theta_p:
        model = build_backbone(spec, data.num_classes)
    else:
        path = folder / THETA_P
        save_checkpoint(path, build_backbone(spec, 10).state_dict(), spec, normalization="imagenet")
        model = task_model(run, import_checkpoint(path, source="cvlth"), data, seeds)
    return model, run_objective(recipe.objective, model, data, seeds.objective)


# --- timing --------------------------------------------------------------------------------------


def time_training(
    model: Any, objective: Any, run: Any, data: Any, batch: int, steps: int, args: Any
) -> tuple[float, int]:
    """Seconds per training image of the median of up to ``steps`` loop steps after a first, untimed
    one, and the number of steps timed (fewer once --max-seconds have passed)."""
    recipe = run.training_recipe()
    device = torch.device(args.device)
    stamps: list[float] = []

    def stamp(_info: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())
        if len(stamps) > steps or (len(stamps) > 1 and stamps[-1] - stamps[0] >= args.max_seconds):
            raise _Enough

    mask = magnitude(model, MASK_FRACTION)
    with contextlib.suppress(_Enough):  # the callback ends the loop early
        train(
            model,
            objective,
            batches(data, "train", steps + 1, batch),
            training=recipe.train,
            optim=recipe.optim,
            schedule=recipe.schedule,
            mask=mask,
            device=device,
            callbacks=[stamp],
            quiet=True,
        )
    steps_seconds = sorted(b - a for a, b in itertools.pairwise(stamps))
    # the median step: another process only ever adds time to a step, and the median ignores a few
    return steps_seconds[len(steps_seconds) // 2] / batch, len(steps_seconds)


def time_evaluation(model: Any, objective: Any, data: Any, batch: int, steps: int, device: str) -> float:
    """Seconds per evaluation image over one ``objective.evaluate`` call on ``steps`` batches."""
    model.eval()
    for module in objective.modules().values():
        module.eval()
    source = batches(data, "val", steps, batch)
    start = time.perf_counter()
    objective.evaluate(model, source)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (steps * batch)


def affordable(planned: int, seconds_per_image: float, calls: int, args: Any) -> int:
    """The batch timed: the run's, unless ``calls`` batches of it would exceed --max-seconds on CPU."""
    batch = planned if args.max_batch is None else min(planned, args.max_batch)
    if args.device == "cpu":
        batch = min(batch, max(PROBE_BATCH, int(args.max_seconds / (calls * seconds_per_image))))
    return max(1, batch)


def measure(kind: WorkKind, run: Any, backbone: BackboneConfig, args: Any) -> dict[str, Any]:
    recipe = run.training_recipe()
    planned_eval = EVAL_BATCH_SIZE
    start = time.perf_counter()
    data, source = load_data(recipe.data)
    if isinstance(data, SampleSplits):
        planned_eval = max(1, planned_eval // 16)  # as run_training.batches: whole images, smaller batches
    with tempfile.TemporaryDirectory() as folder:
        model, objective = build(run, backbone, data, Path(folder))
    probe_train = probe_eval = 1.0
    probing = args.device == "cpu"
    if probing:
        probe_train, _ = time_training(
            model, objective, run, data, min(PROBE_BATCH, recipe.train.batch_size), 1, args
        )
    # timing stops once --max-seconds have passed: the first, untimed step and one more must fit
    train_batch = affordable(recipe.train.batch_size, probe_train, 2, args)
    train_seconds, train_steps = time_training(model, objective, run, data, train_batch, args.steps, args)
    if probing:  # after a warm-up call: the first one also pays for one-time set-up
        time_evaluation(model, objective, data, 1, 1, args.device)
        probe_eval = time_evaluation(model, objective, data, min(PROBE_BATCH, planned_eval), 1, args.device)
    eval_batch = affordable(planned_eval, probe_eval, args.steps, args)
    if not probing:
        time_evaluation(model, objective, data, eval_batch, 1, args.device)
    eval_seconds = time_evaluation(model, objective, data, eval_batch, args.steps, args.device)
    return {
        "label": kind.label,
        "kind": kind.fields,
        "config": args.study_name,
        "measured": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "data": source,
        "mask": f"{MASK_FRACTION:.0%} global magnitude, enforced after every step",
        "train": {"seconds_per_image": train_seconds, "batch_size": train_batch, "steps": train_steps},
        "eval": {
            "seconds_per_image": eval_seconds,
            "batch_size": eval_batch,
            "images": eval_batch * args.steps,
        },
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


# --- the file ------------------------------------------------------------------------------------


def merged(output: Path, device_type: str, device_name: str, kinds: dict[str, Any], note: str | None) -> dict:
    """The file's content: its kinds of an earlier run (same device) with these replacing theirs."""
    previous: dict[str, Any] = {}
    old_note = ""
    if output.exists():
        old = read_measurements(output)
        if (old.device_type, old.device_name) != (device_type, device_name):
            raise CvlthError(
                f"{output} holds measurements of {old.description}, not of {device_type} {device_name!r}",
                hint="give another --output",
            )
        previous, old_note = old.kinds, old.note
    device: dict[str, Any] = {"type": device_type, "name": device_name, "cpu_count": os.cpu_count()}
    if device_type == "cuda":
        device["cuda"] = torch.version.cuda
    return {
        "format": FORMAT,
        "device": device,
        "note": note if note is not None else old_note,
        "kinds": {**previous, **kinds},
    }


@dataclass
class MeasureSettings:
    """What ``cvlth costs measure`` times, and where the result goes (its options, one for one)."""

    config: str
    device: str = "cpu"
    threads: int | None = None
    steps: int = 3
    max_seconds: float = 20.0
    max_batch: int | None = None
    only: str | None = None
    output: Path | None = None
    missing: bool = False
    note: str | None = None
    study_name: str = ""


def measure_study(args: MeasureSettings) -> Path:
    """Time every work kind of the study ``args.config`` (see the module doc) and merge the result into
    ``args.output`` (default: this device's stored measurement); returns the file written."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device_type = args.device.split(":")[0]
    device_name = local_device_name(args.device)
    if device_type not in ("cpu", "cuda") or device_name is None:
        raise CvlthError(f"--device {args.device}: not a device of this machine", hint="use cpu or cuda")
    study = load_study(args.config)
    args.study_name = study.name
    kinds = study_work_kinds(expand(study), study.backbone)
    chosen = {
        k: v for k, v in kinds.items() if args.only is None or args.only in k or args.only in v[0].label
    }
    output = args.output or MEASUREMENTS_DIR / file_name(device_type, device_name)
    if args.missing and output.is_file():
        held = json.loads(output.read_text()).get("kinds", {})
        chosen = {k: v for k, v in chosen.items() if k not in held}
    print(f"{study.name}: {len(chosen)} of {len(kinds)} work kinds on {device_type} {device_name!r}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    measured = {}
    for number, (key, (kind, run)) in enumerate(chosen.items(), start=1):
        entry = measure(kind, run, study.backbone, args)
        measured[key] = entry
        print(
            f"[{number}/{len(chosen)}] {kind.label} [{key}]: train {entry['train']['seconds_per_image']:.3g} s/img "
            f"(batch {entry['train']['batch_size']}, {entry['train']['steps']} steps), eval "
            f"{entry['eval']['seconds_per_image']:.3g} s/img (batch {entry['eval']['batch_size']}); "
            f"{entry['data'].split(':')[0]}; {entry['wall_seconds']} s",
            flush=True,
        )
    write_measurements(output, merged(output, device_type, device_name, measured, args.note))
    print(f"wrote {output} (load average after: {os.getloadavg()[0]:.1f})")
    return output
