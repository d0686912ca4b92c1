"""`evaluate_samples`: the ADM evaluator's five numbers (IS, FID, sFID, precision, recall) in PyTorch.

Protocol (``shared/reference/evaluation.md`` sections 0-1; docs/evaluate.md): TF-2015 Inception
(torch-fidelity parameterisation) with TF1 bilinear resize to 299; FID on pool3 and sFID on
``Mixed_6d.branch1x1[:7]`` (HWC order) with float64 statistics and scipy sqrtm; IS over contiguous chunks
of 5000 after a fixed-seed shuffle; precision/recall with k = 3 against the reference ``arr_0`` features.
"""
from __future__ import annotations

import datetime as _dt
import os
import warnings
from typing import Literal

import torch

from vfmtok.metrics.fid import feature_statistics, frechet_distance
from vfmtok.metrics.inception import InceptionFeatureExtractor
from vfmtok.metrics.inception_score import DEFAULT_SHUFFLE_SEED, SPLIT_SIZE, inception_score
from vfmtok.metrics.precision_recall import BLOCK_SIZE, NEIGHBOURHOOD_K, precision_recall
from vfmtok.metrics.reference import (
    STAT_KEYS,
    EvaluationInputError,
    compute_features,
    load_reference_statistics,
    validate_image_npz,
)
from vfmtok.metrics.weights import load_inception_weights, sha256_file

__all__ = ["RECOMMENDED_REF_COUNT", "RECOMMENDED_SAMPLE_COUNT", "EvaluationInputError", "evaluate_samples",
           "format_adm_lines"]

RECOMMENDED_SAMPLE_COUNT = 50_000
RECOMMENDED_REF_COUNT = 10_000
IS_UNAVAILABLE = "unavailable (Inception weights without the fc layer; IS needs the official weights file)"


