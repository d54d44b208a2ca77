"""Measurement files (cvlth-costs/1): seconds per training and evaluation image, per work kind,
measured on one device by ``cvlth costs measure`` (:mod:`cvlth.study.cost_measure`).

One JSON file per device; the stored ones ship with the package in ``measurements/``::

    {"format": "cvlth-costs/1",
     "device": {"type": "cpu" | "cuda", "name": "Intel(R) Xeon(R) Processor"},
     "note": "...",                    # how and when it was measured, caveats
     "kinds": {"<work kind key>": {"label": "...", "kind": {...}, "measured": "2026-12-02T10:00:00",
                                   "torch": "2.14.1", "threads": 2, "data": "real" | "synthetic",
                                   "train": {"seconds_per_image": 0.0012, "batch_size": 128, "steps": 3},
                                   "eval": {"seconds_per_image": 0.0004, "batch_size": 512, "images": 1536}}}}

A kind's key is :attr:`cvlth.study.costs.WorkKind.key`. Which file a plan uses:
:func:`choose_measurements`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvlth.atomic import atomic_path
from cvlth.errors import CvlthError
from cvlth.input_files import read_json

FORMAT = "cvlth-costs/1"
MEASUREMENTS_DIR = Path(__file__).parent / "measurements"
BENCHMARK = "cvlth costs measure"
DEVICE_TYPES = ("cpu", "cuda")
#: A measurement file is a few kilobytes; this bound only stops a wrong file (or /dev/zero-like growth).
MAX_MEASUREMENT_BYTES = 1 << 20
#: An hour per image is far beyond any real measurement; larger values only make estimates overflow
#: (1e308 s per image times a million images is ``inf`` hours).
MAX_SECONDS_PER_IMAGE = 3600.0


@dataclass(frozen=True)
class Measurements:
    """A read and checked measurement file."""

    path: Path
    device_type: str
    device_name: str
    note: str
    kinds: dict[str, dict[str, Any]]

    def cost(self, key: str) -> tuple[float, float] | None:
        """(seconds per training image, seconds per evaluation image) of a work kind, or None."""
        entry = self.kinds.get(key)
        if entry is None:
            return None
        return entry["train"]["seconds_per_image"], entry["eval"]["seconds_per_image"]

    @property
    def description(self) -> str:
        return f"{self.device_type} {self.device_name!r}"

    @property
    def where(self) -> str:
        """The file, named as stored with the package or by its path."""
        stored = self.path.parent.resolve() == MEASUREMENTS_DIR.resolve()
        return f"stored {self.path.name}" if stored else str(self.path)

    def dates(self, keys: set[str] | None = None) -> str:
        """The measurement dates (days) of ``keys`` (default: all kinds), e.g. ``2026-12-02``."""
        days = sorted({self.kinds[k]["measured"][:10] for k in (keys or self.kinds) if k in self.kinds})
        return days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}" if days else "never"

    def threads(self, keys: set[str] | None = None) -> list[int]:
        return sorted({self.kinds[k]["threads"] for k in (keys or self.kinds) if k in self.kinds})


def read_measurements(path: str | Path) -> Measurements:
    """Read and check a measurement file; a CvlthError names the file and what is wrong."""
    path = Path(path)
    try:
        data = read_json(path, "a measurement file", MAX_MEASUREMENT_BYTES)
    except FileNotFoundError:
        raise CvlthError(f"measurement file {path} does not exist", hint=_MAKE_ONE) from None
    except OSError as error:
        raise CvlthError(
            f"measurement file {path} is not readable: {error.strerror}", hint=_MAKE_ONE
        ) from None
    except CvlthError as error:
        raise CvlthError(error.message, hint=error.hint or _MAKE_ONE) from None

    def bad(what: str) -> CvlthError:
        return CvlthError(f"measurement file {path}: {what}", hint=_MAKE_ONE)

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"not a {FORMAT} file (its format is {_field(data, 'format')!r})")
    device = data.get("device")
    if not isinstance(device, dict) or device.get("type") not in DEVICE_TYPES:
        raise bad(f"device.type must be one of {', '.join(DEVICE_TYPES)}")
    if not isinstance(device.get("name"), str) or not device["name"]:
        raise bad("device.name must be the device's name (a string)")
    kinds = data.get("kinds")
    if not isinstance(kinds, dict):
        raise bad("kinds must be an object: work kind key -> measurement")
    for key, entry in kinds.items():
        _check_kind(key, entry, bad)
    return Measurements(path, device["type"], device["name"], str(data.get("note", "")), kinds)


_MAKE_ONE = f"make one with `{BENCHMARK} CONFIG --device cpu|cuda` (it writes a valid file)"


def _field(data: Any, name: str) -> Any:
    return data.get(name) if isinstance(data, dict) else None


def _check_kind(key: str, entry: Any, bad: Any) -> None:
    if not isinstance(entry, dict):
        raise bad(f"kinds[{key!r}] must be an object")
    for part in ("train", "eval"):
        seconds = _field(entry.get(part), "seconds_per_image")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
            raise bad(f"kinds[{key!r}].{part}.seconds_per_image must be a number (got {seconds!r})")
        if not 0 < seconds <= MAX_SECONDS_PER_IMAGE:
            raise bad(
                f"kinds[{key!r}].{part}.seconds_per_image must be positive and at most "
                f"{MAX_SECONDS_PER_IMAGE:g} (got {seconds!r})"
            )
    if not isinstance(entry.get("measured"), str) or not re.match(r"\d{4}-\d\d-\d\d", entry["measured"]):
        raise bad(f"kinds[{key!r}].measured must be an ISO date (got {entry.get('measured')!r})")
    threads = entry.get("threads")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise bad(f"kinds[{key!r}].threads must be a positive integer (got {threads!r})")


def write_measurements(path: str | Path, data: dict[str, Any]) -> None:
    """Write a measurement file atomically (checked by reading it back before it replaces ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        read_measurements(tmp)


def stored_measurements(folder: Path = MEASUREMENTS_DIR) -> list[Measurements]:
    return [read_measurements(path) for path in sorted(folder.glob("*.json"))]


def file_name(device_type: str, device_name: str) -> str:
    """``cpu-intel-r-xeon-r-processor.json``: the stored file of a device."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    return f"{device_type}-{slug or 'unknown'}.json"


# --- which device, which file ------------------------------------------------------------------


def cpu_model() -> str:
    """This machine's CPU model (``model name`` of /proc/cpuinfo), else what Python knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def local_device_name(device: str) -> str | None:
    """The name of ``device`` on this machine: the CPU model, the GPU's name, or None (no such GPU)."""
    if device_type(device) == "cpu":
        return cpu_model()
    import torch

    if not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    return torch.cuda.get_device_name(index or 0)


def device_type(device: str) -> str:
    """``cuda`` for ``cuda:1``: the kind of device a measurement is for."""
    return device.split(":", 1)[0]


@dataclass(frozen=True)
class Choice:
    """The measurement file a plan uses (or None), and why (the option, or the rule) in words."""

    measurements: Measurements | None
    reason: str


def choose_measurements(
    device: str,
    cost_file: str | Path | None = None,
    cost_device: str | None = None,
    stored: list[Measurements] | None = None,
) -> Choice:
    """The measurement file for planning on ``device``: ``cost_file`` if given; else the stored file
    whose device name contains ``cost_device``; else the stored file of this machine's device (by
    exact name); else, with no such GPU here, the only stored file of that device type."""
    if cost_file is not None:
        chosen = read_measurements(cost_file)
        return Choice(chosen, "--cost-file")
    kind = device_type(device)
    if kind not in DEVICE_TYPES:
        return Choice(None, f"per-image costs are measured on {' or '.join(DEVICE_TYPES)} only")
    stored = stored_measurements() if stored is None else stored
    of_kind = [m for m in stored if m.device_type == kind]
    listing = ", ".join(m.description for m in of_kind) or "none"
    if cost_device is not None:
        matches = [m for m in of_kind if cost_device.lower() in m.device_name.lower()]
        if len(matches) > 1:
            raise CvlthError(
                f"--cost-device {cost_device!r} matches several stored {kind} measurements: {listing}",
                hint="give more of the device's name",
            )
        if matches:
            return Choice(matches[0], f"--cost-device {cost_device}")
        return Choice(
            None, f"no stored {kind} measurement matches --cost-device {cost_device!r} (stored: {listing})"
        )
    name = local_device_name(device)
    for candidate in of_kind:
        if candidate.device_name == name:
            return Choice(candidate, "this machine's device")
    if name is not None:
        return Choice(None, f"no stored measurement for {kind} {name!r} (stored {kind}: {listing})")
    if len(of_kind) == 1:
        return Choice(of_kind[0], f"no {kind} device here; the only stored {kind} measurement")
    if not of_kind:
        return Choice(None, f"no {kind} measurement is stored yet")
    return Choice(
        None, f"no {kind} device here; stored {kind}: {listing}: choose one with --cost-device NAME"
    )
