"""Token store format: file names, the code dtype, the layout, the manifest, and the per-epoch view choice.

Written once by `vfmtok extract-tokens` (`vfmtok/jobs/extract.py`), read every epoch by `vfmtok train-ar`
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

Modules: this one (format), `vfmtok.data.token_store.writer` (create, write, finalize, validate) and
`vfmtok.data.token_store.reader` (the one reader, `TokenDataset`, and the checks a training run makes).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vfmtok.io.files import write_json_atomic

FORMAT = "vfmtok-token-store"
FORMAT_VERSION = 1
CODES_FILE = "codes.npy"
LABELS_FILE = "labels.npy"
MANIFEST_FILE = "manifest.json"
PROGRESS_FILE = "progress.npy"
STORE_FILES = (CODES_FILE, LABELS_FILE, MANIFEST_FILE, PROGRESS_FILE)
CHUNK_BYTES = 64 << 20  # validation / initialisation work in chunks of this many bytes


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
    write_json_atomic(Path(out) / MANIFEST_FILE, manifest, indent=2)


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


# ---------------------------------------------------------------------------------------------
# The view an image uses in an epoch
# ---------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """SplitMix64 finaliser (Steele et al. 2014) on a Python int, modulo 2**64."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def splitmix64_array(x: np.ndarray) -> np.ndarray:
    """Vectorised :func:`splitmix64` over a uint64 array (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def epoch_key(seed: int, epoch: int) -> int:
    """The 64-bit key of (seed, epoch): splitmix64(splitmix64(seed) ^ epoch)."""
    return splitmix64(splitmix64(seed & _MASK64) ^ (epoch & _MASK64))


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
    return view_from_key(epoch_key(seed, epoch), index, num_augmentations)


def view_from_key(key: int, index: int | np.ndarray, num_augmentations: int) -> int | np.ndarray:
    """splitmix64(key ^ index) % A for an int index (-> int) or an int array (-> int64 array of its shape)."""
    if isinstance(index, (int, np.integer)):
        return splitmix64(key ^ int(index)) % num_augmentations
    with np.errstate(over="ignore"):
        mixed = splitmix64_array(np.uint64(key) ^ np.asarray(index).astype(np.uint64))
    return (mixed % np.uint64(num_augmentations)).astype(np.int64)
