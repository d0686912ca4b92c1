"""Token store writing: create the arrays, fill disjoint rows from many ranks (`StoreWriter`), finalize, validate.

See `vfmtok.data.token_store.format` for the layout and docs/token_store.md for the format.
"""
from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from vfmtok.data.token_store.format import (CHUNK_BYTES, CODES_FILE, FORMAT, FORMAT_VERSION, LABELS_FILE,
                                            PROGRESS_FILE, STORE_FILES, StoreLayout, read_manifest, write_manifest)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# Creation, writing, validation
# ---------------------------------------------------------------------------------------------
def _npy_data_offset(path: Path) -> int:
    """Byte offset of the data in a .npy file (after magic + header)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def create_store(out: str | Path, layout: StoreLayout, manifest: dict[str, Any]) -> None:
    """Create an empty store in `out`: sentinel-filled codes, labels -1, zero done-mask, manifest.

    Any existing store files in `out` are replaced (the caller decides whether that is allowed). The
    manifest is written last with `complete: false`, so a half-created store is recognisable.

    Args:
        out: store directory (created if missing).
        layout: shapes and codebook size.
        manifest: manifest fields (format, layout and `complete` are set here).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in STORE_FILES:
        (out / name).unlink(missing_ok=True)
    n, a, l_ = layout.num_images, layout.num_augmentations, layout.num_tokens
    codes = np.lib.format.open_memmap(out / CODES_FILE, mode="w+", dtype=layout.dtype, shape=(n, a, l_))
    if layout.sentinel is not None:
        step = max(1, CHUNK_BYTES // (layout.row_items * layout.dtype.itemsize))
        for start in range(0, n, step):
            codes[start : start + step] = layout.sentinel
    codes.flush()
    del codes
    np.save(out / LABELS_FILE, np.full((n,), -1, dtype=np.int64))
    np.save(out / PROGRESS_FILE, np.zeros((n,), dtype=np.uint8))
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "num_images": n,
        "num_augmentations": a,
        "num_tokens": l_,
        "codebook_size": layout.codebook_size,
        "dtype": layout.dtype.name,
        "created": _now(),
        **{k: v for k, v in manifest.items() if k not in ("format", "format_version", "complete")},
    }
    write_manifest(out, full)


