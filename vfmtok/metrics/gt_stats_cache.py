"""Cached Inception statistics of a tokenizer evaluation's ground truth (`evaluate --tokenizer`).

The ground-truth side of rFID (pool3 mean and covariance of the ADM centre crops at the tokenizer size S,
converted to uint8 and PIL-bicubic-resized to 256) depends only on the data and the protocol, not on the
tokenizer, so it is computed once and reused. The cache key is the sha256 of a JSON record of everything the
statistics depend on: the data fingerprint (a prepared folder's manifest.json sha256, or the image listing:
relative paths, sizes and mtimes), the number of images used (`--limit`), S, the evaluation size, the
Inception weights' sha256 and the precision (fp32), plus a format version. Files live in
`$XDG_CACHE_HOME/vfmtok/tokenizer_gt_stats/` (default `~/.cache/...`), override with
`$VFMTOK_GT_STATS_CACHE`; a corrupt or unreadable file is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CACHE_VERSION = 1


def cache_dir() -> Path:
    """Folder of the cache files: $VFMTOK_GT_STATS_CACHE, else $XDG_CACHE_HOME/vfmtok/tokenizer_gt_stats."""
    if os.environ.get("VFMTOK_GT_STATS_CACHE"):
        return Path(os.environ["VFMTOK_GT_STATS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vfmtok" / "tokenizer_gt_stats"


def cache_key(record: dict[str, Any]) -> str:
    """sha256 hex digest of `record` (JSON, sorted keys) plus the cache format version."""
    text = json.dumps({**record, "cache_version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def read_statistics(key: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(mu (2048,) float64, sigma (2048, 2048) float64) stored under `key`, or None (missing, corrupt, other key)."""
    path = cache_dir() / f"{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return np.array(data["mu"], dtype=np.float64), np.array(data["sigma"], dtype=np.float64)
    except Exception:  # noqa: BLE001 - a corrupt cache file is recomputed
        return None


def write_statistics(key: str, mu: np.ndarray, sigma: np.ndarray, record: dict[str, Any]) -> Path | None:
    """Store (mu, sigma) under `key` atomically, with `record` as JSON for inspection; None (and a warning) when
    the cache folder is not writable."""
    path = cache_dir() / f"{key}.npz"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.npz")
        np.savez(tmp, key=np.array(key), mu=np.asarray(mu, dtype=np.float64), sigma=np.asarray(sigma, dtype=np.float64),
                 record=np.array(json.dumps(record, sort_keys=True, default=str)))
        os.replace(tmp, path)
        return path
    except OSError as err:
        warnings.warn(f"could not write the ground-truth statistics cache {path}: {err}")
        return None


def listing_fingerprint(root: Path, paths: list[Path]) -> str:
    """sha256 over the (path relative to `root`, size in bytes, mtime in ns) of every file, in the given order."""
    digest = hashlib.sha256()
    base = Path(root).resolve()
    for path in paths:
        stat = path.stat()
        digest.update(f"{os.path.relpath(Path(path).resolve(), base)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
