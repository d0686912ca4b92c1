"""The output folder of `vfmtok sample`: settings check and resume (`prepare_dir`), per-chunk PNGs and shards
(written by worker threads), and rank 0's final assembly into samples.npz, grid.png and sample_config.json.

Layout of DIR: `images/<index:06d>.png`, `parts/chunk_<k:06d>.npy` (removed when complete), `samples.npz`
(ADM layout), `grid.png`, `sample_config.json`.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from vfmtok.data.class_names import class_label
from vfmtok.io.files import read_json_dict, write_json_atomic
from vfmtok.jobs.sample.options import SampleOptions
from vfmtok.jobs.sample.plan import chunk_range, grid_rows

CONFIG_NAME = "sample_config.json"
NPZ_NAME = "samples.npz"
GRID_NAME = "grid.png"
NEAR_IDENTICAL_SPREAD = 2.0  # uint8 levels: samples whose pixel spread is below this are flagged as near-identical
SAMPLES_FORMAT = "vfmtok.samples"
_OUR_ENTRIES = ("images", "parts", NPZ_NAME, GRID_NAME, CONFIG_NAME)


class SampleDirError(ValueError):
    """The output folder holds something this job must not overwrite (other settings, not a sample folder)."""


# ---------------------------------------------------------------------------------------------
# Preparing the folder, committing chunks
# ---------------------------------------------------------------------------------------------


def _chunk_file(out: Path, chunk: int) -> Path:
    return out / "parts" / f"chunk_{chunk:06d}.npy"


def _clear(out: Path) -> None:
    """Remove only this job's artifacts from `out` (other files are left alone)."""
    for name in _OUR_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def prepare_dir(out: Path, settings: dict[str, Any], overwrite: bool, num_chunks: int, record: dict[str, Any]
                ) -> list[int] | None:
    """Make `out` ready and return the chunks still to sample (None: already complete with these settings).

    Raises:
        SampleDirError: `out` is a file; holds other files but no sample_config.json; or was made with other
            settings (lists the differing keys) -- unless `overwrite`, which removes only this job's artifacts.
    """
    if out.exists() and not out.is_dir():
        raise SampleDirError(f"--out {out} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()):
        existing = read_json_dict(out / CONFIG_NAME)
        if existing is None or existing.get("format") != SAMPLES_FORMAT:
            if not overwrite:
                raise SampleDirError(f"--out {out} exists and is not a vfmtok sample folder (no {CONFIG_NAME}); "
                                     "choose another --out, or pass --overwrite (removes only images/, parts/, "
                                     f"{NPZ_NAME}, {GRID_NAME}, {CONFIG_NAME})")
            _clear(out)
        elif existing.get("settings") != settings:
            if not overwrite:
                old = existing.get("settings") or {}
                keys = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                detail = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in keys[:6])
                raise SampleDirError(f"--out {out} holds samples made with other settings ({detail}); choose "
                                     "another --out or pass --overwrite to replace them")
            _clear(out)
        elif existing.get("complete") and (out / NPZ_NAME).is_file():
            if not overwrite:
                return None
            _clear(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    if record["options"]["png"]:
        (out / "images").mkdir(exist_ok=True)
    write_json_atomic(out / CONFIG_NAME, {**record, "complete": False}, indent=1)
    return [k for k in range(num_chunks) if not _chunk_file(out, k).is_file()]


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels, "RGB").save(tmp, format="PNG", compress_level=4)
    os.replace(tmp, path)