def _runs(indices: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(first index, position in `indices`, length) of each run of consecutive values in sorted `indices`."""
    if len(indices) == 0:
        return
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(indices)]])
    for s, e in zip(starts.tolist(), ends.tolist()):
        yield int(indices[s]), s, e - s


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class StoreWriter:
    """Fills rows of an existing, incomplete store; safe to use from many processes at once.

    Each process writes only the rows it encodes (disjoint rows, exact byte ranges via `os.pwrite`).
    Rows become "done" in `progress.npy` only in :meth:`flush`, after their codes and labels were
    synced to disk, so a killed run never marks an unwritten row done.

    Args:
        out: an incomplete store made by :func:`create_store`.

    Raises:
        FileNotFoundError / ValueError: `out` is not an incomplete token store.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.manifest = read_manifest(self.out)
        if self.manifest.get("complete"):
            raise ValueError(f"{self.out}: the token store is complete; nothing may be written into it")
        self.layout = StoreLayout.from_manifest(self.manifest)
        self._row_bytes = self.layout.row_items * self.layout.dtype.itemsize
        self._fds = {}
        self._offsets = {}
        for name in (CODES_FILE, LABELS_FILE, PROGRESS_FILE):
            path = self.out / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: the store is damaged; rerun with --overwrite")
            self._offsets[name] = _npy_data_offset(path)
            self._fds[name] = os.open(path, os.O_RDWR)
        self._pending: list[np.ndarray] = []

    def done_mask(self) -> np.ndarray:
        """(N,) bool: rows already marked done on disk (read fresh from progress.npy)."""
        return np.load(self.out / PROGRESS_FILE, mmap_mode="r").astype(bool)

    def write(self, indices: np.ndarray, codes: np.ndarray, labels: np.ndarray) -> None:
        """Write rows `indices` (strictly increasing) with `codes` (n, A, L) and `labels` (n,).

        Raises:
            ValueError: wrong shapes, unsorted/out-of-range indices, codes outside [0, codebook_size),
                or negative labels.
        """
        layout = self.layout
        indices = np.asarray(indices, dtype=np.int64)
        codes = np.asarray(codes)
        labels = np.asarray(labels, dtype=np.int64)
        n = len(indices)
        if codes.shape != (n, layout.num_augmentations, layout.num_tokens) or labels.shape != (n,):
            raise ValueError(
                f"StoreWriter.write: codes {codes.shape} / labels {labels.shape} do not match "
                f"({n}, {layout.num_augmentations}, {layout.num_tokens}) / ({n},)"
            )
        if n and (np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= layout.num_images):
            raise ValueError(f"StoreWriter.write: indices must be increasing within [0, {layout.num_images})")
        if n and (codes.min() < 0 or codes.max() >= layout.codebook_size):
            raise ValueError(
                f"StoreWriter.write: codes in [{codes.min()}, {codes.max()}] outside [0, {layout.codebook_size})"
            )
        if n and labels.min() < 0:
            raise ValueError(f"StoreWriter.write: negative label {labels.min()}")
        codes = np.ascontiguousarray(codes, dtype=layout.dtype.newbyteorder("<"))
        labels = np.ascontiguousarray(labels, dtype="<i8")
        for first, pos, length in _runs(indices):
            _pwrite_all(
                self._fds[CODES_FILE],
                codes[pos : pos + length].data,
                self._offsets[CODES_FILE] + first * self._row_bytes,
            )
            _pwrite_all(self._fds[LABELS_FILE], labels[pos : pos + length].data, self._offsets[LABELS_FILE] + 8 * first)
        self._pending.append(indices)

    def flush(self) -> None:
        """Sync written codes and labels to disk, then mark their rows done in progress.npy (and sync)."""
        if not self._pending:
            return
        os.fsync(self._fds[CODES_FILE])
        os.fsync(self._fds[LABELS_FILE])
        indices = np.unique(np.concatenate(self._pending))
        ones = np.ones(len(indices), dtype=np.uint8)
        for first, pos, length in _runs(indices):
            _pwrite_all(self._fds[PROGRESS_FILE], ones[pos : pos + length].data, self._offsets[PROGRESS_FILE] + first)
        os.fsync(self._fds[PROGRESS_FILE])
        self._pending = []

    def close(self) -> None:
        """Flush and close the files (idempotent)."""
        if self._fds:
            self.flush()
            for fd in self._fds.values():
                os.close(fd)
            self._fds = {}

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_arrays(out: Path, layout: StoreLayout, num_classes: int | None, need_done: bool) -> np.ndarray:
    """Check every entry of the store; returns per-class counts (num_classes,) or label counts."""
    codes = np.load(out / CODES_FILE, mmap_mode="r")
    labels = np.load(out / LABELS_FILE, mmap_mode="r")
    expect = (layout.num_images, layout.num_augmentations, layout.num_tokens)
    if codes.shape != expect or codes.dtype != layout.dtype:
        raise ValueError(f"{out / CODES_FILE}: shape {codes.shape} {codes.dtype}, manifest says {expect} {layout.dtype}")
    if labels.shape != (layout.num_images,) or labels.dtype != np.int64:
        raise ValueError(f"{out / LABELS_FILE}: shape {labels.shape} {labels.dtype}, expected ({layout.num_images},) int64")
    if need_done:
        done = np.load(out / PROGRESS_FILE, mmap_mode="r")
        missing = np.flatnonzero(done == 0)
        if len(missing):
            raise ValueError(f"{out}: {len(missing)} image(s) not encoded yet (first: index {int(missing[0])})")
    bad_labels = np.flatnonzero((labels < 0) | ((labels >= num_classes) if num_classes else False))
    if len(bad_labels):
        i = int(bad_labels[0])
        raise ValueError(
            f"{out / LABELS_FILE}: {len(bad_labels)} label(s) unfilled or outside [0, {num_classes}) "
            f"(first: index {i} = {int(labels[i])})"
        )
    step = max(1, CHUNK_BYTES // (layout.row_items * layout.dtype.itemsize))
    for start in range(0, layout.num_images, step):
        block = np.asarray(codes[start : start + step])
        if block.size and int(block.max()) >= layout.codebook_size:
            row = start + int(np.flatnonzero((block >= layout.codebook_size).any(axis=(1, 2)))[0])
            raise ValueError(
                f"{out / CODES_FILE}: image {row} holds codes >= codebook_size {layout.codebook_size} "
                "(unfilled entries or a foreign file)"
            )
    minlength = num_classes or (int(labels.max()) + 1 if len(labels) else 0)
    return np.bincount(np.asarray(labels), minlength=minlength)


def finalize_store(out: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validation pass over an incomplete store; on success mark it complete and drop progress.npy.

    Checks that every row is marked done, every label is in [0, num_classes), and every code entry is
    in [0, codebook_size) (unwritten entries hold the sentinel and fail this check). Reads the whole
    store once (6.6 GB for ImageNet-1k with ten-crop), in 64 MB chunks.

    Args:
        out: the store directory.
        extra: fields merged into the manifest (e.g. the final command line).

    Returns:
        The completed manifest (with `counts.images` and `counts.per_class`).

    Raises:
        ValueError: an entry is unfilled or out of range (names the first offending index).
    """
    out = Path(out)
    manifest = read_manifest(out)
    layout = StoreLayout.from_manifest(manifest)
    num_classes = manifest.get("num_classes")
    per_class = _check_arrays(out, layout, num_classes, need_done=not manifest.get("complete"))
    manifest.update(extra or {})
    manifest["counts"] = {"images": layout.num_images, "sequences": layout.num_images * layout.num_augmentations,
                          "per_class": per_class.tolist()}
    manifest["complete"] = True
    manifest["completed"] = _now()
    write_manifest(out, manifest)
    (out / PROGRESS_FILE).unlink(missing_ok=True)
    return manifest


def validate_store(out: str | Path) -> dict[str, Any]:
    """Check a complete store: manifest, array shapes/dtypes, every label and code in range.

    Returns:
        The manifest.

    Raises:
        ValueError: the store is incomplete or an entry is out of range.
    """
    out = Path(out)
    manifest = read_manifest(out)
    if not manifest.get("complete"):
        raise ValueError(f"{out}: token store is incomplete; rerun the same `vfmtok extract-tokens` command to resume")
    _check_arrays(out, StoreLayout.from_manifest(manifest), manifest.get("num_classes"), need_done=False)
    return manifest