def _precision_tag(mixed_precision: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    key = getattr(mixed_precision, "value", mixed_precision)
    if device.type != "cuda" or key in ("no", "fp32"):
        return "fp32", None
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if key not in dtypes:
        raise ValueError(f"mixed_precision {key!r}: expected no, bf16 or fp16")
    return key, dtypes[key]


def evaluate_samples(
    samples_npz: str | os.PathLike,
    ref_npz: str | os.PathLike,
    *,
    inception_weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    mixed_precision: str = "no",
    allow_resize: bool = False,
    is_shuffle_seed: int | None = DEFAULT_SHUFFLE_SEED,
    fid_method: Literal["sqrtm", "eig", "eigh"] = "sqrtm",
    pr_block_size: int = BLOCK_SIZE,
    use_cache: bool = True,
    progress: bool = True,
) -> dict:
    """Score an ADM-format sample batch against an ADM-format reference batch.

    Args:
        samples_npz: npz with ``arr_0`` uint8 N x H x W x 3 (normally N = 50 000); stored statistics in it
            are ignored (with a warning), unlike the TF evaluator which would trust them.
        ref_npz: reference npz (``arr_0`` images; optional precomputed ``mu``/``sigma``/``mu_s``/``sigma_s``,
            honoured for FID/sFID; precision/recall always use ``arr_0``).
        inception_weights: weights file; None searches ``VFMTOK_INCEPTION_WEIGHTS`` and the torch hub cache.
        batch_size: images per Inception forward. device: ``"auto"``, ``"cpu"``, ``"cuda:N"`` or a device.
        mixed_precision: ``"no"`` (fp32, default and recommended), ``"bf16"`` or ``"fp16"`` autocast (CUDA only).
        allow_resize: accept different sample and reference resolutions (each side is resized to 299 by the
            TF1 bilinear resize inside the metric, from its own resolution).
        is_shuffle_seed: seed of the permutation applied before the contiguous IS splits (None: stored order).
        fid_method: ``"sqrtm"`` (ADM numerics) or ``"eig"``.
        pr_block_size: precision/recall distance block edge (memory ~ 10 bytes * block^2).
        use_cache: read/write the reference statistics cache beside the reference file.
        progress: tqdm bars.

    Returns:
        A JSON-serialisable dict: ``inception_score`` (float, or None when unavailable, with
        ``inception_score_status``), ``fid``, ``sfid``, ``precision``, ``recall``, ``samples`` and
        ``reference`` (path, sha256, count, height, width; reference ``statistics`` source and cache file),
        ``inception_weights`` (path, sha256, origin, official, has_fc), ``protocol`` (resize, splits, shuffle
        seed, k, fid method, precision, tf32 flags), ``warnings``, ``vfmtok_version``, ``device``, ``created``.

    Raises:
        EvaluationInputError: bad npz (see :func:`validate_image_npz`) or refused resolution mismatch.
        vfmtok.metrics.weights.InceptionWeightsNotFound / InceptionWeightsError: weights missing or invalid.
    """
    from vfmtok import __version__
    from vfmtok.device import resolve_device, set_tf32_for_job

    samples = validate_image_npz(samples_npz, "samples")
    ref = validate_image_npz(ref_npz, "reference")
    if (samples.height, samples.width) != (ref.height, ref.width) and not allow_resize:
        raise EvaluationInputError(
            f"resolution mismatch: samples {samples.path} are {samples.height}x{samples.width}, reference "
            f"{ref.path} is {ref.height}x{ref.width}; scores would not be comparable to published numbers. "
            "Pass --allow-resize to evaluate anyway (both sides are resized to 299x299 inside the metric)."
        )
    notes: list[str] = []
    if samples.count < RECOMMENDED_SAMPLE_COUNT:
        notes.append(f"samples: {samples.count} images < {RECOMMENDED_SAMPLE_COUNT}; FID/sFID are biased high and "
                     "not comparable to published 50k-sample numbers")
    if ref.count < RECOMMENDED_REF_COUNT:
        notes.append(f"reference: {ref.count} images < {RECOMMENDED_REF_COUNT}; precision/recall (and FID if the "
                     "reference has no stored statistics) are not comparable to published numbers")
    ignored = [k for k in STAT_KEYS if k in samples.keys]
    if ignored:
        notes.append(f"samples: stored statistics {ignored} ignored; computed from arr_0 instead")
    if (samples.height, samples.width) != (ref.height, ref.width):
        notes.append(f"resolution mismatch allowed (--allow-resize): samples {samples.height}x{samples.width}, "
                     f"reference {ref.height}x{ref.width}")
    for note in notes:
        warnings.warn(note)

    dev = resolve_device(device) if isinstance(device, str) else device
    tag, amp_dtype = _precision_tag(mixed_precision, dev)
    tf32 = set_tf32_for_job("evaluate")  # the ADM evaluator's Inception runs in true fp32
    state, weights = load_inception_weights(inception_weights)
    extractor = InceptionFeatureExtractor(state, has_fc=weights.has_fc, autocast_dtype=amp_dtype).to(dev)

    ref_stats = load_reference_statistics(ref, extractor, weights.sha256, tag, batch_size, use_cache, progress)
    feats = compute_features(samples.path, extractor, batch_size, progress, desc="samples")
    mu, sigma = feature_statistics(feats.pool3)
    mu_s, sigma_s = feature_statistics(feats.spatial)
    fid = frechet_distance(mu, sigma, ref_stats.mu, ref_stats.sigma, fid_method)
    sfid = frechet_distance(mu_s, sigma_s, ref_stats.mu_s, ref_stats.sigma_s, fid_method)
    score = inception_score(feats.logits, SPLIT_SIZE, is_shuffle_seed) if feats.logits is not None else None
    precision, recall = precision_recall(ref_stats.pool3, feats.pool3, NEIGHBOURHOOD_K, pr_block_size,
                                         fp16=True, device=dev)
    return {
        "inception_score": score,
        "inception_score_status": "ok" if score is not None else IS_UNAVAILABLE,
        "fid": fid,
        "sfid": sfid,
        "precision": precision,
        "recall": recall,
        "samples": {"path": str(samples.path), "sha256": sha256_file(samples.path), "count": samples.count,
                    "height": samples.height, "width": samples.width},
        "reference": {"path": str(ref.path), "sha256": ref_stats.sha256, "count": ref.count,
                      "height": ref.height, "width": ref.width, "statistics": ref_stats.stats_source,
                      "stats_cache": str(ref_stats.cache_path) if ref_stats.cache_path else None},
        "inception_weights": {"path": str(weights.path), "sha256": weights.sha256, "origin": weights.origin,
                              "official": weights.official, "has_fc": weights.has_fc},
        "protocol": {"resize": "tf1-bilinear-299 (align_corners=False, no antialias)", "scaling": "(x-128)/128",
                     "fid_features": "pool3 (2048)", "sfid_features": "Mixed_6d.branch1x1[:7], HWC (2023)",
                     "is_split_size": SPLIT_SIZE, "is_shuffle_seed": is_shuffle_seed, "pr_k": NEIGHBOURHOOD_K,
                     "pr_distances": "fp16 first, fp32 fallback", "fid_method": fid_method,
                     "inception_precision": tag, "tf32": tf32, "batch_size": batch_size},
        "warnings": notes,
        "vfmtok_version": __version__,
        "device": str(dev),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def format_adm_lines(result: dict) -> list[str]:
    """The five lines the TF evaluator prints, from an :func:`evaluate_samples` result.

    ``Inception Score: <v>``, ``FID: <v>``, ``sFID: <v>``, ``Precision: <v>``, ``Recall: <v>`` with Python's
    float repr as ADM's ``print``; IS is printed as ``unavailable (...)`` when the weights lack the fc layer.
    """
    score = result["inception_score"]
    return [
        f"Inception Score: {score if score is not None else result['inception_score_status']}",
        f"FID: {result['fid']}",
        f"sFID: {result['sfid']}",
        f"Precision: {result['precision']}",
        f"Recall: {result['recall']}",
    ]
