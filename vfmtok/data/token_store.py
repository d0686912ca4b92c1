"""The token store: a dataset's code sequences in one memory-mapped array, written by many ranks.

Written once by `vfmtok extract-tokens` (`vfmtok/extract.py`), read every epoch by `vfmtok train-ar`
through :class:`TokenDataset`. A store is a directory:

```
OUT/codes.npy      (N, A, L) uint16 (uint32 when codebook_size > 65536), C order: image n, view a, token l
OUT/labels.npy     (N,) int64 class indices in [0, num_classes)
OUT/manifest.json  what made it: format version, tokenizer sha256 + config, crop protocol, source, counts
OUT/progress.npy   (N,) uint8 done-mask; exists only while the store is incomplete (resume state)
```

Both arrays are plain `.npy` files (`np.load(path, mmap_mode="r")` reads them). Writers use `os.pwrite`
of exact byte ranges (never a writable memory map, whose page-granular write-back could clobber a
neighbouring rank's bytes on a network file system), so any number of processes can fill disjoint rows.
Unwritten code entries hold a sentinel (the dtype's maximum, which is >= codebook_size whenever the
codebook leaves one free) and unwritten labels hold -1, so the final validation pass checks every entry,
not only the done-mask. Format description: docs/token_store.md.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from vfmtok.hashing import sha256_file

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "StoreLayout",
    "StoreWriter",
    "augmentation_choice",
    "sha256_file",
    "TokenDataset",
    "codes_dtype",
    "create_store",
    "finalize_store",
    "read_manifest",
    "store_differences",
    "validate_store",
    "write_manifest",
]

FORMAT = "vfmtok-token-store"
FORMAT_VERSION = 1
CODES_FILE = "codes.npy"
LABELS_FILE = "labels.npy"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.npy"
STORE_FILES = (CODES_FILE, LABELS_FILE, MANIFEST_FILE, PROGRESS_FILE)
_CHUNK_BYTES = 64 << 20  # validation / initialisation work in chunks of this many bytes


def codes_dtype(codebook_size: int) -> np.dtype:
    """The on-disk dtype for codes of a codebook with `codebook_size` entries.

    uint16 up to 65536 entries (codes 0..65535), uint32 above (up to 2**32).

    Raises:
        ValueError: codebook_size < 1 or > 2**32.
    """
    if not 1 <= codebook_size <= 2**32:
        raise ValueError(f"codebook_size {codebook_size} out of range: expected 1 .. 2**32")
    return np.dtype(np.uint16) if codebook_size <= 2**16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class StoreLayout:
    """Shape of a store: `codes.npy` is (num_images, num_augmentations, num_tokens) of `dtype`.

    Attributes:
        num_images: N, images in the source (one row each, in source-index order).
        num_augmentations: A, code sequences stored per image (views x neighbours).
        num_tokens: L, tokens per sequence (e.g. 256 for a 16 x 16 grid).
        codebook_size: K, codes are in [0, K).
    """

    num_images: int
    num_augmentations: int
    num_tokens: int
    codebook_size: int

    def __post_init__(self) -> None:
        for name in ("num_images", "num_augmentations", "num_tokens", "codebook_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"StoreLayout.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def dtype(self) -> np.dtype:
        return codes_dtype(self.codebook_size)

    @property
    def sentinel(self) -> int | None:
        """Fill value of unwritten codes (dtype max), or None when the codebook uses every value."""
        top = int(np.iinfo(self.dtype).max)
        return top if top >= self.codebook_size else None

    @property
    def row_items(self) -> int:
        return self.num_augmentations * self.num_tokens

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> "StoreLayout":
        try:
            return cls(
                int(manifest["num_images"]),
                int(manifest["num_augmentations"]),
                int(manifest["num_tokens"]),
                int(manifest["codebook_size"]),
            )
        except KeyError as err:
            raise ValueError(f"token store manifest lacks key {err}") from err


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------
def read_manifest(out: str | Path) -> dict[str, Any]:
    """Read `OUT/manifest.json` of a token store.

    Raises:
        FileNotFoundError: no manifest.json in `out`.
        ValueError: the file is not JSON, or not a token store manifest (names the `format` found).
    """
    path = Path(out) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out} is not a token store (run `vfmtok extract-tokens`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: format {found!r} is not a token store (expected {FORMAT!r})")
    if int(manifest.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')} is newer than this vfmtok reads "
            f"({FORMAT_VERSION}); upgrade vfmtok"
        )
    return manifest


def write_manifest(out: str | Path, manifest: dict[str, Any]) -> None:
    """Write `OUT/manifest.json` atomically (temporary file + rename)."""
    path = Path(out) / MANIFEST_FILE
    tmp = path.with_name(f".{MANIFEST_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def store_differences(existing: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Human-readable differences between the `settings` block of a store and the requested one.

    Args:
        existing: the store's manifest (its `settings` entry is compared).
        settings: the requested settings (JSON-normalised: lists, not tuples).

    Returns:
        One line per differing leaf, `key.sub: store has X, requested Y` (empty when compatible).
    """

    def walk(have: Any, want: Any, prefix: str) -> list[str]:
        if isinstance(have, dict) and isinstance(want, dict):
            return [line for key in sorted(set(have) | set(want), key=str)
                    for line in walk(have.get(key), want.get(key), f"{prefix}{key}.")]
        if have != want:
            return [f"{prefix[:-1]}: store has {have!r}, requested {want!r}"]
        return []

    return walk(existing.get("settings", {}), settings, "")


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
        step = max(1, _CHUNK_BYTES // (layout.row_items * layout.dtype.itemsize))
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
    step = max(1, _CHUNK_BYTES // (layout.row_items * layout.dtype.itemsize))
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




# ---------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64 finaliser (Steele et al. 2014) on a Python int, modulo 2**64."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _splitmix64_np(x: np.ndarray) -> np.ndarray:
    """Vectorised :func:`_splitmix64` over a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _epoch_key(seed: int, epoch: int) -> int:
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64))


def augmentation_choice(seed: int, epoch: int, index: int | np.ndarray, num_augmentations: int) -> int | np.ndarray:
    """The augmentation a sample uses: `splitmix64(splitmix64(splitmix64(seed) ^ epoch) ^ index) % A`.

    A pure function of (seed, epoch, index): independent of workers, ranks, batch size and order.

    Args:
        seed, epoch: non-negative ints.
        index: image index (int) or int array of indices.
        num_augmentations: A >= 1.

    Returns:
        int in [0, A) (or an int64 array shaped like `index`).
    """
    return _choice(_epoch_key(seed, epoch), index, num_augmentations)


def _choice(key: int, index: int | np.ndarray, num_augmentations: int) -> int | np.ndarray:
    if isinstance(index, (int, np.integer)):
        return _splitmix64(key ^ int(index)) % num_augmentations
    with np.errstate(over="ignore"):
        mixed = _splitmix64_np(np.uint64(key) ^ np.asarray(index).astype(np.uint64))
    return (mixed % np.uint64(num_augmentations)).astype(np.int64)


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset over a complete token store.

    `ds[i]` -> (codes (L,) int64 tensor, label numpy int64 scalar; DataLoader collates it to an int64
    tensor): image i's code sequence of ONE augmentation, chosen by :func:`augmentation_choice` from
    (seed, epoch, i), so an epoch is reproducible whatever the number of ranks, workers, batch size or
    order. `ds[(i, epoch, position)]` (the items of `vfmtok.engine.sampler.RankDisjointSampler`) returns
    the same as `ds[i]` after `set_epoch(epoch)`, without relying on :meth:`set_epoch` (safe with
    persistent workers). `ds[list_or_array]` -> (codes (B, L) int64, labels (B,) int64) in one vectorised read: use it
    through `DataLoader(ds, sampler=BatchSampler(sampler, B, drop_last), batch_size=None)` for the
    fastest loading (no per-sample collation).

    Call :meth:`set_epoch` before each epoch, before the DataLoader iterator is created (workers receive
    a copy of the dataset; with `persistent_workers=True` a later epoch change does not reach them).

    Worker-safe: the dataset pickles as paths and ints; each process opens read-only numpy memory maps
    on first access (no per-sample Python objects: memory stays flat, shared pages stay shared).

    Args:
        path: store directory.
        seed: seed of the augmentation choice.
        augmentation: None (random per item, default) or a fixed view index in [0, A).
        allow_incomplete: read an incomplete store (testing only; unwritten rows hold the sentinel).

    Raises:
        FileNotFoundError / ValueError: not a token store, incomplete, or `augmentation` out of range.
    """

    def __init__(
        self,
        path: str | Path,
        seed: int = 0,
        augmentation: int | None = None,
        allow_incomplete: bool = False,
    ) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest.get("complete") and not allow_incomplete:
            raise ValueError(
                f"{self.path}: token store is incomplete; rerun the same `vfmtok extract-tokens` command to resume"
            )
        self.layout = StoreLayout.from_manifest(self.manifest)
        if augmentation is not None and not 0 <= augmentation < self.layout.num_augmentations:
            raise ValueError(f"augmentation {augmentation} outside [0, {self.layout.num_augmentations})")
        self.seed = int(seed)
        self.augmentation = augmentation
        self._n = self.layout.num_images
        self._a = self.layout.num_augmentations
        self._codes: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self.set_epoch(0)

    # -- properties from the manifest ---------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def classes(self) -> list[str]:
        """Class names (WordNet ids for ImageNet); label i names classes[i]."""
        return list(self.manifest["classes"])

    @property
    def vocab_size(self) -> int:
        """Codebook size K: codes are in [0, K)."""
        return self.layout.codebook_size

    @property
    def num_tokens(self) -> int:
        return self.layout.num_tokens

    @property
    def grid_size(self) -> int:
        """Side of the (square) token grid, e.g. 16 for 256 tokens."""
        return int(self.manifest["grid_size"])

    @property
    def num_augmentations(self) -> int:
        return self.layout.num_augmentations

    # -- data access ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of `epoch` (non-negative int)."""
        self.epoch = int(epoch)
        self._key = _epoch_key(self.seed, self.epoch)
        self._table: np.ndarray | None = None  # (N,) views of this epoch, built on first access

    def _build_table(self) -> np.ndarray:
        """All N choices of the epoch in one vectorised pass (N bytes for A <= 256)."""
        dtype = np.uint8 if self._a <= 256 else np.int64
        if self.augmentation is not None:
            self._table = np.full(self._n, self.augmentation, dtype=dtype)
        else:
            self._table = np.empty(self._n, dtype=dtype)
            step = 1 << 20
            for start in range(0, self._n, step):
                stop = min(self._n, start + step)
                self._table[start:stop] = _choice(self._key, np.arange(start, stop), self._a)
        return self._table

    def _open(self) -> None:
        # Plain ndarray views of the maps: indexing a np.memmap subclass costs ~10x more per item.
        codes = np.load(self.path / CODES_FILE, mmap_mode="r")
        labels = np.load(self.path / LABELS_FILE, mmap_mode="r")
        expect = (self._n, self._a, self.layout.num_tokens)
        if codes.shape != expect or codes.dtype != self.layout.dtype or labels.shape != (self._n,):
            raise ValueError(
                f"{self.path}: codes.npy {codes.shape} {codes.dtype} / labels.npy {labels.shape} do not match the "
                f"manifest {expect} {self.layout.dtype} / ({self._n},)"
            )
        self._codes, self._labels = codes.view(np.ndarray), labels.view(np.ndarray)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_codes"] = state["_labels"] = state["_table"] = None
        return state

    def __len__(self) -> int:
        return self._n

    def augmentation_of(self, index: int | np.ndarray) -> int | np.ndarray:
        """The view index (or int64 indices) item `index` returns in the current epoch."""
        if self.augmentation is not None:
            return self.augmentation if np.ndim(index) == 0 else np.full(np.shape(index), self.augmentation)
        return _choice(self._key, index, self._a)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, Any]:
        if self._codes is None:
            self._open()
        table = self._table if self._table is not None else self._build_table()
        if isinstance(index, (int, np.integer)):
            if not 0 <= index < self._n:
                raise IndexError(f"index {index} outside the token store's [0, {self._n})")
            return torch.from_numpy(self._codes[index, table[index]].astype(np.int64)), self._labels[index]
        if isinstance(index, tuple):  # (index, epoch, position) item of vfmtok.engine.sampler.RankDisjointSampler
            i, epoch = int(index[0]), int(index[1])
            if not 0 <= i < self._n:
                raise IndexError(f"index {i} outside the token store's [0, {self._n})")
            if self.augmentation is not None:
                aug = self.augmentation
            elif epoch == self.epoch:
                aug = int(table[i])
            else:
                aug = _splitmix64(_epoch_key(self.seed, epoch) ^ i) % self._a
            return torch.from_numpy(self._codes[i, aug].astype(np.int64)), self._labels[i]
        idx = np.asarray(index, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError(f"TokenDataset index must be an int or a 1-D list of ints, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            bad = int(idx[(idx < 0) | (idx >= self._n)][0])
            raise IndexError(f"index {bad} outside the token store's [0, {self._n})")
        codes = torch.from_numpy(self._codes[idx, table[idx]].astype(np.int64))
        return codes, torch.from_numpy(self._labels[idx].astype(np.int64))

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch used by DataLoader auto-batching: one vectorised read, then split into samples."""
        codes, labels = self[indices]
        return list(zip(codes.unbind(0), labels.unbind(0)))
