"""Throughput of `prepare-data` on the demo data vs plain PIL decode + resize of the same files.

Prints images/s for 1 and 2 workers and the ratio to a single-process baseline that only opens each file
with PIL, converts it to RGB and resizes it to the size prepare-data stores (no validation, no policy,
no writing). Two scenarios:

* ``verbatim``: default settings (``--min-size 420``); demo images are smaller, so they are validated by a
  full decode and copied verbatim into the shards.
* ``halve``: ``--min-size`` = size / 4, so every image is BOX-halved and re-encoded (JPEG q95 4:4:4).

Usage: ``python benchmarks/prepare_data.py [--per-class 64] [--size 256] [--repeats 2]``
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from vfmtok.data.demo import DemoSettings, build_demo_data
from vfmtok.jobs.prepare import PrepareSettings, prepare_dataset


def _baseline(files: list[Path], min_size: int) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image = image.convert("RGB")
            while min_size and min(image.size) >= 2 * min_size:
                image = image.resize((image.width // 2, image.height // 2), Image.BOX)
    return len(files) / (time.perf_counter() - start)


def _prepare(src: Path, work: Path, settings: PrepareSettings, workers: int, n: int) -> float:
    out = work / f"out-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    prepare_dataset(src, out, settings, workers=workers, command_line=["benchmark"])
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=64, help="train images per demo class")
    parser.add_argument("--size", type=int, default=256, help="short side of the demo images")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        build_demo_data(work / "photos", DemoSettings(train_per_class=args.per_class, val_per_class=1, size=args.size))
        src = work / "photos" / "train"
        files = sorted(src.rglob("*.JPEG"))
        print(f"demo train split: {len(files)} JPEGs, short side {args.size} px, {os.cpu_count()} CPU(s)")
        for name, min_size in (("verbatim", 420), ("halve", max(1, args.size // 4))):
            settings = PrepareSettings(min_size=min_size, shard_size=64)
            best = {"pil": 0.0, 1: 0.0, 2: 0.0}
            for _ in range(args.repeats):  # interleaved, best of N: the machine may be shared
                best["pil"] = max(best["pil"], _baseline(files, min_size))
                for workers in (1, 2):
                    best[workers] = max(best[workers], _prepare(src, work, settings, workers, len(files)))
            print(f"[{name}] min_size={min_size}: plain PIL decode+resize {best['pil']:8.1f} img/s (1 process)")
            for workers in (1, 2):
                print(f"[{name}] prepare-data --workers {workers}: {best[workers]:8.1f} img/s   "
                      f"ratio to PIL {best[workers] / best['pil']:5.2f}")

if __name__ == "__main__":
    main()
