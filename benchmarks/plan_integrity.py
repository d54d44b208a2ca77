"""What the integrity check of ``cvlth study paper-resnet50 --plan`` costs: quick (sizes and mtimes)
against full (sha256 of every file), on a store holding every run of the paper's study.

Run: PYTHONPATH=src python benchmarks/plan_integrity.py [--scale 0.02] [--store DIR]

The store is built by hand (no training): each of the plan's 11,000+ runs gets its folder with the
files a real run leaves, in the real numbers, at ``--scale`` times their ResNet-50 size (θ_p and
rewind weights 102 MB, a level's mask 2.9 MB, a transfer's metrics 40 kB): an import run θ_p; an IMP
run its rewind weights, 19 masks and 18 round folders; a baseline 19 masks; a transfer its metrics.
Then ``summarize_plan`` runs on an empty store, with the quick check and with the full check (the
process's hash cache emptied first; the files are in the page cache, so the full check reads memory,
not disk: a cold disk is slower), ``--repeats`` times in turn; medians are printed. Finally a 100 MB file is hashed to measure sha256's speed here,
which with the bytes of a full-size store gives the full check's time at scale 1.
The last line is ``RESULT runs=<n> empty_s=<x> quick_s=<y> full_s=<z> full_size_gb=<g> sha256_mb_s=<m>
full_check_at_scale_1_s=<t>``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cvlth import store_integrity
from cvlth.store import Store
from cvlth.study.config import load_study
from cvlth.study.plan import expand, summarize_plan

MB = 1_000_000
WEIGHTS_BYTES = 102 * MB  # ResNet-50: 25.6 M float32 parameters
MASK_BYTES = 2_900_000  # 23.5 M prunable weights at one bit each
METRICS_BYTES = 40_000  # a transfer's metrics.jsonl (one line per epoch and evaluation)
ROUND_BYTES = 20_000  # an IMP round's metrics.jsonl
LEVELS = 19


def _write(path: Path, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(min(size, 4096)) * (size // 4096) + os.urandom(size % 4096))
    return size


def build(store: Store, scale: float) -> tuple[list, int]:
    """Every run of paper-resnet50 finished by hand in ``store``; the bytes it would hold at scale 1."""
    planned = expand(load_study("paper-resnet50"))
    full_bytes = 0
    for item in planned:
        run = item.run
        folder = store.run_dir(run)
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.config_path.write_text(run.to_yaml())
        files: list[tuple[str, int]] = []
        if run.kind == "import":
            files = [("theta_p.pt", WEIGHTS_BYTES)]
        elif run.kind in ("imp", "baseline"):
            files = [(f"masks/level-{k:02d}.safetensors", MASK_BYTES) for k in range(LEVELS)]
            if run.kind == "imp":
                files.append(("rewind.safetensors", WEIGHTS_BYTES))
                files += [(f"round-{k:02d}/metrics.jsonl", ROUND_BYTES) for k in range(LEVELS - 1)]
        elif run.kind == "transfer":
            files = [("metrics.jsonl", METRICS_BYTES)]
        for name, size in files:
            full_bytes += size
            _write(folder.path / name, max(1, int(size * scale)))
        folder.write_result({"wall_seconds": 1.0})
    return planned, full_bytes


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def full_check(planned: list, store: Store) -> None:
    store_integrity._hash_cache.clear()  # hash every file again
    summary = summarize_plan(planned, store, full_hash=True)
    assert sum(summary.done.values()) == len(planned) and not summary.damaged


def sha256_mb_per_s(folder: Path) -> float:
    probe = folder / "probe.bin"
    _write(probe, 100 * MB)
    store_integrity._hash_cache.clear()
    seconds = timed(lambda: store_integrity.file_sha256(probe))
    probe.unlink()
    return 100 / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.02, help="file sizes as a fraction of ResNet-50's")
    parser.add_argument(
        "--store", type=Path, default=None, help="where to build the store (default: a temp dir)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.store or Path(tmp)
        store = Store(root / "store")
        start = time.perf_counter()
        planned, full_bytes = build(store, args.scale)
        build_s = time.perf_counter() - start
        on_disk = sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file())
        print(f"{len(planned):,} runs finished by hand in {build_s:.0f} s; {on_disk / MB:,.0f} MB on disk")
        times: dict[str, list[float]] = {"empty": [], "quick": [], "full": []}
        for _ in range(args.repeats):  # in turn, so that load on the machine spreads over all three
            times["empty"].append(timed(lambda: summarize_plan(planned, Store(root / "empty"))))
            times["quick"].append(timed(lambda: summarize_plan(planned, store)))
            times["full"].append(timed(lambda: full_check(planned, store)))
        empty_s, quick_s, full_s = (statistics.median(times[k]) for k in ("empty", "quick", "full"))
        speed = sha256_mb_per_s(root)
        at_scale_1 = full_s + (full_bytes - on_disk) / MB / speed
        print(f"plan on an empty store: {empty_s:.1f} s")
        print(f"plan, quick check (sizes, mtimes): {quick_s:.1f} s")
        print(f"plan, full check (sha256, page cache): {full_s:.1f} s at scale {args.scale}")
        print(
            f"sha256 here: {speed:.0f} MB/s; a full-size store holds {full_bytes / 1e9:.1f} GB: "
            f"full check ~{at_scale_1:.0f} s from memory, longer from a cold disk"
        )
        print(
            f"RESULT runs={len(planned)} empty_s={empty_s:.1f} quick_s={quick_s:.1f} full_s={full_s:.1f} "
            f"full_size_gb={full_bytes / 1e9:.1f} sha256_mb_s={speed:.0f} full_check_at_scale_1_s={at_scale_1:.0f}"
        )


if __name__ == "__main__":
    main()