def commit_chunk(out: Path, chunk: int, start: int, pixels: np.ndarray, png: bool) -> None:
    """Write the chunk's PNGs, then its shard (the shard marks the chunk done)."""
    if png:
        for j, image in enumerate(pixels):
            _save_png(out / "images" / f"{start + j:06d}.png", image)
    shard = _chunk_file(out, chunk)
    tmp = shard.with_name(f".{shard.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, pixels, allow_pickle=False)
    os.replace(tmp, shard)


def render_grid(tiles: list[list[np.ndarray]], pad: int = 2, fill: int = 255,
                row_labels: list[str] | None = None, label_width: int = 160) -> np.ndarray:
    """Tile rows of (S, S, 3) uint8 images with `pad` pixels of `fill` between and around them -> (H, W, 3) uint8.

    With `row_labels`, a left margin of `label_width` pixels holds each row's label (black text, PIL's default font).
    """
    side = tiles[0][0].shape[0]
    cols = max(len(row) for row in tiles)
    left = label_width if row_labels else 0
    canvas = np.full((pad + len(tiles) * (side + pad), left + pad + cols * (side + pad), 3), fill, dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, image in enumerate(row):
            y, x = pad + r * (side + pad), left + pad + c * (side + pad)
            canvas[y : y + side, x : x + side] = image
    if row_labels:
        from PIL import Image, ImageDraw

        picture = Image.fromarray(canvas, "RGB")
        draw = ImageDraw.Draw(picture)
        for r, text in enumerate(row_labels):
            draw.text((4, pad + r * (side + pad) + side // 2 - 6), text[: max(4, label_width // 7)], fill=(0, 0, 0))
        canvas = np.asarray(picture).copy()
    return canvas


# ---------------------------------------------------------------------------------------------
# Rank 0: the final outputs
# ---------------------------------------------------------------------------------------------
def assemble(out: Path, labels: np.ndarray, num_chunks: int, opts: SampleOptions, record: dict[str, Any],
              started: float) -> dict[str, Any]:
    """Rank 0: stream the shards into samples.npz, fill missing PNGs, write grid.png and the final config."""
    from PIL import Image

    from vfmtok.data.adm_npz import NpzWriter

    n, d, size = opts.num_samples, opts.decode_batch, opts.image_size
    rows = grid_rows(labels)
    wanted = {i for row in rows for i in row}
    tiles: dict[int, np.ndarray] = {}
    spread = PixelSpread()
    with NpzWriter(out / NPZ_NAME, count=n, height=size, width=size) as writer:
        for k in range(num_chunks):
            span = chunk_range(k, n, d)
            shard = _chunk_file(out, k)
            if not shard.is_file():
                raise RuntimeError(f"{shard} is missing after all ranks finished; rerun the same command to resume")
            pixels = np.load(shard, mmap_mode="r")
            if pixels.dtype != np.uint8 or pixels.shape != (len(span), size, size, 3):
                raise RuntimeError(f"{shard}: expected uint8 {(len(span), size, size, 3)}, got {pixels.dtype} "
                                   f"{pixels.shape}; rerun with --overwrite")
            writer.write(pixels, labels[span.start : span.stop])
            spread.add(pixels)
            for j, i in enumerate(span):
                if i in wanted:
                    tiles[i] = np.array(pixels[j])
                if opts.png and not (out / "images" / f"{i:06d}.png").is_file():
                    (out / "images").mkdir(exist_ok=True)
                    _save_png(out / "images" / f"{i:06d}.png", np.array(pixels[j]))
            del pixels
    names = record.get("class_names")
    row_labels = [class_label(int(labels[row[0]]), names) for row in rows] if names else None
    grid = render_grid([[tiles[i] for i in row] for row in rows], row_labels=row_labels)
    Image.fromarray(grid, "RGB").save(out / GRID_NAME, format="PNG")
    finished = time.time()
    counts = np.bincount(labels, minlength=record["num_classes"])
    record = {**record, "complete": True, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
              "seconds": round(finished - started, 3), "images_per_second": round(n / max(finished - started, 1e-9), 3),
              "classes_used": int((counts > 0).sum()), "grid_rows": rows, "pixel_spread": spread.value(),
              "outputs": {"npz": NPZ_NAME, "grid": GRID_NAME, "images": "images/" if opts.png else None}}
    write_json_atomic(out / CONFIG_NAME, record, indent=1)
    shutil.rmtree(out / "parts", ignore_errors=True)
    return record


class PixelSpread:
    """How much the samples differ: the mean over pixel positions and channels of the standard deviation across
    samples, in uint8 levels (0 = all samples identical; independent uniform noise: about 73.9).

    Accumulated chunk by chunk in float64 (sum and sum of squares per position), so the npz never sits in memory.
    `value()` is None for fewer than two samples. Below `NEAR_IDENTICAL_SPREAD` (2 levels) the samples are
    near-identical whatever the codes: a decoder that ignores its input, or a collapsed GPT.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total: np.ndarray | None = None
        self.squares: np.ndarray | None = None

    def add(self, pixels: np.ndarray) -> None:
        """pixels: uint8 (n, H, W, 3), any n >= 0."""
        x = np.asarray(pixels, dtype=np.float64)
        if self.total is None:
            self.total, self.squares = np.zeros(x.shape[1:]), np.zeros(x.shape[1:])
        self.total += x.sum(axis=0)
        self.squares += np.square(x).sum(axis=0)
        self.count += len(x)

    def value(self) -> float | None:
        if self.count < 2:
            return None
        mean = self.total / self.count
        var = np.maximum(self.squares / self.count - np.square(mean), 0.0)
        return round(float(np.sqrt(var).mean()), 4)
