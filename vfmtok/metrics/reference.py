"""ADM-format image batches: validation, Inception feature passes, and cached reference statistics.

Validation refuses the classic mistakes with a message naming the file and what was found: no ``arr_0``
(e.g. a statistics-only file), float images, channels-first layout, a channel count other than 3.

Reference statistics are computed once per (reference file, weights sha256, precision) and cached beside
the reference as ``<ref>.vfmtok-stats-<weights sha256[:16]>-<precision>.npz`` (or, if that folder is not
writable, under ``~/.cache/vfmtok/reference_stats/``). The cache holds the reference pool3 features (for
precision/recall), the statistics computed from ``arr_0``, and the reference file's size, mtime and sha256;
it is used only when all of them still match.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from vfmtok.data.adm_npz import NpzInfo, inspect_npz, iter_npz_images, read_npz_array
from vfmtok.metrics.fid import feature_statistics
from vfmtok.metrics.inception import InceptionFeatureExtractor
from vfmtok.metrics.weights import sha256_file

__all__ = [
    "STAT_KEYS",
    "BatchInfo",
    "EvaluationInputError",
    "FeatureSet",
    "ReferenceStatistics",
    "compute_features",
    "load_reference_statistics",
    "validate_image_npz",
]

STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
_CACHE_VERSION = 1


class EvaluationInputError(ValueError):
    """An input npz cannot be evaluated; the message names the file, the key and what was found."""


@dataclass
class BatchInfo:
    """Header facts about an ADM image batch: path, ``arr_0`` count N, height, width, and the npz keys."""

    path: Path
    count: int
    height: int
    width: int
    keys: list[str]


def validate_image_npz(path: str | os.PathLike, role: str) -> BatchInfo:
    """Check that ``arr_0`` of an npz is a uint8 N x H x W x 3 image batch (headers only, no data read).

    Args:
        path: the npz. role: ``"samples"`` or ``"reference"`` (used in messages).

    Returns:
        :class:`BatchInfo`.

    Raises:
        EvaluationInputError: missing file or ``arr_0``, float or non-uint8 dtype, channels-first layout,
            wrong channel count, wrong rank, or zero images.
    """
    path = Path(path)
    try:
        info: NpzInfo = inspect_npz(path)
    except (FileNotFoundError, ValueError) as err:
        raise EvaluationInputError(f"{role} {err}") from err
    if "arr_0" not in info.keys:
        hint = ""
        if "mu" in info.keys:
            hint = " (a statistics-only file cannot be used: FID needs samples' images and precision/recall need the reference images)"
        raise EvaluationInputError(f"{role} {path}: no image array 'arr_0' (found keys: {info.keys}){hint}")
    shape, dtype = info.shapes["arr_0"], info.dtypes["arr_0"]
    what = f"{role} {path}: arr_0 has shape {shape} and dtype {dtype}"
    if np.issubdtype(dtype, np.floating):
        raise EvaluationInputError(
            f"{what}; expected uint8 images in 0..255 (float images are refused: convert [0, 1] floats with "
            "(x * 255).round().clip(0, 255).astype(np.uint8), [-1, 1] floats with (x * 127.5 + 128).clip(0, 255))"
        )
    if len(shape) != 4:
        raise EvaluationInputError(f"{what}; expected a 4-D uint8 array N x H x W x 3")
    if shape[-1] != 3 and shape[1] in (1, 3, 4):
        raise EvaluationInputError(f"{what}; this looks channels-first (N, C, H, W): expected N x H x W x 3, "
                                   "use arr.transpose(0, 2, 3, 1)")
    if shape[-1] != 3:
        raise EvaluationInputError(f"{what}; expected 3 RGB channels in the last axis, found {shape[-1]}")
    if dtype != np.uint8:
        raise EvaluationInputError(f"{what}; expected uint8 images in 0..255")
    if shape[0] == 0:
        raise EvaluationInputError(f"{what}; it holds no images")
    return BatchInfo(path=path, count=shape[0], height=shape[1], width=shape[2], keys=list(info.keys))


@dataclass
class FeatureSet:
    """Inception features of a whole batch (numpy float32): pool3 (N, 2048), spatial (N, 2023), logits (N, 1008) or None."""

    pool3: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray | None


def compute_features(path: str | os.PathLike, extractor: InceptionFeatureExtractor, batch_size: int = 64,
                     progress: bool = True, desc: str = "inception") -> FeatureSet:
    """Stream ``arr_0`` through the extractor (memory: one image batch plus the features, ~20 KB per image).

    Args:
        path: validated ADM npz. extractor: the Inception wrapper. batch_size: images per forward.
        progress: show a tqdm bar. desc: bar label.

    Returns:
        :class:`FeatureSet` with rows in stored order.
    """
    count = inspect_npz(path).shapes["arr_0"][0]
    pool3, spatial, logits = [], [], []
    with tqdm(total=count, desc=desc, unit="img", disable=not progress) as bar:
        for images in iter_npz_images(path, batch_size):
            out = extractor(torch.from_numpy(images))
            pool3.append(out.pool3.cpu().numpy())
            spatial.append(out.spatial.cpu().numpy())
            if out.logits is not None:
                logits.append(out.logits.cpu().numpy())
            bar.update(len(images))
    return FeatureSet(np.concatenate(pool3), np.concatenate(spatial), np.concatenate(logits) if logits else None)


@dataclass
class ReferenceStatistics:
    """What the evaluator needs from the reference batch.

    Attributes:
        pool3: (N_ref, 2048) float32 features of ``arr_0`` (precision/recall always use these).
        mu, sigma, mu_s, sigma_s: float64 statistics used for FID/sFID.
        stats_source: ``"precomputed in the reference file"`` or ``"computed from arr_0"`` (per key set).
        sha256: reference file digest. cache_path: the cache file used or written (None if disabled).
    """

    pool3: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    mu_s: np.ndarray
    sigma_s: np.ndarray
    stats_source: str
    sha256: str
    cache_path: Path | None


def _cache_candidates(ref: Path, key: str) -> list[Path]:
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vfmtok" / "reference_stats"
    return [ref.with_name(f"{ref.name}.vfmtok-stats-{key}.npz"), home / f"{ref.stem}-{ref.stat().st_size}-{key}.npz"]


def _read_cache(candidate: Path, ref: Path, weights_sha256: str) -> dict | None:
    if not candidate.is_file():
        return None
    try:
        with np.load(candidate, allow_pickle=False) as data:
            cached = {k: data[k] for k in data.files}
    except Exception:  # noqa: BLE001 - a corrupt cache is recomputed
        return None
    stat = ref.stat()
    if (int(cached.get("version", -1)) != _CACHE_VERSION or str(cached.get("weights_sha256")) != weights_sha256
            or int(cached.get("ref_size", -1)) != stat.st_size or int(cached.get("ref_mtime_ns", -1)) != stat.st_mtime_ns):
        return None
    return cached


def _write_cache(candidates: list[Path], payload: dict) -> Path | None:
    for candidate in candidates:
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            tmp = candidate.with_name(f".{candidate.name}.tmp-{os.getpid()}.npz")
            np.savez(tmp, **payload)
            os.replace(tmp, candidate)
            return candidate
        except OSError:
            continue
    warnings.warn(f"could not write the reference statistics cache to any of {[str(c) for c in candidates]}")
    return None


def load_reference_statistics(ref: BatchInfo, extractor: InceptionFeatureExtractor, weights_sha256: str,
                              precision_tag: str = "fp32", batch_size: int = 64, use_cache: bool = True,
                              progress: bool = True) -> ReferenceStatistics:
    """Reference pool3 features and FID/sFID statistics, from the cache or one Inception pass.

    Precomputed ``mu``, ``sigma``, ``mu_s``, ``sigma_s`` stored in the reference npz are used for FID/sFID
    (as the ADM evaluator does when the file has ``mu``); precision/recall always use ``arr_0`` features.

    Args:
        ref: validated reference batch. extractor: Inception wrapper. weights_sha256: cache key.
        precision_tag: ``"fp32"``/``"bf16"``/``"fp16"`` (part of the cache key). batch_size, progress: pass.
        use_cache: read/write the cache (False: always recompute, write nothing).

    Returns:
        :class:`ReferenceStatistics`.

    Raises:
        EvaluationInputError: precomputed statistics with wrong shapes (e.g. from another feature layer).
    """
    key = f"{weights_sha256[:16]}-{precision_tag}"
    candidates = _cache_candidates(ref.path, key)
    cached = None
    if use_cache:
        for candidate in candidates:
            cached = _read_cache(candidate, ref.path, weights_sha256)
            if cached is not None:
                cache_path = candidate
                break
    if cached is None:
        feats = compute_features(ref.path, extractor, batch_size, progress, desc="reference")
        mu, sigma = feature_statistics(feats.pool3)
        mu_s, sigma_s = feature_statistics(feats.spatial)
        stat = ref.path.stat()
        cached = dict(version=_CACHE_VERSION, weights_sha256=weights_sha256, ref_size=stat.st_size,
                      ref_mtime_ns=stat.st_mtime_ns, ref_sha256=sha256_file(ref.path), pool3=feats.pool3,
                      mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s)
        cache_path = _write_cache(candidates, cached) if use_cache else None
    stats = {k: cached[k] for k in STAT_KEYS}
    stored = [k for k in STAT_KEYS if k in ref.keys]
    if "mu" in ref.keys:
        for k in stored:
            stats[k] = read_npz_array(ref.path, k).astype(np.float64)
        expected = {"mu": (2048,), "sigma": (2048, 2048), "mu_s": (2023,), "sigma_s": (2023, 2023)}
        bad = [f"{k} {stats[k].shape} (expected {expected[k]})" for k in stored if stats[k].shape != expected[k]]
        if bad:
            raise EvaluationInputError(f"reference {ref.path}: precomputed statistics have wrong shapes: {bad}")
        missing = [k for k in STAT_KEYS if k not in stored]
        source = "precomputed in the reference file (" + ", ".join(stored) + ")"
        if missing:
            source += "; " + ", ".join(missing) + " computed from arr_0"
    else:
        source = "computed from arr_0"
    return ReferenceStatistics(pool3=cached["pool3"], stats_source=source, sha256=str(cached["ref_sha256"]),
                               cache_path=cache_path, **stats)
